"""The pre-pass (factory/prepass.py) gives the same result in the driver and through Ray tasks."""
import json

import pyarrow as pa
import pytest

from factory import schema as S
from factory.config import compose
from factory.curate.near_dup import signature_column
from factory.errors import InputError
from factory.io.read import read_caption_file
from factory.job import load_job
from factory.engine import dist_prepass
from factory.prepass import ScanKeys, Tally, from_ipc, run_prepass
from tests.fixtures.planted import planted_pool


def prepass(paths, local_mb, *overrides, sample_rows=0):
    return run_prepass([str(p) for p in paths], load_job(compose(list(overrides))).pipeline, 0.25, local_mb, sample_rows)


def same(a, b):
    assert (a.n_read, a.rejected_by_reason, a.sample) == (b.n_read, b.rejected_by_reason, b.sample)
    assert a.losers_table().sort_by(S.POS).to_pylist() == b.losers_table().sort_by(S.POS).to_pylist()
    assert a.kept_table().sort_by(S.ID).to_pylist() == b.kept_table().sort_by(S.ID).to_pylist()
    assert a.n_kept == a.kept_table().num_rows and b.n_kept == b.kept_table().num_rows


def test_local_and_ray_scans_agree(tmp_path, ray_local):
    a = tmp_path / "a.jsonl"
    a.write_text("".join(json.dumps({"id": i, "caption": f"caption number {i % 7} of a sunny day"}) + "\n" for i in range(40)) + "{bad\n")
    b = tmp_path / "b.txt"
    b.write_text("one caption of a long and sunny day\nx\n")
    local, remote = prepass([a, b], 16, sample_rows=5), prepass([a, b], 0, sample_rows=5)
    same(local, remote)
    assert remote.distributed and not local.distributed  # the kept rows of the Ray path stay in the object store
    assert local.n_read == 43
    assert local.rejected_by_reason == {S.R_MALFORMED: 1, S.R_TOO_SHORT: 1}  # the reader's and the rules' rejects
    assert local.duplicates_by_reason() == {S.R_DUP_CAPTION: 33}  # 40 rows of 7 captions
    assert local.n_kept == 8 and len(local.sample) <= 5

    bad = tmp_path / "c.json"
    bad.write_text("[{oops")
    for limit in (16, 0):
        with pytest.raises(InputError, match="c.json:1: not valid JSON"):
            prepass([bad], limit)


def test_minhash_rides_along_in_the_same_scan(tmp_path, ray_local):
    captions, truth = planted_pool(80, near_fraction=0.15, exact_fraction=0.0, seed=3)
    rows = [{"id": i, "caption": c} for i, c in enumerate(captions)]
    a = tmp_path / "a.jsonl"
    a.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"id": 99}\n')
    near = ["curate.near_dup.enabled=true"]
    local, remote = prepass([a], 16, *near), prepass([a], 0, *near)
    same(local, remote)
    found = set(local.losers_table().column(S.POS).to_pylist())
    # (recased or re-punctuated copies are exact duplicates after normalising)
    assert local.duplicates_by_reason().keys() <= {S.R_NEAR_DUP, S.R_DUP_CAPTION} and found >= set(truth)
    dedup, near_dedup = load_job(compose(near)).pipeline.deduplicators()
    block = ScanKeys(dedup=[dedup, near_dedup])(read_caption_file(str(a), 0))
    keys = from_ipc(block.column("ipc")[0].as_py())
    assert keys.column(S.MINHASH).to_pylist() == signature_column(captions, 128, 1).to_pylist()
    assert block.column("reasons")[0].as_py() == [S.R_NO_CAPTION]


def test_an_input_of_rejects_only_is_read_but_keeps_nothing(tmp_path):
    empty = tmp_path / "e.jsonl"
    empty.write_text('{"id": 1, "caption": "   "}\n')  # its one row is a reject: no keys
    pre = prepass([empty], 16, "curate.near_dup.enabled=true")
    assert pre.n_read == 1 and pre.n_kept == 0 and pre.kept_table().num_rows == 0 and pre.n_duplicates() == 0
    assert pre.rejected_by_reason == {S.R_BLANK: 1}


def test_the_sample_is_uniform_and_the_same_however_the_input_is_split(tmp_path):
    """Bottom-k by a fixed hash of pos: one file or the same rows in many blocks give one sample."""
    a = tmp_path / "a.jsonl"
    a.write_text("".join(json.dumps({"id": i, "caption": f"a calm harbour at dawn number {i}"}) + "\n" for i in range(200)))
    whole = prepass([a], 16, sample_rows=20)
    scan = ScanKeys(sample_rows=20)
    table = read_caption_file(str(a), 0)
    parts = [scan(table.slice(i, 50)) for i in range(0, 200, 50)]
    merged = pa.concat_tables([from_ipc(p.column("sample")[0].as_py()) for p in parts]).sort_by("priority").slice(0, 20)
    assert merged.column(S.CAPTION).to_pylist() == whole.sample
    assert len(set(whole.sample)) == 20


def test_the_driver_folds_the_block_samples_into_one_bottom_k(tmp_path, ray_local):
    """Tally holds `sample_rows` sampled rows whatever the number of blocks, fetched a window of
    blocks at a time: the same rows as pyarrow's sort of every block's sample at once."""
    a = tmp_path / "a.jsonl"
    a.write_text("".join(json.dumps({"id": i, "caption": f"a calm harbour at dawn number {i}"}) + "\n" for i in range(200)))
    table = read_caption_file(str(a), 0)
    scanned = ray_local.data.from_arrow([ScanKeys(sample_rows=20)(table.slice(i, 10)) for i in range(0, 200, 10)]).materialize()
    tally, held = Tally(20), []
    for block in dist_prepass.small_rows(scanned, window=3):
        tally.add(block)
        held.append(tally.sample.num_rows)
    blocks = [from_ipc(b) for t in ray_local.get(scanned.to_arrow_refs()) for b in t.column("sample").to_pylist()]
    whole = pa.concat_tables(blocks).sort_by([("priority", "ascending"), (S.POS, "ascending")]).slice(0, 20)
    assert len(blocks) == 20 and tally.n_read == 200
    assert tally.sample.to_pylist() == whole.to_pylist()
    assert max(held) == 20 and held[0] == 10  # one block's sample, then never more than sample_rows


def test_the_keys_join_adjacent_blocks_and_keep_every_row(tmp_path, ray_local):
    """keys_dataset joins adjacent scanned blocks (fewer map outputs in every shuffle after it, all
    owned by the driver) into at least two blocks per CPU, and loses, repeats or changes no key."""
    scanned = ray_local.data.from_arrow([ScanKeys()(read_caption_file(str(write_file(tmp_path / f"{f}.jsonl", f)), f))
                                         for f in range(6)]).materialize()
    apart = dist_prepass.keys_dataset(scanned, from_ipc, ScanKeys().empty_keys(), block_bytes=1)
    joined = dist_prepass.keys_dataset(scanned, from_ipc, ScanKeys().empty_keys(), block_bytes=2**40)
    assert (scanned.num_blocks(), apart.num_blocks(), joined.num_blocks()) == (6, 6, 4)  # 2 per CPU on the session's 2-CPU Ray
    each = [from_ipc(b) for t in ray_local.get(scanned.to_arrow_refs()) for b in t.column("ipc").to_pylist()]
    reference = pa.concat_tables(each).sort_by(S.POS).to_pylist()
    for ds in (apart, joined):
        assert pa.concat_tables(ray_local.get(ds.to_arrow_refs())).sort_by(S.POS).to_pylist() == reference
    assert len(reference) == len({r[S.POS] for r in reference}) == 6 * 30


def write_file(path, f: int):
    path.write_text("".join(json.dumps({"id": f"{f}-{i}", "caption": f"a quiet street in town {f} at hour {i}"}) + "\n" for i in range(30)))
    return path


def test_runs_are_contiguous_cover_every_block_and_split_the_bytes_evenly():
    sizes = [5, 1, 1, 1, 8, 0, 2, 2, 9, 3]
    for n in range(1, len(sizes) + 1):
        r = dist_prepass.runs(sizes, n)
        assert [i for run in r for i in run] == list(range(len(sizes))) and 0 < len(r) <= n and all(r)
        assert max(sum(sizes[i] for i in run) for run in r) <= sum(sizes) / n + max(sizes)
    assert dist_prepass.runs([0, 0, 0], 2) == [[0, 1], [2]]
