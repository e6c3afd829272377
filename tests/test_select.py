"""Selection against a plain pyarrow sort of the whole candidates table."""
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from factory import schema as S
from factory.select import best_of_n, resolve_k, select_top_k


def candidates(n_ids=300, repeat=3, seed=0):
    rng = np.random.default_rng(seed)
    ids = [f"id{rng.integers(0, 10**6)}" for _ in range(n_ids)]
    ids = list(dict.fromkeys(ids))
    rows = [(i, s, float(rng.integers(0, 40)) / 40) for i in ids for s in range(repeat)]  # coarse scores: many ties
    order = rng.permutation(len(rows))
    rows = [rows[j] for j in order]
    return pa.table({S.ID: [r[0] for r in rows], S.SAMPLE: pa.array([r[1] for r in rows], pa.int32()), S.SCORE: [r[2] for r in rows]})


def reference(t, k):
    by_id = t.sort_by([(S.ID, "ascending"), (S.SCORE, "descending"), (S.SAMPLE, "ascending")]).to_pylist()
    best, seen = [], set()
    for r in by_id:
        if r[S.ID] not in seen:
            seen.add(r[S.ID])
            best.append(r)
    return pa.Table.from_pylist(best).sort_by([(S.SCORE, "descending"), (S.ID, "ascending")]).slice(0, k).to_pylist()


@pytest.mark.parametrize("k", [0, 1, 17, 100, 299, 10_000])
def test_top_k_equals_full_sort(k):
    t = candidates()
    chosen, threshold, competing = select_top_k(t, k=k)
    ref = reference(t, k)
    got = chosen.to_pylist()
    assert [(r[S.ID], r[S.SAMPLE], r[S.SCORE]) for r in got] == [(r[S.ID], r[S.SAMPLE], r[S.SCORE]) for r in ref]
    assert [r[S.RANK] for r in got] == list(range(1, len(ref) + 1))
    assert competing == len(set(t.column(S.ID).to_pylist()))
    if ref:
        assert threshold == ref[-1][S.SCORE]


def test_best_of_n_ties_go_to_lower_sample():
    t = pa.table({S.ID: ["a", "a", "a", "b"], S.SAMPLE: pa.array([2, 0, 1, 0], pa.int32()), S.SCORE: [0.5, 0.5, 0.4, 0.1]})
    best = best_of_n(t).sort_by(S.ID).to_pylist()
    assert [(r[S.ID], r[S.SAMPLE]) for r in best] == [("a", 0), ("b", 0)]


def test_best_by_clip_score_picks_each_captions_sample_by_clip_score_then_ranks_by_score():
    """SynthVLM's `repeat` keeps a caption's best image by CLIPScore; the global top-k is by score."""
    rng = np.random.default_rng(7)
    n = 600
    t = pa.table({S.ID: [f"c{i % 150}" for i in range(n)], S.SAMPLE: pa.array([i // 150 for i in range(n)], pa.int32()),
                  S.CLIP_SCORE: rng.random(n).round(3), S.SSIM: rng.random(n).round(3)})
    t = t.append_column(S.SCORE, pc.add(t.column(S.CLIP_SCORE), pc.multiply(t.column(S.SSIM), 0.5)))
    chosen, _, competing = select_top_k(t, k=20, best_by=S.CLIP_SCORE)
    # Reference by pyarrow's sort: per id the top clip_score (then lower sample), then the top 20 by score (then id).
    best = t.sort_by([(S.ID, "ascending"), (S.CLIP_SCORE, "descending"), (S.SAMPLE, "ascending")])
    firsts = pa.Table.from_pylist(list({r[S.ID]: r for r in reversed(best.to_pylist())}.values()))
    want = firsts.sort_by([(S.SCORE, "descending"), (S.ID, "ascending")]).slice(0, 20)
    assert competing == 150
    assert [(r[S.ID], r[S.SAMPLE]) for r in chosen.to_pylist()] == [(r[S.ID], r[S.SAMPLE]) for r in want.to_pylist()]
    assert chosen.to_pylist() != select_top_k(t, k=20)[0].to_pylist()  # the choice of column matters here
    with pytest.raises(ValueError, match="best_by"):
        select_top_k(t, k=20, best_by="ssim")


def test_fraction():
    t = candidates()
    n = len(set(t.column(S.ID).to_pylist()))
    chosen, _, _ = select_top_k(t, fraction=0.1)
    assert chosen.num_rows == resolve_k(n, None, 0.1) == -(-n // 10)  # ⌈n / 10⌉ in integers
    with pytest.raises(ValueError, match="fraction"):
        resolve_k(10, None, 1.5)


def test_dataset_written_in_the_driver_equals_the_one_written_by_ray_tasks(tmp_path, ray_local):
    """write_selected's two paths (small candidates/ in this process, large through Ray tasks)
    write the same rows with the same ranks (how they split into files may differ)."""
    import pyarrow.dataset as pads

    from factory.io import files
    from factory.engine.select import write_selected
    from factory.select import read_scores

    t = candidates(n_ids=60, repeat=2, seed=3)
    n = t.num_rows
    full = pa.table({
        S.ID: t.column(S.ID), S.CAPTION: [f"caption {i}" for i in t.column(S.ID).to_pylist()], S.SAMPLE: t.column(S.SAMPLE),
        S.GENERATOR: pa.array(["g"] * n, pa.string()), S.SEED: pa.array(range(n), pa.int64()), S.IMAGE: [b"\x89PNG" + bytes([i % 256]) for i in range(n)],
        S.WIDTH: pa.array([8] * n, pa.int32()), S.HEIGHT: pa.array([8] * n, pa.int32()),
        S.CLIP_SCORE: t.column(S.SCORE), S.SSIM: pa.array([0.0] * n, pa.float64()), S.SCORE: t.column(S.SCORE),
        S.REASON: pa.array([None] * n, pa.string()),
    }, schema=S.CANDIDATES)
    # A Hive-style folder name (as Hydra makes them) must not turn into a column.
    cand = tmp_path / "exp=1" / "candidates"
    cand.mkdir(parents=True)
    for j, start in enumerate(range(0, n, 25)):
        files.write_parquet_atomic(str(cand / f"part-{j}.parquet"), full.slice(start, 25))
    # Two runs that overlapped on one output: the same samples twice, in another file.
    files.write_parquet_atomic(str(cand / "part-again.parquet"), full.slice(0, 40))
    paths = files.list_files(str(cand), ".parquet")
    chosen, _, _ = select_top_k(read_scores(paths), 17)
    written = {}
    for label, local_mb, row_bytes in (("driver", 64, None), ("ray", 0, None), ("ray-parts", 0, float(2**40))):
        out = tmp_path / label
        assert write_selected(paths, chosen, str(out), 0.25, local_max_mb=local_mb, row_bytes=row_bytes) == 17
        table = pads.dataset(str(out)).to_table()
        assert table.schema == S.DATASET
        written[label] = table.sort_by(S.RANK).to_pylist()
        n_files = len(files.list_files(str(out), ".parquet"))
        assert n_files == (1 if row_bytes is None else len(set(chosen.column(S.FILE).to_pylist())))  # parts by size
    assert written["driver"] == written["ray"] == written["ray-parts"]
    assert [r[S.RANK] for r in written["driver"]] == list(range(1, 18))
    assert [(r[S.ID], r[S.SAMPLE]) for r in written["driver"]] == [(r[S.ID], r[S.SAMPLE]) for r in chosen.sort_by(S.RANK).to_pylist()]


def test_current_samples_keeps_the_given_ids_below_repeat():
    from factory.select import current_samples

    t = candidates(n_ids=50, repeat=3, seed=5)
    gens = pa.array([["a", "b", None][i % 3] for i in range(t.num_rows)], pa.string())  # None: no generator named
    t = t.append_column(S.GENERATOR, gens)
    ids = pa.array(sorted(set(t.column(S.ID).to_pylist()))[::3] + ["not-there"])
    kept, dropped = current_samples(t, ids, 2, ["a", "c"])
    want = [r for r in t.to_pylist() if r[S.ID] in set(ids.to_pylist()) and r[S.SAMPLE] < 2 and r[S.GENERATOR] == "a"]  # plain Python as the reference
    assert kept.to_pylist() == want and dropped == t.num_rows - len(want) > 0
