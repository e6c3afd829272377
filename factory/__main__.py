"""`python -m factory [key=value ...]`: compose conf/ with Hydra and run the factory."""
from __future__ import annotations

import logging
import os
import re
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from factory.config import CONF_DIR

log = logging.getLogger("factory")


def plain_config(cfg: DictConfig) -> dict:
    """Resolved plain containers: picklable to actors, free of ${hydra:...} interpolations."""
    cfg = OmegaConf.to_container(cfg, resolve=True)
    cfg.pop("hydra", None)
    return cfg


def user_error(exc: BaseException) -> str | None:
    """The one-line message of an error the user can fix, looking through Ray's wrappers."""
    from factory.io.files import NotSharedError
    from factory.io.read import InputError
    from factory.jobs import OutputInUseError
    from ray.exceptions import RayActorError

    from factory.run import RunError, error_line

    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        # OSError: storage the user points at (a read-only folder, a missing bucket, no credentials).
        # ValueError: a setting (ours, or a library's: a model path, a device). Not Ray's wrappers,
        # and not pyarrow's own errors: a bad input file is an InputError before it gets that far,
        # so an ArrowInvalid is a bug, whose traceback is what a report needs.
        if (isinstance(exc, (InputError, RunError, NotSharedError, OutputInUseError, ValueError, OSError))
                and not type(exc).__module__.startswith(("ray", "pyarrow"))):
            return error_line(exc)
        # A stage's constructor failed (a model path that is not there, no such device): the settings are wrong.
        if isinstance(exc, RayActorError) and exc.actor_init_failed:
            stage = re.search(r"MapBatches\((\w+)\)", str(exc))
            return f"{stage.group(1) if stage else 'an actor'} could not start: {error_line(exc)}"
        exc = exc.__cause__ or exc.__context__
    return None


def summary_lines(m: dict) -> list[str]:
    c, sel = m["counts"], m.get("selection", {})
    # candidates/ may also hold samples of captions or sample indices this run no longer has
    # (the input, the curation or synth.repeat changed): kept on disk, not competing.
    older = c["synthesized"] - c["resumed"] - c["generated"]
    lines = [
        f"read {c['read']}  rejected {c['rejected']}  curated {c['curated']}  "
        f"synthesized {c['synthesized']} (resumed {c['resumed']}, generated {c['generated']}"
        + (f", {older} from earlier settings, not competing" if older > 0 else "") + f")  scored {c['scored']}  selected {c['selected']}",
    ]
    if c.get("rejected_by_reason"):
        lines.append("rejected by reason: " + ", ".join(f"{k} {v}" for k, v in c["rejected_by_reason"].items()))
    if c.get("llm_judge"):
        lines.append("llm judge: " + ", ".join(f"{k} {v}" for k, v in c["llm_judge"].items()))
    if sel.get("k"):
        lines.append(
            f"selected mean clip_score {sel['mean_clip_score']:.4f}  ssim {sel['mean_ssim']:.4f}  score {sel['mean_score']:.4f}  threshold {sel['threshold']:.4f}"
        )
    lines.append("wall seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in m["wall_seconds"].items()))
    if m.get("stages"):
        from factory.stages import stage_lines

        lines.extend(stage_lines(m["stages"]))
    if m.get("report"):
        lines.append(f"report: {m['report'].get('index') or 'FAILED: ' + str(m['report'].get('error'))}")
    lines.append(f"output: {m['config']['output']}")
    return lines


def stop_ray() -> None:
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except Exception:  # noqa: BLE001 (stopping anyway)
        pass


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def main(cfg: DictConfig) -> None:
    from factory.run import run

    try:
        manifest = run(plain_config(cfg))
    except (KeyboardInterrupt, SystemExit) as exc:  # Ctrl-C, or SIGTERM (`ray job stop`) as SystemExit(15)
        signal_number = 2 if isinstance(exc, KeyboardInterrupt) else exc.code if isinstance(exc.code, int) else 15
        # Said before Ray stops: a signal sent to the whole process group (timeout, scancel) reaches
        # the local Ray's own processes too, and Ray may then abort the driver while it shuts down.
        print(f"stopped by signal {signal_number}: manifest.json says so; the same command resumes", file=sys.stderr, flush=True)
        stop_ray()
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        # The manifest is saved and Ray is down; after a SIGTERM, Ray's native handler makes the
        # interpreter's own teardown abort (exit 134), so the process ends here, with the usual code.
        os._exit(128 + signal_number)
    except Exception as exc:  # one clear line for what the user can fix; a traceback for the rest
        msg = user_error(exc)
        if msg is None:
            raise
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)
    for line in summary_lines(manifest):
        print(line)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "estimate":  # `python -m factory estimate ...`: before Hydra sees argv
        from factory.estimate import main as estimate_main

        sys.exit(estimate_main(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "status":  # `python -m factory status OUTPUT`: files only, no Hydra, no Ray
        from factory.status import main as status_main

        sys.exit(status_main(sys.argv[2:]))
    overrides = sys.argv[1:]
    if not any(a.startswith("-") for a in overrides):  # not --cfg, --help, -m: Hydra's own flags
        from factory.config import check_overrides

        if error := check_overrides(overrides):
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)
    main()
