"""Exports, run report, per-stage summary and the cost estimate, checked against the libraries that read them.

One CLI run (module scoped) with every export on feeds most tests here.
"""
from __future__ import annotations

import glob
import hashlib
import io
import json
import math
import os
import re
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image

from conftest import CAPTIONS, ROOT, factory_main, factory_run, tiny_overrides, write_jsonl
from factory import schema as S

K, REPEAT, SHARD = 6, 2, 4
JUNK = [
    {"id": "short", "caption": "tiny"},  # rules: too_short
    {"id": "dup", "caption": CAPTIONS[0].upper()},  # duplicate_caption
    "{not json",  # malformed_row
]


def cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def captions_path(tmp_path_factory) -> Path:
    rows = [{"id": f"cap.{i}/x", "caption": c} for i, c in enumerate(CAPTIONS)] + JUNK  # ids with dots and slashes
    return write_jsonl(tmp_path_factory.mktemp("in") / "captions.jsonl", rows)


@pytest.fixture(scope="module")
def run_out(tmp_path_factory, captions_path, ray_local):
    """(output folder, CLI stdout) of one tiny run with every export on."""
    out = tmp_path_factory.mktemp("run") / "out"
    args = tiny_overrides(out, captions_path, f"select.k={K}", f"synth.repeat={REPEAT}", "export.llava=true",
                          "export.webdataset=true", "export.hf=true", f"export.shard_size={SHARD}", "model.batch_size=4")
    proc = factory_run(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout


@pytest.fixture(scope="module")
def manifest(run_out):
    return json.loads((run_out[0] / "manifest.json").read_text())


@pytest.fixture(scope="module")
def dataset(run_out) -> pa.Table:
    parts = sorted(glob.glob(str(run_out[0] / "dataset" / "*.parquet")))
    return pa.concat_tables([pq.read_table(p) for p in parts]).sort_by(S.RANK)


def test_dataset_folder_is_complete(run_out, manifest, dataset):
    out = run_out[0]
    assert manifest["status"] == "complete"
    assert dataset.num_rows == manifest["counts"]["selected"] == K
    assert not [p for p in os.listdir(out) if p.startswith(".dataset-staging")]
    names = set(os.listdir(out / "dataset"))
    assert {"llava.json", "images", "wds", "README.md"} <= names
    assert not [p for p in glob.glob(str(out / "dataset" / "**" / "*"), recursive=True) if os.path.basename(p).startswith(".")]


def test_llava_export_loads_like_llava(run_out, dataset):
    folder = run_out[0] / "dataset"
    items = json.loads((folder / "llava.json").read_text())  # LLaVA's LazySupervisedDataset: json.load, then PIL per item
    instructions = yaml.safe_load((ROOT / "conf" / "export" / "llava_instructions.yaml").read_text())
    by_id = {r[S.ID]: r for r in dataset.to_pylist()}
    assert len(items) == len(by_id) == K
    assert [it["id"] for it in items] == dataset.column(S.ID).to_pylist()  # rank order
    for it in items:
        image = Image.open(os.path.join(folder, it["image"])).convert("RGB")
        row = by_id[it["id"]]
        assert not os.path.isabs(it["image"]) and it["image"].startswith("images/")
        assert np.array_equal(np.asarray(image), np.asarray(Image.open(io.BytesIO(row[S.IMAGE])).convert("RGB")))
        human, gpt = it["conversations"]
        assert human["from"] == "human" and gpt["from"] == "gpt"
        assert human["value"].startswith("<image>\n") and human["value"][len("<image>\n"):] in instructions
        assert gpt["value"] == row[S.CAPTION]
        # docs/outputs.md: the instruction is chosen by a hash of the id (blake2b, 8 bytes, little-endian)
        h = int.from_bytes(hashlib.blake2b(it["id"].encode(), digest_size=8).digest(), "little")
        assert human["value"] == "<image>\n" + instructions[h % len(instructions)].strip()
    assert len({it["conversations"][0]["value"] for it in items}) > 1  # not one instruction for all


def test_llava_instructions_are_deterministic(run_out, tmp_path):
    import shutil

    from factory.export.common import load_instructions
    from factory.export.llava import write_llava

    copy = tmp_path / "ds"
    shutil.copytree(run_out[0] / "dataset", copy)
    os.remove(copy / "llava.json")
    write_llava(str(copy), load_instructions(None))
    assert (copy / "llava.json").read_text() == (run_out[0] / "dataset" / "llava.json").read_text()


def test_webdataset_shards_hold_every_pair_once(run_out, dataset):
    import webdataset as wds

    shards = sorted(glob.glob(str(run_out[0] / "dataset" / "wds" / "*.tar")))
    assert [os.path.basename(s) for s in shards] == [f"shard-{i:06d}.tar" for i in range(math.ceil(K / SHARD))]
    samples = list(wds.WebDataset(shards, shardshuffle=False).decode("pil"))
    assert len(samples) == K
    seen = {(s["json"][S.ID], s["json"][S.SAMPLE]) for s in samples}
    rows = {(r[S.ID], r[S.SAMPLE]): r for r in dataset.to_pylist()}
    assert seen == set(rows) and len(seen) == len(samples)
    for s in samples:
        # the keys docs/outputs.md lists for KEY.json
        assert set(s["json"]) == {"id", "sample", "seed", "clip_score", "ssim", "score", "rank", "width", "height"}
        row = rows[(s["json"][S.ID], s["json"][S.SAMPLE])]
        assert (s["json"]["width"], s["json"]["height"]) == (row[S.WIDTH], row[S.HEIGHT]) == s["png"].size
        assert s["txt"] == row[S.CAPTION]
        assert {k: s["json"][k] for k in (S.SEED, S.RANK, S.SCORE, S.CLIP_SCORE, S.SSIM)} == {k: row[k] for k in (S.SEED, S.RANK, S.SCORE, S.CLIP_SCORE, S.SSIM)}
        assert np.array_equal(np.asarray(s["png"].convert("RGB")), np.asarray(Image.open(io.BytesIO(row[S.IMAGE])).convert("RGB")))


def test_the_readme_recipes_read_the_dataset_beside_its_exports(run_out, tmp_path):
    import datasets

    out = str(run_out[0])
    assert (run_out[0] / "dataset" / "llava.json").exists()  # exports sit beside the Parquet files
    table = pads.dataset(glob.glob(out + "/dataset/*.parquet"), format="parquet").to_table()
    hf = datasets.load_dataset("parquet", data_files=out + "/dataset/*.parquet", split="train", cache_dir=str(tmp_path / "hf"))
    assert table.num_rows == hf.num_rows == K and sorted(hf[S.RANK]) == sorted(table.column(S.RANK).to_pylist())


def test_hf_folder_loads_with_load_dataset(run_out, dataset, tmp_path):
    import datasets

    ds = datasets.load_dataset(str(run_out[0] / "dataset"), split="train", cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == K
    assert ds.column_names == S.DATASET.names
    assert isinstance(ds.features[S.IMAGE], datasets.Image)
    assert sorted(ds[S.RANK]) == list(range(1, K + 1))
    first = ds[0]
    assert first[S.IMAGE].size == (first[S.WIDTH], first[S.HEIGHT])
    card = (run_out[0] / "dataset" / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    parts = sorted(p.name for p in (run_out[0] / "dataset").glob("*.parquet"))
    assert meta["configs"][0]["data_files"][0]["path"] == parts and len(parts) >= 1
    assert f"| selected | {K} |" in card
    assert "captions were\ncurated by rules and exact deduplication, each turned into" in card
    assert "best sample of each caption\n(by score) competed" in card


def test_the_card_names_every_curation_step_the_run_used():
    from factory.config import compose
    from factory.export.hf import curation_steps

    assert curation_steps(compose([])["curate"]) == "curated by rules and exact deduplication"
    everything = compose(["curate.near_dup.enabled=true", "curate.perplexity.enabled=true", "curate.perplexity.model=gpt2",
                          "curate.llm.enabled=true", "curate.llm.model=Qwen/Qwen2.5-1.5B-Instruct"])["curate"]
    assert curation_steps(everything) == ("curated by rules, exact deduplication, near-duplicate removal (MinHash + LSH), "
                                          "a perplexity filter (`gpt2`) and an LLM judge (`Qwen/Qwen2.5-1.5B-Instruct`)")
    assert curation_steps(compose(["curate.rules.enabled=false", "curate.dedup.captions=false"])["curate"]) == "not curated"


def test_stage_summary_in_manifest_and_output(run_out, manifest):
    c = manifest["counts"]
    stages = {s["stage"]: s for s in manifest["stages"]}
    assert list(stages) == ["scan", "curate", "synthesize", "score", "select", "export"]
    assert stages["curate"]["rows_in"] == c["read"] and stages["curate"]["rows_out"] == c["curated"]
    assert stages["synthesize"]["rows_out"] == c["generated"] == c["curated"] * REPEAT
    assert stages["select"]["rows_out"] == c["selected"] == K
    for s in stages.values():
        assert s["wall_s"] is not None and s["wall_s"] >= 0
        if s["rows_per_s"] is not None:
            assert s["rows_per_s"] == pytest.approx(s["rows_out"] / s["wall_s"], rel=1e-2)
    ops = {o["operator"]: o for o in manifest["ray_operators"]}
    for stage, operator in [("curate", "MapBatches(duplicates)"), ("synthesize", "MapBatches(generate_tiny)"),
                            ("score", "MapBatches(score_tiny)")]:
        spans = [o["span_s"] for name, o in ops.items() if operator in name]
        assert len(spans) == 1 and stages[stage]["wall_s"] == spans[0], (stage, ops)  # Ray's own per-operator span
    on_disk = pads.dataset(str(run_out[0] / "candidates"), format="parquet").count_rows()
    assert stages["score"]["rows_in"] == on_disk  # a fresh run: every sample on disk is this run's
    assert stages["select"]["rows_out"] == sum(pq.read_metadata(f).num_rows for f in (run_out[0] / "dataset").glob("*.parquet"))
    stdout = run_out[1]
    for name in stages:
        assert re.search(rf"^{name}\s+in\s+\S+\s+out\s+\d+\s+\S+ rows/s\s+wall\s+[\d.]+ s", stdout, re.M), stdout


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])


def test_report_is_made_and_rebuilt(run_out, manifest):
    out = run_out[0]
    report = out / "report"
    html_text = (report / "index.html").read_text()
    links = _Links()
    links.feed(html_text)
    assert sorted(links.images) == ["contact_sheet.png", "generators.png", "histograms.png"]
    for name in links.images:
        with Image.open(report / name) as im:
            im.verify()
    for reason, n in manifest["counts"]["rejected_by_reason"].items():
        assert f"<td>{reason}</td><td>{n}</td>" in html_text
    for stage in manifest["stages"]:
        assert f"<td>{stage['stage']}</td>" in html_text
    with Image.open(report / "contact_sheet.png") as im:
        assert im.width > 1500 and im.height > 1000  # two panels: 16 best, 8 remaining worst
    for name in links.images:
        os.remove(report / name)
    proc = cli("factory.report", str(out))
    assert proc.returncode == 0, proc.stderr
    assert all((report / n).stat().st_size > 10_000 for n in links.images)


def test_report_of_a_folder_that_is_no_run(tmp_path):
    proc = cli("factory.report", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"error: no manifest.json in {tmp_path}: not a run of this factory"]


def test_contact_sheet_rows_split_without_overlap():
    from factory.report import sheet_rows

    t = pa.table({S.ID: [str(i) for i in range(20)], S.SAMPLE: [0] * 20, S.SCORE: np.linspace(0, 1, 20)})
    top, bottom = sheet_rows(t, 16)
    assert top.column(S.SCORE).to_pylist() == sorted(t.column(S.SCORE).to_pylist(), reverse=True)[:16]
    assert bottom.column(S.SCORE).to_pylist() == sorted(t.column(S.SCORE).to_pylist())[:4]


def _dataset_dir(tmp_path: Path, fmt: str, n: int = 5) -> Path:
    """A dataset/ folder written by hand: n rows of random images encoded as `fmt`."""
    from factory.io.write import encode_image

    rng = np.random.default_rng(0)
    images = [encode_image(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), fmt, 90) for _ in range(n)]
    table = pa.table({
        S.ID: [f"a.b/{i}" for i in range(n)], S.CAPTION: [f"caption number {i}" for i in range(n)], S.SAMPLE: pa.array([0] * n, pa.int32()),
        S.GENERATOR: pa.array(["g"] * n, pa.string()), S.SEED: pa.array(range(n), pa.int64()), S.IMAGE: images, S.WIDTH: pa.array([16] * n, pa.int32()), S.HEIGHT: pa.array([16] * n, pa.int32()),
        S.CLIP_SCORE: [0.1 * i for i in range(n)], S.SSIM: [0.9] * n, S.SCORE: [0.1 * i + 0.45 for i in range(n)],
        S.REASON: pa.array([None] * n, pa.string()), S.RANK: pa.array(range(n, 0, -1), pa.int64())}, schema=S.DATASET)
    folder = tmp_path / "dataset"
    folder.mkdir()
    pq.write_table(table, folder / "part-0.parquet")
    return folder


def test_two_runs_dataset_folders_load_their_own_rows_through_one_cache(tmp_path):
    """datasets keys its cache of a card-bearing folder on the card's YAML and the folder's name:
    every run's folder is called dataset/, so the card must tell runs apart (it names its parts)."""
    import datasets

    from factory.config import compose
    from factory.export.hf import write_card

    folders = []
    for run, n in (("a", 5), ("b", 3)):
        (tmp_path / run).mkdir()
        folder = _dataset_dir(tmp_path / run, "png", n)
        (folder / "part-0.parquet").rename(folder / f"part-{run}.parquet")  # parts are named by their rows' keys
        write_card(str(folder), {"selected": n}, compose([]))
        folders.append(folder)
    cache = str(tmp_path / "hf")
    rows = [datasets.load_dataset(str(f), split="train", cache_dir=cache).num_rows for f in folders]
    assert rows == [5, 3]


@pytest.mark.parametrize("fmt,ext", [("webp", "webp"), ("jpeg", "jpg")])
def test_exports_keep_the_configured_image_format(tmp_path, fmt, ext):
    import webdataset as wds

    from factory.export import write_exports
    from factory.settings import ExportSettings

    folder = _dataset_dir(tmp_path, fmt)
    out = write_exports(str(folder), ExportSettings(llava=True, webdataset=True, shard_size=2), {"selected": 5}, {})
    assert out["webdataset"]["shards"] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    items = json.loads((folder / "llava.json").read_text())
    assert [it["id"] for it in items] == [f"a.b/{i}" for i in range(4, -1, -1)]
    for it in items:
        assert it["image"].endswith("." + ext)
        assert Image.open(folder / it["image"]).format == {"webp": "WEBP", "jpg": "JPEG"}[ext]
    samples = list(wds.WebDataset(sorted(glob.glob(str(folder / "wds" / "*.tar"))), shardshuffle=False).decode("pil"))
    assert sorted(s["txt"] for s in samples) == [f"caption number {i}" for i in range(5)]
    assert all(s[ext].size == (16, 16) for s in samples)


def test_sample_names_split_cleanly_in_webdataset():
    from webdataset.tariterators import base_plus_ext

    from factory.export.common import sample_name

    for rank, cid in [(1, "a.b.c"), (12, "x/y z"), (3, "ünï.cöde"), (4, "..")]:
        key = sample_name(rank, cid)
        assert base_plus_ext(f"{key}.png") == (key, "png")
        assert base_plus_ext(f"{key}.json") == (key, "json")
    assert sample_name(1, "a.b") != sample_name(2, "a.b")


def test_bad_instructions_file_fails_before_the_run(tmp_path, captions_path, capsys):
    proc = factory_main(capsys, *tiny_overrides(tmp_path / "out", captions_path, "export.llava=true", f"export.llava_instructions={tmp_path}/none.yaml"))
    assert proc.returncode == 2
    assert "export.llava_instructions" in proc.stderr and not (tmp_path / "out" / "candidates").exists()


# ---- cost estimate ---------------------------------------------------------------------

def test_estimate_matches_the_run(captions_path, manifest, run_out):
    from factory.config import compose
    from factory.estimate import estimate

    from factory.job import load_job

    cfg = compose([f"input={captions_path}", f"synth.repeat={REPEAT}", f"select.k={K}", "synth.steps=2", "model.batch_size=2", "estimate.gpus=3",
                    "score.ssim_size=128", "score.ssim_low=64", "estimate.sample_rows=3"])
    e = estimate(load_job(cfg))
    c = manifest["counts"]
    assert e["captions_in"] == c["read"]
    assert e["curated"] == c["curated"]  # counted over the whole input, not the 3-row sample: exact
    assert e["rules_failed"] and all(c["rejected_by_reason"][r] == n for r, n in e["rules_failed"].items())
    assert not e["curation_not_counted"]
    assert e["images"] == e["curated"] * REPEAT == c["synthesized"]
    assert e["selected"] == K
    assert e["seconds_per_image"] > 0 and e["calibration"]["images"] == 2
    assert e["gpu_hours"] == pytest.approx(e["images"] * e["seconds_per_image"] / 3600)
    assert e["wall_hours"] == pytest.approx(e["gpu_hours"] / 3)
    actual = sum(os.path.getsize(p) for p in glob.glob(str(run_out[0] / "candidates" / "*.parquet")))
    assert 0.5 < e["candidates_bytes"] / actual < 2.0, (e["candidates_bytes"], actual)
    assert e["dataset_bytes"] == pytest.approx(e["candidates_bytes"] * K / e["images"])


def test_estimate_cli_with_given_seconds(captions_path, capsys):
    proc = factory_main(capsys, "estimate", f"input={captions_path}", "synth.repeat=3", "estimate.seconds_per_image=36",
                        "estimate.gpus=2", "estimate.image_bytes=1048576", "select.k=4")
    assert proc.returncode == 0, proc.stderr
    table = {re.split(r"\s{2,}", line)[0]: re.split(r"\s{2,}", line)[1] for line in proc.stdout.splitlines()}
    curated = int(table["captions after curation"])
    assert curated == len(CAPTIONS)  # the junk rows: a short caption, a duplicate, a malformed line
    assert int(table["images to generate"]) == curated * 3
    assert float(table["GPU-hours"]) == pytest.approx(curated * 3 * 36 / 3600, abs=1e-3)
    assert float(table["wall hours on 2 GPU(s)"]) == pytest.approx(curated * 3 * 36 / 3600 / 2, abs=1e-3)
    assert table["storage: dataset/"].endswith("MiB") and float(table["storage: dataset/"].split()[0]) == pytest.approx(4.0, abs=0.01)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks what a machine without CUDA (a laptop) says")
def test_estimate_without_cuda_is_one_line_or_takes_the_measured_figures(captions_path, capsys):
    from factory.estimate import MEASURED

    real = ["model=sdxl", "scorer=clip_l14_336", f"input={captions_path}"]
    proc = factory_main(capsys, "estimate", *real)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert "estimate.seconds_per_image" in lines[0] and "estimate.device=h200" in lines[0]
    proc = factory_main(capsys, "estimate", *real, "estimate.device=H200")
    assert proc.returncode == 0, proc.stderr[-2000:]
    synth, score = MEASURED[("h200", "sdxl", "ViT-L-14-336")]
    table = {re.split(r"\s{2,}", line)[0]: re.split(r"\s{2,}", line)[1:] for line in proc.stdout.splitlines()}
    assert float(table["seconds per image"][0]) == pytest.approx(1 / synth + 1 / score, abs=1e-4)
    assert "benchmarks/RESULTS.md" in table["seconds per image"][1]
    results = (ROOT / "benchmarks" / "RESULTS.md").read_text()  # the figures are RESULTS.md's own
    assert f"{synth} images/s" in results and f"{score:g} pairs/s" in results
    proc = factory_main(capsys, "estimate", *real, "estimate.device=h100")
    assert proc.returncode == 2 and "estimate.device='h100': nothing measured" in proc.stderr


def test_estimate_assumes_the_models_own_image_size_when_it_measures_none(captions_path, capsys):
    """Without calibration the image size comes from the model's configs (what the synthesis stage
    itself makes), not SDXL's 1024² for every model."""
    from factory.synth.diffusion import SDXL
    from factory.synth.tiny import TinySDXL, ensure_tiny_sdxl

    folder = str(ensure_tiny_sdxl())
    side = SDXL(path=folder, device="cpu", steps=1).native_side()
    assert side == TinySDXL().native_side() == SDXL(path=folder, device="cpu", steps=1).loaded().output_size()[0]
    assert SDXL(path="stabilityai/stable-diffusion-xl-base-1.0").native_side() == 1024  # a hub id: the family's own size
    proc = factory_main(capsys, "estimate", f"input={captions_path}", "estimate.seconds_per_image=1")
    assert proc.returncode == 0, proc.stderr
    assert f"per png image (assumed {side}x{side})" in proc.stdout


def test_estimate_cli_input_not_found(tmp_path, capsys):
    proc = factory_main(capsys, "estimate", f"input={tmp_path}/missing.jsonl", "estimate.seconds_per_image=1")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: input not found")


def test_estimate_cli_refuses_an_added_typo(captions_path, capsys):
    proc = factory_main(capsys, "estimate", f"input={captions_path}", "estimate.seconds_per_image=1", "+synth.repeats=3")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == ["error: '+synth.repeats=3' adds a key that nothing reads: synth has no 'repeats' "
                                                "(its keys: batch_size, generators, guidance, negative_prompt, repeat, seed, steps) "
                                                "(python -m factory --cfg job prints every key)"]


def test_failed_export_leaves_no_shard_behind(tmp_path):
    from factory.export.webdataset import write_shards

    folder = _dataset_dir(tmp_path, "png")
    table = pq.read_table(folder / "part-0.parquet")
    images = table.column(S.IMAGE).to_pylist()
    images[3] = b"not an image"  # the 4th pair: shard 0 is complete, shard 1 is half-written when it fails
    pq.write_table(table.set_column(table.schema.get_field_index(S.IMAGE), S.IMAGE, pa.array(images, pa.binary())), folder / "part-0.parquet")
    with pytest.raises(ValueError, match="unknown image encoding"):
        write_shards(str(folder), shard_size=2)
    assert sorted(os.listdir(folder / "wds")) == ["shard-000000.tar"]


# ---- status ------------------------------------------------------------------------------

def status_table(capsys, *args: str) -> tuple[int, dict, str]:
    proc = factory_main(capsys, "status", *args)
    rows = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in proc.stdout.splitlines() if line.strip())
    return proc.returncode, rows, proc.stderr


def test_status_of_a_complete_run(run_out, manifest, capsys):
    rc, rows, err = status_table(capsys, str(run_out[0]))
    assert rc == 0, err
    c = manifest["counts"]
    assert rows["status"].startswith("complete (run 1, started ")
    assert rows["held by"] == "no run"
    assert rows["captions"] == f"{c['read']:,} read, {c['rejected']:,} rejected"
    assert rows["samples"].startswith(f"{c['generated']:,} generated of at most {c['samples_at_most']:,} (100.0%)")
    sel = manifest["selection"]
    assert rows["selected"] == (f"{K} pairs, threshold {sel['threshold']:.4f}, mean clip_score {sel['mean_clip_score']:.4f}, "
                                f"ssim {sel['mean_ssim']:.4f}, score {sel['mean_score']:.4f}")
    assert rows["report"] == manifest["report"]["index"]


def test_status_of_a_running_and_of_a_killed_run(run_out, tmp_path, capsys):
    import socket

    from factory.jobs import LOCK_NAME

    out = tmp_path / "out"
    out.mkdir()
    m = json.loads((run_out[0] / "manifest.json").read_text())
    m.update(status="running", selection=None)
    m["counts"] = {"read": 100, "samples_at_most": 80, "resumed": 20, "generated": 15}
    m["progress"] = {"rate_per_s": 0.5, "interval_s": 125.0, "left_s_at_most": 90.0}
    m["config"]["progress_every_s"] = 60
    (out / "manifest.json").write_text(json.dumps(m))
    rc, rows, _ = status_table(capsys, f"output={out}")
    assert rc == 0
    assert rows["held by"] == "no run; it was killed: the same command resumes it"
    assert rows["samples"].startswith("15 generated of at most 60 (25.0%); 20 resumed; counted ")
    assert rows["rate"] == "0.5 samples/s over the last 2 min, at most about 1 min left"
    assert "selected" not in rows

    lock = {"host": socket.gethostname(), "pid": os.getpid(), "token": "t", "beat_s": 15.0, "heartbeat": time.time()}
    (out / LOCK_NAME).write_text(json.dumps(lock))
    rows = status_table(capsys, str(out))[1]
    assert rows["held by"].startswith(f"{socket.gethostname()} (pid {os.getpid()}), heartbeat ") and "gone" not in rows["held by"]
    lock["heartbeat"] -= 600
    (out / LOCK_NAME).write_text(json.dumps(lock))
    assert status_table(capsys, str(out))[1]["held by"].endswith("it looks gone: the same command resumes it")
    # SIGKILLed a moment ago on this host: its heartbeat is fresh but its pid is gone
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock.update(pid=dead.pid, heartbeat=time.time())
    (out / LOCK_NAME).write_text(json.dumps(lock))
    assert status_table(capsys, str(out))[1]["held by"].endswith("it looks gone: the same command resumes it")


@pytest.mark.parametrize("text, words", [("{broken", "is not valid JSON"), ("[]", "is not a manifest of this factory")])
def test_status_of_a_broken_manifest_names_it(tmp_path, text, words, capsys):
    (tmp_path / "manifest.json").write_text(text)
    rc, rows, err = status_table(capsys, str(tmp_path))
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"error: {tmp_path / 'manifest.json'} ") and words in err


@pytest.mark.parametrize("command", ["status", "estimate"])
def test_help_prints_usage(command, capsys):
    proc = factory_main(capsys, command, "--help")
    assert proc.returncode == 0 and proc.stdout.startswith(f"usage: python -m factory {command}"), proc.stderr[-2000:]


def test_status_of_no_run(tmp_path, capsys):
    rc, rows, err = status_table(capsys, str(tmp_path / "nothing"))
    assert rc == 2 and not rows
    assert err.strip().startswith("error: ") and "no run of this factory" in err and len(err.strip().splitlines()) == 1


def candidates_table(ids: list[str], samples: list[int], reasons: list, scores: list, image: bytes = b"x") -> pa.Table:
    """Rows of candidates/ as a run writes them (4×4 images, the one score in every score column)."""
    n = len(ids)
    return pa.table({S.ID: ids, S.CAPTION: ids, S.SAMPLE: pa.array(samples, pa.int32()),
                     S.GENERATOR: pa.array(["g"] * n, pa.string()), S.SEED: pa.array([0] * n, pa.int64()),
                     S.IMAGE: [image] * n, S.WIDTH: pa.array([4] * n, pa.int32()), S.HEIGHT: pa.array([4] * n, pa.int32()),
                     S.CLIP_SCORE: scores, S.SSIM: scores, S.SCORE: scores, S.REASON: pa.array(reasons, pa.string())},
                    schema=S.CANDIDATES)


def test_the_contact_sheet_takes_each_image_from_the_file_its_scores_came_from(tmp_path):
    """A run still writing adds candidates files between reading the scores and the images: both
    must use one listing, or an image lands beside another pair's caption and scores."""
    from factory.io import files
    from factory.report import candidate_scores, load_images

    def part(name: str, colour: int, ids: list[str]) -> None:
        buf = io.BytesIO()
        Image.new("RGB", (4, 4), (colour, 0, 0)).save(buf, format="PNG")
        n = len(ids)
        files.write_parquet_atomic(str(tmp_path / name), candidates_table(ids, [0] * n, [None] * n, [0.55] * n, buf.getvalue()))

    part("part-b.parquet", 200, ["b1", "b2"])
    paths = files.list_files(str(tmp_path), ".parquet")
    scores = candidate_scores(paths)
    part("part-a.parquet", 10, ["a1"])  # sorts first: a second listing would shift every index
    images = load_images(paths, scores)
    assert scores.column(S.ID).to_pylist() == ["b1", "b2"]
    assert [im.getpixel((0, 0))[0] for im in images] == [200, 200]


def test_a_sample_written_twice_counts_once_in_the_manifest_and_the_report(tmp_path):
    """Two runs at once (resume.take_over) or a sample made again after running out of memory leave
    an (id, sample) twice in candidates/: counted once, by its best outcome (pyarrow's own distinct
    count as the reference for the number of samples)."""
    from factory.io import files
    from factory.report import candidate_scores
    from factory.counts import count_candidates

    rows = [("a", 0, None, 0.5), ("a", 0, None, 0.5),  # a usable sample written by two runs
            ("b", 0, S.R_OOM, None), ("b", 0, None, 0.4),  # out of memory, then made again
            ("c", 0, S.R_OOM, None), ("c", 0, S.R_OOM, None),  # out of memory twice
            ("d", 1, S.R_BAD_IMAGE, None), ("d", 1, S.R_OOM, None),  # a bad image stays bad
            ("e", 0, None, 0.3)]
    t = candidates_table(*(list(column) for column in zip(*rows)))
    files.write_parquet_atomic(str(tmp_path / "part-0.parquet"), t.slice(0, 5))
    files.write_parquet_atomic(str(tmp_path / "part-1.parquet"), t.slice(5))
    distinct = t.group_by([S.ID, S.SAMPLE]).aggregate([]).num_rows
    assert count_candidates(str(tmp_path)) == {"rows": distinct, "usable": 3, "unusable": {S.R_OOM: 1, S.R_BAD_IMAGE: 1},
                                               "by_generator": {"g": {"samples": distinct, "usable": 3}}}
    scores = candidate_scores(files.list_files(str(tmp_path), ".parquet"))
    assert sorted(scores.column(S.ID).to_pylist()) == ["a", "b", "e"]


def test_a_webdataset_shard_size_that_is_no_number_is_refused_before_the_run():
    from factory.export import check_exports
    from factory.settings import ExportSettings

    for bad in (None, "many", 0, 2.5):
        with pytest.raises(ValueError, match="export.shard_size must be a whole number"):
            check_exports(ExportSettings(webdataset=True, shard_size=bad))
    check_exports(ExportSettings(webdataset=True, shard_size=3))


@pytest.mark.parametrize("bad, words", [("synth.repeat=-2", "synth.repeat must be a whole number ≥ 1, got -2"),
                                        ("image.format=gif", "image.format='gif'"),
                                        ("estimate.seconds_per_image=-3", "estimate.seconds_per_image must be a number > 0 or null, got -3"),
                                        ("estimate.seconds_per_image=abc", "could not be converted to Float")])
def test_estimate_refuses_what_a_run_would(captions_path, bad, words, capsys):
    proc = factory_main(capsys, "estimate", f"input={captions_path}", bad)
    assert proc.returncode == 2 and words in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_the_card_states_a_small_fraction_as_it_is():
    from factory.config import compose
    from factory.export.hf import card_text

    text = card_text({"selected": 1}, compose(["select.k=null", "select.fraction=0.001"]), {}, [], ["part-a.parquet"])
    assert "competed for the global top 0.1% by score" in text
