"""The run report: report/ with score histograms, a contact sheet of the best and worst pairs, index.html.

Made at the end of every run (report.enabled) and rebuilt from a finished run with
`python -m factory.report OUTPUT`. Histograms read only the score columns; the contact sheet reads
the image bytes of the files that hold the 32 pairs it shows, and keeps only those 32.
"""
from __future__ import annotations

import argparse
import collections
import functools
import html
import io
import json
import logging
import sys
import textwrap

import matplotlib
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from factory import schema as S
from factory.candidates import with_generator
from factory.export.common import dataset_files
from factory.io import files
from factory.io.redact import redact, redact_all
from factory.layout import read_manifest, run_dirs
from factory.select import is_current

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (after choosing the backend)
from matplotlib.ticker import FormatStrFormatter, MaxNLocator  # noqa: E402

log = logging.getLogger("factory")

SCORES = [S.CLIP_SCORE, S.SSIM, S.SCORE]
SHEET_N = 16  # pairs shown at each end of the score range
CANDIDATE_COLOR, SELECTED_COLOR = "#8c8c8c", "#1f77b4"


class ReportError(Exception):
    """A report that cannot be made: one line for the user."""


def _read(path: str, columns: list[str]) -> pa.Table:
    fs, p = files.resolve(path)
    with fs.open_input_file(p) as f:
        return pq.read_table(f, columns=columns)


def _read_as(path: str, schema: pa.Schema, columns: list[str], legacy: str | None) -> pa.Table:
    """`columns` of a file of `schema` of any age (a column it lacks: nulls), its generator named."""
    return with_generator(files.read_parquet_files([path], columns, schema=schema), legacy)


def candidate_scores(candidate_paths: list[str], legacy: str | None = None) -> pa.Table:
    """Score columns of every usable candidate, with the file (index in `candidate_paths`) and row
    it sits at (no image bytes). The caller keeps the list: a run still writing adds files, so a
    second listing could shift the indices."""
    parts = []
    for i, path in enumerate(candidate_paths):
        t = _read_as(path, S.CANDIDATES, [S.ID, S.SAMPLE, S.GENERATOR, S.CAPTION, *SCORES, S.REASON], legacy)
        t = t.append_column("_file", pa.array(np.full(t.num_rows, i, np.int32))).append_column("_row", pa.array(np.arange(t.num_rows, dtype=np.int32)))
        parts.append(t)
    if not parts:
        return pa.table({S.GENERATOR: pa.array([], pa.string()), **{c: pa.array([], pa.float64()) for c in SCORES}})
    t = pa.concat_tables(parts)
    t = t.filter(pc.and_(pc.is_null(t.column(S.REASON)), pc.is_finite(t.column(S.SCORE))))
    # A sample written twice (two runs at once, resume.take_over) is one candidate: its first row.
    first = t.append_column("_i", pa.array(np.arange(t.num_rows, dtype=np.int64))).group_by(
        [S.ID, S.SAMPLE, S.GENERATOR], use_threads=False).aggregate([("_i", "min")]).column("_i_min")
    return t.take(np.sort(first.to_numpy())) if len(first) < t.num_rows else t


def competing(cands: pa.Table, curated_ids_path: str, m: dict) -> pa.Table:
    """The candidates that competed in the run's selection: samples below its synth.repeat of the
    captions it curated (curated_ids.parquet, a file or a folder; an output without it: all its candidates)."""
    if not cands.num_rows or not files.exists(curated_ids_path):
        return cands
    parts = files.list_files(curated_ids_path, ".parquet")  # a folder after a distributed pre-pass (engine/dist_resume)
    ids = (files.read_parquet_files(parts, [S.ID]) if parts else _read(curated_ids_path, [S.ID])).column(S.ID).combine_chunks()
    repeat = int(m.get("config", {}).get("synth", {}).get("repeat", 1))
    return cands.filter(is_current(cands, ids, repeat, run_generators(m)))


def run_generators(m: dict) -> list[str]:
    """The generators of the run a manifest records (older manifests: the one `model`)."""
    return m.get("generators") or [m.get("legacy_generator") or m.get("config", {}).get("model", {}).get("name", "")]


def dataset_scores(dataset_dir: str, legacy: str | None = None) -> pa.Table:
    parts = [_read_as(p, S.DATASET, [S.ID, S.SAMPLE, S.GENERATOR, *SCORES, S.RANK], legacy) for p in dataset_files(dataset_dir)]
    return pa.concat_tables(parts) if parts else pa.table(
        {S.GENERATOR: pa.array([], pa.string()), **{c: pa.array([], pa.float64()) for c in SCORES + [S.RANK]}})


def plain_text(draw):
    """`draw` with every text of its figure drawn as plain text: no mathtext (a caption's `$x^^2$`
    is no formula, a generator's name no more) and no LaTeX, whatever a matplotlibrc says."""

    @functools.wraps(draw)
    def wrapped(*args, **kwargs):
        with matplotlib.rc_context({"text.usetex": False, "text.parse_math": False}):
            return draw(*args, **kwargs)

    return wrapped


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def shared_bins(values: np.ndarray, n: int = 40) -> np.ndarray:
    """n equal bins over the values' range, widened around a single value."""
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-9:
        lo, hi = lo - 0.005, hi + 0.005
    return np.linspace(lo, hi, n + 1)


@plain_text
def histograms_png(cands: pa.Table, chosen: pa.Table) -> bytes:
    """CLIP score, SSIM and score: candidates vs selected, each as a density over shared bins."""

    titles = {S.CLIP_SCORE: "CLIP score", S.SSIM: "SSIM (round trip)", S.SCORE: "score = CLIP + λ·SSIM"}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8), layout="constrained")
    for ax, col in zip(axes, SCORES):
        c = cands.column(col).to_numpy() if cands.num_rows else np.empty(0)
        s = chosen.column(col).to_numpy() if chosen.num_rows else np.empty(0)
        both = np.concatenate([c, s])
        if len(both) == 0:
            ax.text(0.5, 0.5, "no scored pairs", ha="center", va="center", transform=ax.transAxes)
        else:
            bins = shared_bins(both)
            digits = max(2, int(np.ceil(-np.log10(bins[-1] - bins[0]))) + 1)  # enough to tell the ticks apart
            if len(c):
                ax.hist(c, bins=bins, density=True, color=CANDIDATE_COLOR, alpha=0.55, label=f"candidates (n={len(c)})")
            if len(s):
                ax.hist(s, bins=bins, density=True, histtype="stepfilled", color=SELECTED_COLOR, alpha=0.45,
                        edgecolor=SELECTED_COLOR, linewidth=1.5, label=f"selected (n={len(s)})")
            if len(c):
                ax.axvline(float(np.mean(c)), color="#444444", linestyle=":", linewidth=1.2, label=f"candidates mean {np.mean(c):.{digits + 1}f}")
            if len(s):
                ax.axvline(float(np.mean(s)), color=SELECTED_COLOR, linestyle="--", linewidth=1.2, label=f"selected mean {np.mean(s):.{digits + 1}f}")
            ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.17), ncol=2, frameon=False)  # below: never on the bars
            ax.xaxis.set_major_locator(MaxNLocator(nbins=5))
            ax.xaxis.set_major_formatter(FormatStrFormatter(f"%.{digits}f"))
        ax.set_title(titles[col])
        ax.set_xlabel(col)
        ax.set_ylabel("density")
        ax.grid(alpha=0.25)
    data = _png(fig)
    plt.close(fig)
    return data


@plain_text
def generators_png(cands: pa.Table, chosen: pa.Table) -> bytes:
    """The score of each generator's competing candidates, one colour per generator, with the
    share of the selected dataset each won in its legend."""
    fig, ax = plt.subplots(figsize=(8, 4.8), layout="constrained")
    gens = sorted({str(g) for g in cands.column(S.GENERATOR).to_pylist()}) if cands.num_rows else []
    won = collections.Counter(str(g) for g in chosen.column(S.GENERATOR).to_pylist()) if chosen.num_rows else {}
    if not gens:
        ax.text(0.5, 0.5, "no scored pairs", ha="center", va="center", transform=ax.transAxes)
    else:
        scores = cands.column(S.SCORE).to_numpy()
        bins = shared_bins(scores)
        names = np.array([str(g) for g in cands.column(S.GENERATOR).to_pylist()], dtype=object)
        for g, color in zip(gens, plt.get_cmap("tab10").colors):
            mine = scores[names == g]
            share = won.get(g, 0) / max(1, chosen.num_rows)
            ax.hist(mine, bins=bins, density=True, color=color, alpha=0.45, histtype="stepfilled", edgecolor=color,
                    label=f"{g}: {len(mine)} candidates, won {share:.0%} of the dataset")
        ax.legend(fontsize=8, loc="upper left", frameon=False)
    ax.set_title("score by generator")
    ax.set_xlabel(S.SCORE)
    ax.set_ylabel("density")
    ax.grid(alpha=0.25)
    data = _png(fig)
    plt.close(fig)
    return data


def sheet_rows(cands: pa.Table, n: int = SHEET_N) -> tuple[pa.Table, pa.Table]:
    """(top n, bottom n) candidates by score; the bottom never repeats a pair of the top."""
    order = cands.sort_by([(S.SCORE, "descending"), (S.ID, "ascending"), (S.SAMPLE, "ascending")])
    top = order.slice(0, min(n, order.num_rows))
    rest = order.slice(top.num_rows)
    bottom = rest.slice(max(0, rest.num_rows - n)).take(pa.array(np.arange(min(n, rest.num_rows))[::-1]))
    return top, bottom


def load_images(paths: list[str], rows: pa.Table) -> list:
    """The PIL images of `rows` (from candidate_scores over the same `paths`), reading only the files they sit in."""


    out: dict[tuple[int, int], object] = {}
    want = list(zip(rows.column("_file").to_pylist(), rows.column("_row").to_pylist()))
    for f in sorted({f for f, _ in want}):
        col = _read(paths[f], [S.IMAGE]).column(S.IMAGE)
        for ff, r in want:
            if ff == f:
                try:
                    out[(f, r)] = Image.open(io.BytesIO(col[r].as_py())).convert("RGB")
                except Exception as e:  # noqa: BLE001 (PIL raises many kinds): the report names the row
                    raise ReportError(f"contact sheet: the image at row {r} of {redact(paths[f])} cannot be read: "
                                      f"{type(e).__name__}: {e}") from e
        del col
    return [out[k] for k in want]


def _caption_text(caption: str, width: int = 30, lines: int = 4) -> str:
    wrapped = textwrap.wrap(" ".join(caption.split()), width=width) or [""]
    if len(wrapped) > lines:
        wrapped = wrapped[:lines]
        wrapped[-1] = wrapped[-1][: width - 1].rstrip() + "…"
    return "\n".join(wrapped)


@plain_text
def contact_sheet_png(candidate_paths: list[str], top: pa.Table, bottom: pa.Table, ranks: dict) -> bytes:
    """Two panels of up to 16 pairs (8 a row): image, caption (wrapped, cut at 4 lines), its
    generator and scores."""
    cols = 8
    panels = [(f"Top {top.num_rows} candidates by score", top), (f"Bottom {bottom.num_rows} candidates by score", bottom)]
    panels = [p for p in panels if p[1].num_rows]
    if not panels:
        fig = plt.figure(figsize=(8, 2))
        fig.text(0.5, 0.5, "no scored pairs to show", ha="center", va="center")
        data = _png(fig)
        plt.close(fig)
        return data
    n_rows = [max(1, -(-p[1].num_rows // cols)) for p in panels]
    fig = plt.figure(figsize=(cols * 2.2, sum(n_rows) * 3.0 + 0.45 * len(panels)), layout="constrained")
    subfigs = np.atleast_1d(fig.subfigures(len(panels), 1, height_ratios=[r * 3.0 + 0.45 for r in n_rows], hspace=0.04))
    for sub, (title, rows), nr in zip(subfigs, panels, n_rows):
        sub.suptitle(title, fontsize=14, fontweight="bold", x=0.005, ha="left")
        axes = np.atleast_2d(sub.subplots(nr, cols))
        images = load_images(candidate_paths, rows)
        by_id = {i: r for (i, _, _), r in ranks.items()}  # a caption selected with another of its samples
        recs = rows.select([S.ID, S.SAMPLE, S.GENERATOR, S.CAPTION, *SCORES]).to_pylist()
        for k, ax in enumerate(axes.flat):
            ax.set_xticks([])
            ax.set_yticks([])
            if k >= len(recs):
                ax.axis("off")
                continue
            r, im = recs[k], images[k]
            ax.imshow(im, interpolation="nearest" if max(im.size) < 256 else "antialiased")
            rank = ranks.get((r[S.ID], r[S.SAMPLE], r[S.GENERATOR]))
            other = by_id.get(r[S.ID])
            tag = f"selected #{rank}" if rank else f"its caption's #{other}" if other else "not selected"
            ax.set_title(f"{r[S.GENERATOR]} · score {r[S.SCORE]:.4f}\n{tag} · clip {r[S.CLIP_SCORE]:.4f} · ssim {r[S.SSIM]:.4f}",
                         fontsize=7.5,
                         color=SELECTED_COLOR if rank else "#333333")
            label = ax.set_xlabel(_caption_text(r[S.CAPTION]), fontsize=7, linespacing=1.15, parse_math=False)
            _check_drawable(label, fig, r)
            for spine in ax.spines.values():
                spine.set_edgecolor(SELECTED_COLOR if rank else "#bbbbbb")
                spine.set_linewidth(2 if rank else 1)
    data = _png(fig)
    plt.close(fig)
    return data


def _check_drawable(label, fig, row: dict) -> None:
    """Lays the caption's text out now, so that one that cannot be drawn names its pair."""
    try:
        label.get_window_extent(renderer=fig.canvas.get_renderer())
    except Exception as e:  # noqa: BLE001 (font and layout errors of any kind)
        raise ReportError(f"contact sheet: the caption of id {row[S.ID]!r} sample {row[S.SAMPLE]} ({row[S.GENERATOR]}) cannot be drawn: "
                          f"{type(e).__name__}: {e}") from e


def _table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape('' if v is None else str(v))}</td>" for v in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(v, spec: str = ".2f"):
    return "" if v is None else format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


def index_html(m: dict, n_cands: int, n_chosen: int) -> str:
    c, sel, cfg = m.get("counts", {}), m.get("selection", {}), redact_all(m.get("config", {}))  # an older manifest may hold credentials
    count_rows = [[k, v] for k, v in c.items() if not isinstance(v, dict)]
    rejects = [[k, v] for k, v in (c.get("rejected_by_reason") or {}).items()]
    unusable = [[k, v] for k, v in (c.get("unusable") or {}).items()]
    stages = [[s["stage"], _fmt(s.get("rows_in"), "d"), _fmt(s.get("rows_out"), "d"), _fmt(s.get("rows_per_s")),
               _fmt(s.get("wall_s"), ".1f"), _fmt(s.get("busy_s"), ".1f"), s.get("note", "")] for s in m.get("stages", [])]
    ops = [[o.get("operator"), o.get("rows_in"), o.get("rows_out"), _fmt(o.get("span_s"), ".1f"), _fmt(o.get("task_s"), ".1f")]
           for o in m.get("ray_operators", [])]
    sel_rows = [[k, _fmt(v, ".4f") if isinstance(v, float) else v] for k, v in sel.items()]
    exports = [[k, ", ".join(f"{a}={b}" for a, b in v.items() if a != "shards")] for k, v in (m.get("exports") or {}).items()]
    model, scorer = cfg.get("model", {}), cfg.get("scorer", {})
    esc = html.escape
    sections = [
        f"<h1>synth-factory run report</h1><p class=meta>output <code>{esc(str(cfg.get('output')))}</code> · input <code>{esc(str(cfg.get('input')))}</code><br>"
        f"status <b>{esc(str(m.get('status')))}</b> · started {esc(str(m.get('started')))} · finished {esc(str(m.get('finished')))} · runs {esc(str(m.get('runs')))}<br>"
        f"model <code>{esc(str(model.get('path')))}</code> ({esc(str(model.get('device')))}, {esc(str(model.get('dtype')))}) · "
        f"scorer <code>{esc(str(scorer.get('arch')))}</code> / <code>{esc(str(scorer.get('pretrained')))}</code> · "
        f"λ = {esc(str(cfg.get('score', {}).get('lam')))} · repeat {esc(str(cfg.get('synth', {}).get('repeat')))}</p>",
        "<h2>Counts per stage</h2>" + _table(["count", "rows"], count_rows),
        ("<h3>Rejected captions by reason</h3>" + _table(["reason", "rows"], rejects)) if rejects else "<h3>Rejected captions</h3><p>none</p>",
        ("<h3>Unusable samples by reason</h3>" + _table(["reason", "samples"], unusable)) if unusable else "",
        "<h2>Throughput per stage</h2>" + _table(["stage", "rows in", "rows out", "rows/s", "wall s", "busy s", "what"], stages)
        + "<p class=note>Curate, synthesize and score stream together: their wall time is the span of their Ray Data operator; "
        "busy seconds are the time spent inside the stage's actors.</p>",
        ("<details><summary>Ray Data operators</summary>" + _table(["operator", "rows in", "rows out", "span s", "task s"], ops) + "</details>") if ops else "",
        "<h2>Selection</h2>" + _table(["", ""], sel_rows),
        "<h2>Generators</h2>" + _table(
            ["generator", "model", "samples", "made this run", "busy s/sample", "GPU-s/sample", "share of dataset", "GPU-s/selected pair"],
            [[g, v.get("model"), v.get("samples"), v.get("made_this_run"), _fmt(v.get("busy_s_per_sample"), ".3f"),
              _fmt(v.get("gpu_s_per_sample"), ".3f"), _fmt(v.get("share_selected"), ".1%"), _fmt(v.get("gpu_s_per_selected"), ".3f")]
             for g, v in (m.get("by_generator") or {}).items()])
        + "<img src='generators.png' alt='score by generator'>",
        ("<h2>Exports</h2>" + _table(["export", "written"], exports)) if exports else "",
        f"<h2>Scores: {n_cands} competing candidates vs {n_chosen} selected</h2><img src='histograms.png' alt='score histograms'>",
        "<h2>Best and worst pairs</h2><p class=note>Blue frames: pairs in the dataset, with their rank.</p><img src='contact_sheet.png' alt='contact sheet'>",
        "<h2>Wall seconds</h2>" + _table(["part", "seconds"], [[k, v] for k, v in m.get("wall_seconds", {}).items()]),
        f"<details><summary>Configuration</summary><pre>{esc(json.dumps(cfg, indent=2, default=str))}</pre></details>",
    ]
    style = ("body{font-family:system-ui,sans-serif;max-width:1800px;margin:24px auto;padding:0 16px;color:#222}"
             "table{border-collapse:collapse;margin:6px 0 14px}td,th{border:1px solid #ccc;padding:3px 10px;text-align:left}"
             "th{background:#f2f2f2}img{max-width:100%;border:1px solid #ddd}.meta,.note{color:#555}code{background:#f5f5f5}")
    return f"<!doctype html><html><head><meta charset='utf-8'><title>synth-factory report</title><style>{style}</style></head><body>{''.join(sections)}</body></html>\n"


def build_report(output: str) -> str:
    """Write report/ for the run in `output`; returns the path of index.html."""
    dirs = run_dirs(output)
    if not files.exists(dirs["manifest"]):
        raise ReportError(f"no manifest.json in {output}: not a run of this factory")
    m = read_manifest(dirs["manifest"])
    candidate_paths = files.list_files(dirs["candidates"], ".parquet")  # one listing for scores and images
    legacy = m.get("legacy_generator") or (None if m.get("generators") else run_generators(m)[0])
    cands = competing(candidate_scores(candidate_paths, legacy), dirs["curated_ids"], m)
    chosen = dataset_scores(dirs["dataset"], legacy)
    key = (S.ID, S.SAMPLE, S.GENERATOR, S.RANK)
    ranks = {(i, s, g): r for i, s, g, r in zip(*(chosen.column(c).to_pylist() for c in key))} if chosen.num_rows else {}
    top, bottom = sheet_rows(cands) if cands.num_rows else (cands, cands)
    report = dirs["report"]
    files.write_bytes_atomic(files.join(report, "histograms.png"), histograms_png(cands, chosen))
    files.write_bytes_atomic(files.join(report, "contact_sheet.png"), contact_sheet_png(candidate_paths, top, bottom, ranks))
    files.write_bytes_atomic(files.join(report, "generators.png"), generators_png(cands, chosen))
    index = files.join(report, "index.html")
    files.write_bytes_atomic(index, index_html(m, cands.num_rows, chosen.num_rows).encode("utf-8"))
    return index


def report_after_run(output: str) -> dict:
    """build_report for the end of a run: a failed report is logged and recorded, the data stays."""
    try:
        return {"index": redact(build_report(output))}
    except Exception as e:
        error = redact(f"{type(e).__name__}: {e}")
        log.error("report failed: %s", error)
        return {"error": error}


def main(argv: list[str] | None = None) -> int:


    parser = argparse.ArgumentParser(prog="python -m factory.report", description="Rebuild report/ of a finished run.")
    parser.add_argument("output", help="the run's folder (output= of the run), local or a URI")
    args = parser.parse_args(argv)
    try:
        print(build_report(args.output))
    # OSError: the output's storage (missing, no credentials); ValueError: a manifest.json that is no JSON object
    except (ReportError, OSError, ValueError) as e:
        print(f"error: {redact(str(e))}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
