"""`python -m factory [key=value ...]` and its subcommands; `python -m factory --help` lists them."""
from __future__ import annotations

import logging
import os
import sys

from omegaconf import OmegaConf

from factory import estimate, report, status
from factory.config import check_overrides, compose, print_refusal
from factory.curation import curate_summary
from factory.engine.ray_setup import stop_ray
from factory.io.redact import RedactingFilter, redact
from factory.job import load_job
from factory.run import run
from factory.stages import generator_lines, stage_lines

log = logging.getLogger("factory")

HELP = """usage: python -m factory [key=value ...]          run the factory (resumes an output it finds)
       python -m factory curate [key=value ...]   curation only: OUTPUT/curated/, rejects/, manifest.json
       python -m factory estimate [key=value ...] what a run will cost, before it runs
       python -m factory status OUTPUT            where a run stands (files only, no Ray)
       python -m factory report OUTPUT            rebuild OUTPUT/report/
       python -m factory --cfg job [key=value ...] every key with its value, and the stages that will run

Keys are Hydra overrides of conf/config.yaml (input=, output=, model=sdxl, scorer=clip_l14_336,
synth.repeat=, select.k=, curate.near_dup.enabled=true, ...). The README (README.md in the
repository) lists them; docs/ explains curation, outputs, GPUs, clusters and the architecture."""
SUBCOMMANDS = {"estimate": estimate.main, "status": status.main, "report": report.main}


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
    lines.extend(stage_lines(m.get("stages") or []))
    if len(m.get("by_generator") or {}) > 1:
        lines.extend(generator_lines(m["by_generator"]))
    if m.get("report"):
        lines.append(f"report: {m['report'].get('index') or 'FAILED: ' + str(m['report'].get('error'))}")
    lines.append(f"output: {m['config']['output']}")
    return lines


def show_config(overrides: list[str]) -> int:
    """`--cfg job`: the composed config (every key, resolved) and the stages that will run."""
    if error := check_overrides(overrides):
        print(f"error: {redact(error)}", file=sys.stderr)
        return 2
    try:
        cfg = compose(overrides)
        stages = load_job(cfg).pipeline.describe()
    except Exception as exc:
        return print_refusal(exc)
    print(OmegaConf.to_yaml(cfg, resolve=True), end="")
    print("# stages, in order:")
    for line in stages:
        print(f"#   {line}")
    return 0


def stopped(exc: BaseException) -> None:
    """Ctrl-C, or SIGTERM (`ray job stop`) as SystemExit(15): one line, Ray stopped, the usual exit code."""
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


def run_command(overrides: list[str], curate_only: bool = False) -> int:
    """Compose, check and run (or only curate); one `error:` line (exit 2) for what the user can fix."""
    if error := check_overrides(overrides):
        print(f"error: {redact(error)}", file=sys.stderr)
        return 2
    try:
        manifest = run(load_job(compose(overrides)), curate_only)
    except (KeyboardInterrupt, SystemExit) as exc:
        stopped(exc)
    except Exception as exc:
        return print_refusal(exc)
    for line in (curate_summary if curate_only else summary_lines)(manifest):
        print(redact(line))
    return 0


def setup_logging(stream=None) -> None:
    """Log lines to `stream` (stdout), each through factory.io.redact: no URI's credentials in a log."""
    logging.basicConfig(stream=stream or sys.stdout, level=logging.INFO, format="[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())


def main(argv: list[str]) -> int:
    setup_logging()
    if argv[:1] == ["curate"]:
        return run_command(argv[1:], curate_only=True)
    if argv[:1] and argv[0] in SUBCOMMANDS:
        return SUBCOMMANDS[argv[0]](argv[1:])
    if argv[:1] in (["-h"], ["--help"], ["help"]):
        print(HELP)
        return 0
    if "--cfg" in argv:  # --cfg job, wherever it stands
        at = argv.index("--cfg")
        return show_config(argv[:at] + argv[at + 2:])
    if bad := [a for a in argv if a.startswith("-")]:
        print(f"error: unknown option {bad[0]}\n{HELP}", file=sys.stderr)
        return 2
    return run_command(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
