"""Near-duplicate removal: MinHash estimates, grouping, the keep rule, and precision/recall on planted data."""
from __future__ import annotations

import os
import random
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from factory import schema as S
from factory.curate import near_dup as nd
from factory.curate.dedup import dedup_keys, find_duplicates
from tests.fixtures.planted import NEAR_KINDS, distinct_caption, near_variant, planted_pool, web_caption


def keys_table(captions, ids=None, num_perm=128, shingle_size=1):
    ids = ids or [str(i) for i in range(len(captions))]
    return pa.table({
        S.ID: pa.array(ids, pa.string()),
        S.POS: pa.array(range(len(captions)), pa.int64()),
        S.MINHASH: nd.signature_column(captions, num_perm, shingle_size),
    })


def exact_jaccard(a: str, b: str, k: int) -> float:
    sa, sb = set(nd.shingle_hashes(a, k)), set(nd.shingle_hashes(b, k))
    return len(sa & sb) / len(sa | sb)


def test_signature_agreement_estimates_jaccard():
    rng = random.Random(3)
    words = [f"w{i}" for i in range(60)]
    pairs = []
    for _ in range(200):
        a = rng.sample(words, 30)
        b = a[: rng.randint(5, 30)] + rng.sample(words, rng.randint(0, 20))
        pairs.append((" ".join(a), " ".join(b)))
    sig = nd.minhash_signatures([p for ab in pairs for p in ab], num_perm=256)
    est = (sig[0::2] == sig[1::2]).mean(axis=1)
    exact = np.array([exact_jaccard(a, b, 1) for a, b in pairs])
    # MinHash with independent hash functions: unbiased, standard deviation sqrt(J(1-J)/256).
    err = est - exact
    assert abs(err.mean()) < 0.01
    z = err / np.sqrt(exact * (1 - exact) / 256).clip(1e-3)
    assert 0.7 < z.std() < 1.3, z.std()
    assert np.corrcoef(est, exact)[0, 1] > 0.97


def test_signatures_do_not_depend_on_the_process():
    """Workers hash with CRC-32, not Python's per-process salted hash()."""
    caps = ["A red car on a quiet street", "a dog"]
    here = nd.minhash_signatures(caps, 64, 2)
    code = ("import sys, numpy as np; from factory.curate.near_dup import minhash_signatures as m; "
            "np.save(sys.stdout.buffer, m(['A red car on a quiet street', 'a dog'], 64, 2))")
    env = dict(os.environ, PYTHONHASHSEED="12345", PYTHONPATH=str(nd.__file__).rsplit("/factory/", 1)[0])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, env=env, check=True).stdout
    import io

    assert np.array_equal(np.load(io.BytesIO(out)), here)


def test_connected_groups_match_a_reference_union_find():
    rng = np.random.default_rng(0)
    n = 300
    pairs = rng.integers(0, n, size=(250, 2))
    parent = list(range(n))

    def find(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = find(a), find(b)
        parent[max(ra, rb)] = min(ra, rb)
    members = {}
    for i in range(n):
        members.setdefault(find(i), []).append(i)
    expected = np.empty(n, dtype=np.int64)
    for group in members.values():
        expected[group] = min(group)
    assert np.array_equal(nd.connected_groups(n, pairs), expected)


def test_smallest_id_is_kept_numbers_before_strings():
    base = "A weathered lighthouse near a busy harbor with a misty atmosphere and gulls overhead"
    caps = [base + " today", base.upper(), base + " now", base, "Something else entirely about a cat"]
    ids = ["b7", "10", "9", "a10", "3"]
    out = nd.find_near_duplicates(keys_table(caps, ids), threshold=0.8)
    rejected = dict(zip(out.column(S.POS).to_pylist(), out.column(S.DETAIL).to_pylist()))
    # Group {b7, 10, 9, a10}: "9" < "10" numerically (as strings "10" < "9"), numbers before "a10", "b7".
    assert rejected == {0: "near duplicate of id 9", 1: "near duplicate of id 9", 3: "near duplicate of id 9"}
    assert set(out.column(S.REASON).to_pylist()) == {S.R_NEAR_DUP}


@pytest.mark.parametrize("kind", NEAR_KINDS)
def test_each_edit_kind_is_caught(kind):
    rng = random.Random(kind)
    originals = [distinct_caption(rng) for _ in range(40)]
    variants = [near_variant(c, kind, rng) for c in originals]
    out = nd.find_near_duplicates(keys_table(originals + variants), threshold=0.8)
    caught = set(out.column(S.POS).to_pylist())
    assert caught <= set(range(40, 80))  # never an original: they have the smaller ids
    assert len(caught) >= 38, f"{kind}: caught {len(caught)} of 40"


@pytest.mark.parametrize("distinct, least_precision", [(distinct_caption, 0.98), (web_caption, 1.0)])
def test_precision_and_recall_on_planted_pool(capsys, distinct, least_precision):
    """On the slot-vocabulary pool a few originals are near duplicates of each other by chance; the
    web-like pool (scale benchmarks) has no near duplicates but the planted ones."""
    captions, truth = planted_pool(6000, near_fraction=0.12, exact_fraction=0.03, seed=7, distinct=distinct)
    ids = [str(i + 1) for i in range(len(captions))]
    base = pa.table({S.ID: ids, S.CAPTION: captions, S.POS: pa.array(range(len(captions)), pa.int64()),
                     S.REASON: pa.array([None] * len(captions), pa.string())})
    keys = dedup_keys(base).append_column(S.MINHASH, nd.signature_column(captions, 128, 1))
    exact = find_duplicates(keys)
    near = nd.find_near_duplicates(nd.without_rejected(keys, exact), threshold=0.8, bands=16)
    found = set(near.column(S.POS).to_pylist())
    assert not found & set(exact.column(S.POS).to_pylist())  # exact dedup's rows are not judged twice
    # Ground truth: the planted edits, less those exact dedup already took (a re-cased copy is exact).
    planted = set(truth) - set(exact.column(S.POS).to_pylist())
    tp = len(found & planted)
    precision, recall = tp / len(found), tp / len(planted)
    with capsys.disabled():
        print(f"\nnear-dup on {len(captions)} {distinct.__name__} captions: {len(planted)} planted, {len(found)} found, "
              f"precision {precision:.3f}, recall {recall:.3f}")
    assert precision >= least_precision and recall >= 0.95
    # Each caught duplicate names the keeper of its group: a kept caption whose id is at most its
    # original's (groups are transitive, so two similar originals may share one keeper).
    details = dict(zip(near.column(S.POS).to_pylist(), near.column(S.DETAIL).to_pylist()))
    kept = set(range(len(captions))) - found - set(exact.column(S.POS).to_pylist())
    first = {}
    for i, c in enumerate(captions):
        first.setdefault(c, i)  # an original planted twice survives exact dedup as its first copy
    named_original = 0
    for pos in found & planted:
        keeper = int(details[pos].rsplit(" ", 1)[1]) - 1
        assert keeper in kept and keeper <= first[captions[truth[pos]]]
        named_original += keeper == first[captions[truth[pos]]]
    assert named_original >= 0.98 * tp


def test_result_does_not_depend_on_row_order():
    """Big LSH buckets are chained in pos order, so blocks arriving in another order change nothing."""
    rng = random.Random(5)
    words = ["red", "blue", "car", "street", "night", "a", "the", "on", "with", "light", "neon", "quiet"]
    caps = [" ".join(rng.choice(words) for _ in range(8)) for _ in range(400)]  # many similar captions: big buckets
    keys = keys_table(caps)
    ref = nd.find_near_duplicates(keys, threshold=0.7, max_bucket_span=4).sort_by(S.POS)
    assert ref.num_rows > 50
    perm = np.random.default_rng(1).permutation(keys.num_rows)
    assert nd.find_near_duplicates(keys.take(pa.array(perm)), threshold=0.7, max_bucket_span=4).sort_by(S.POS).equals(ref)


def test_bad_parameters_are_one_line_errors():
    with pytest.raises(ValueError, match="bands=5 must divide curate.near_dup.num_perm=128"):
        nd.NearDedup(threshold=0.8, num_perm=128, bands=5, shingle_size=1)
    with pytest.raises(ValueError, match="threshold"):
        nd.NearDedup(threshold=1.5, num_perm=128, bands=16, shingle_size=1)
