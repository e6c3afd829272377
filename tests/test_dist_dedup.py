"""Distributed duplicate removal: the same rows rejected, with the same details, as the driver's
`prepass.find_losers` on the same keys and deduplicators; and its parts against references of their own."""
from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest

from factory import schema as S
from factory.curate import near_dup as nd
from factory.engine.components import EDGES, contract, edges_table, star_edges
from factory.curate.dedup import ExactDedup, dedup_keys
from factory.curate.near_dup import NearDedup
from factory.prepass import find_losers
from factory.stage import Deduplicator
from factory.engine import dist_near as dn
from factory.engine.dist_dedup import duplicate_losers, prepare, unmarked
from factory.curate.keeper_keys import key_pos_id, keeper_keys
from tests.fixtures.planted import planted_pool

NEAR = {"enabled": True, "threshold": 0.8, "bands": 16, "num_perm": 128, "shingle_size": 1, "max_bucket_span": 32}


def dedups(near: dict = NEAR, **exact) -> list[Deduplicator]:
    """The run's deduplicators, in the default config order."""
    return [ExactDedup(**exact), NearDedup(**near)]


def pool_keys(captions: list[str], ids: list[str], seed: int = 0) -> pa.Table:
    """The pre-pass keys of a pool (id, pos, norm_hash, minhash), rows in a shuffled order."""
    n = len(captions)
    base = pa.table({S.ID: pa.array(ids, pa.string()), S.CAPTION: captions, S.POS: pa.array(range(n), pa.int64()),
                     S.REASON: pa.array([None] * n, pa.string())})
    keys = dedup_keys(base).append_column(S.MINHASH, nd.signature_column(captions, 128, 1))
    return keys.take(pa.array(np.random.default_rng(seed).permutation(n)))


def as_dataset(ray, table: pa.Table, blocks: int = 4):
    step = -(-table.num_rows // blocks)
    return ray.data.from_arrow([table.slice(i, step) for i in range(0, table.num_rows, step)])


def rows(t: pa.Table) -> list[tuple]:
    return sorted(zip(*(t.column(c).to_pylist() for c in (S.POS, S.REASON, S.DETAIL))))


def collect(ray, ds) -> pa.Table:
    parts = [t for t in ray.get(ds.to_arrow_refs()) if t.num_rows]
    return pa.concat_tables(parts) if parts else pa.table({S.POS: pa.array([], pa.int64()), S.REASON: [], S.DETAIL: []})


def mixed_ids(n: int, rng: random.Random) -> list[str]:
    """Integer ids (signs, leading zeros, beyond int64), strings, and repeats of both."""
    out = []
    for i in range(n):
        r = rng.random()
        if r < 0.3:
            out.append(str(rng.randint(-50, 10**20)))
        elif r < 0.4:
            out.append(rng.choice(["0", "-0", "+7", "007", "7", "-12", "12", "99999999999999999999999"]))
        elif r < 0.8:
            out.append(rng.choice(["a", "b", "A", "é", "a\x00", "a\x00b", "", "10a", "x"]) + str(rng.randint(0, n)))
        else:
            out.append(f"id{i}")
    return out


def test_keeper_keys_sort_as_id_order_and_read_back():
    rng = random.Random(1)
    ids = mixed_ids(3000, rng) + ["", "\x00", "a", "a\x00", "ab", "-0", "0", "+0", "-1", "-10", "-9", "9", "10"]
    pos = np.array(rng.sample(range(-10**12, 10**12), len(ids)), dtype=np.int64)
    keys = keeper_keys(pa.array(ids, pa.string()), pos)
    by_key = sorted(range(len(ids)), key=lambda r: keys[r].as_py())
    rank = nd.id_order(ids, pos)
    assert [int(rank[r]) for r in by_key] == list(range(len(ids)))
    assert [key_pos_id(k) for k in keys.to_pylist()] == list(zip(pos.tolist(), ids))
    assert key_pos_id(keeper_keys(pa.array([None], pa.string()), np.array([5]))[0].as_py()) == (5, None)


def test_stars_match_a_reference_union_find(ray_local):
    """Chains longer than any round's reach force many large-star / small-star rounds."""
    rng = np.random.default_rng(2)
    n = 80
    names = pa.array([f"n{rng.integers(10**9):09d}-{i}".encode() for i in range(n)], pa.binary())
    chain = np.stack([np.arange(n - 1), np.arange(1, n)], axis=1)[rng.random(n - 1) < 0.97]  # long paths
    extra = rng.integers(0, n, size=(60, 2))
    pairs = np.concatenate([chain, extra])
    edges = edges_table(names.take(pa.array(pairs[:, 0])), names.take(pa.array(pairs[:, 1])))
    order = np.argsort(np.array(names.to_pylist(), dtype=object))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    labels = nd.connected_groups(n, rank[pairs])  # reference: smallest rank of each group
    expected = {names[int(order[r])].as_py(): names[int(order[labels[r]])].as_py() for r in range(n) if labels[r] != r}
    for local_max in (0, 10**6):  # distributed rounds, then one worker
        out = collect(ray_local, star_edges(as_dataset(ray_local, edges, 3), partitions=3, local_max_edges=local_max))
        assert out.schema == EDGES
        assert dict(zip(out.column("u").to_pylist(), out.column("v").to_pylist())) == expected
        assert out.num_rows == len(expected)  # each node once


def test_contract_of_one_partition_is_exact():
    a, b, c, d = (pa.array([x], pa.binary()) for x in (b"a", b"b", b"c", b"d"))
    edges = pa.concat_tables([edges_table(c, d), edges_table(b, d), edges_table(a, c)])
    out = contract(edges)
    assert sorted(zip(out.column("u").to_pylist(), out.column("v").to_pylist())) == [(b"b", b"a"), (b"c", b"a"), (b"d", b"a")]


def test_planted_pool_equals_the_driver(ray_local):
    """Groups joined by the distributed rounds (local_max_edges=0), not by one worker."""
    captions, _ = planted_pool(3000, near_fraction=0.15, exact_fraction=0.04, seed=11)
    ids = [str(i % 2950 + 1) for i in range(len(captions))]  # 50 repeated ids too
    keys = pool_keys(captions, ids)
    ref = find_losers(keys, dedups())
    out = collect(ray_local, duplicate_losers(as_dataset(ray_local, keys, 3), dedups(), partitions=2, local_max_edges=0))
    assert {r for r in ref.column(S.REASON).to_pylist()} == {S.R_DUP_ID, S.R_DUP_CAPTION, S.R_NEAR_DUP}
    assert rows(out) == rows(ref)


def big_bucket_pool(rng: random.Random) -> tuple[list[str], list[str]]:
    """Captions from a tiny vocabulary (LSH buckets far bigger than max_bucket_span), exact copies,
    and planted near duplicates, under mixed ids."""
    words = ["red", "blue", "car", "street", "night", "a", "the", "on", "with", "light", "neon", "quiet"]
    caps = [" ".join(rng.choice(words) for _ in range(8)) for _ in range(500)]
    planted, _ = planted_pool(700, near_fraction=0.3, exact_fraction=0.1, seed=rng.randint(0, 99))
    caps = caps + planted + [rng.choice(caps) for _ in range(100)]
    rng.shuffle(caps)
    return caps, mixed_ids(len(caps), rng)


def test_big_buckets_mixed_ids_equal_the_driver(ray_local):
    caps, ids = big_bucket_pool(random.Random(4))
    keys = pool_keys(caps, ids, seed=4)
    near = dict(NEAR, threshold=0.7, max_bucket_span=4)
    ref = find_losers(keys, dedups(near))
    assert ref.num_rows > 400
    out = collect(ray_local, duplicate_losers(as_dataset(ray_local, keys, 3), dedups(near), partitions=2))
    assert rows(out) == rows(ref)


@pytest.mark.parametrize("exact,near", [({"captions": False}, NEAR), ({}, {"enabled": False}), ({"enabled": False}, NEAR)])
def test_each_switch_equals_the_driver(ray_local, exact, near):
    captions, _ = planted_pool(600, near_fraction=0.2, exact_fraction=0.1, seed=5)
    keys = pool_keys(captions, [str(i % 580) for i in range(600)], seed=1)
    ref = find_losers(keys, dedups(near, **exact))
    out = collect(ray_local, duplicate_losers(as_dataset(ray_local, keys, 2), dedups(near, **exact), partitions=2))
    assert rows(out) == rows(ref)


def test_empty_and_single_row_inputs(ray_local):
    keys = pool_keys(["one caption only"], ["1"])
    assert collect(ray_local, duplicate_losers(as_dataset(ray_local, keys, 1), dedups(), partitions=2)).num_rows == 0
    empty = keys.slice(0, 0)
    assert collect(ray_local, duplicate_losers(ray_local.data.from_arrow(empty), dedups(), partitions=2)).num_rows == 0


class NoShuffle(Deduplicator):
    name = "no_shuffle"


def test_unsupported_plans_are_one_line(ray_local):
    keys = pool_keys(["a b c", "a b c d"], ["1", "2"])
    with pytest.raises(ValueError, match="no_shuffle has no distributed form .*ray.local_scan_mb"):
        duplicate_losers(as_dataset(ray_local, keys, 1), [ExactDedup(), NoShuffle()])
    with pytest.raises(ValueError, match="exact_dedup comes after a near-duplicate step"):
        duplicate_losers(as_dataset(ray_local, keys, 1), [NearDedup(**NEAR), ExactDedup()])


def test_band_keys_equal_the_plain_sum():
    """near_dup.band_keys sums a band's products column by column; the keys are those of a plain sum."""
    sig = np.random.default_rng(3).integers(0, 2**32, size=(500, 128), dtype=np.uint32)
    mult = np.random.default_rng(nd._SEED + 1).integers(1, 2**63, size=8, dtype=np.uint64) | np.uint64(1)
    with np.errstate(over="ignore"):
        plain = (sig.reshape(500, 16, 8).astype(np.uint64) * mult).sum(axis=2, dtype=np.uint64).view(np.int64)
    assert np.array_equal(nd.band_keys(sig, 16), plain)


def test_benchmark_checks_itself_against_the_driver(ray_local):
    from benchmarks import dedup_scale

    assert dedup_scale.main(["--captions", "20000", "--check"]) > 0  # exits if the rejected rows differ


def test_bucket_pairs_are_the_drivers_candidate_pairs():
    """Screened at threshold 0, the buckets' pairs are exactly near_dup.candidate_pairs' (as pos),
    big buckets chained `span` rows deep, however the buckets fall into partitions."""
    rng = random.Random(8)
    words = ["red", "blue", "car", "street", "night", "a", "the", "on", "with", "light"]
    caps = [" ".join(rng.choice(words) for _ in range(6)) for _ in range(600)]
    keys = pool_keys(caps, [str(i) for i in range(len(caps))], seed=8)
    sig = nd.signature_column(caps, 128, 1).flatten().to_numpy().reshape(len(caps), 128)  # in pos order
    rows = unmarked(prepare(keys, bands=16))
    members = dn.bucket_members(dn.explode(rows))
    members = dn.attach_sketch(pa.concat_tables([dn.sketch_rows(keys), members]))
    sizes = []
    for span in (3, 32):
        expected = {tuple(p) for p in nd.candidate_pairs(nd.band_keys(sig, 16), span).tolist()}
        sizes.append(len(expected))
        part = np.abs(members.column(dn.BKEY).to_numpy()) % 3  # three partitions by band key
        ends = pa.concat_tables([dn.bucket_candidates(members.filter(pa.array(part == p)), span, 0.0, 128) for p in range(3)])
        pos, other = ends.column(S.POS).to_numpy(), ends.column(dn.OTHER).to_numpy()
        assert {(int(a), int(b)) for a, b in zip(pos, other) if a < b} == expected
    assert len(caps) < sizes[0] < sizes[1]  # buckets far bigger than 3 + 1 rows


def test_sketches_never_agree_less_than_signatures():
    rng = np.random.default_rng(9)
    a = rng.integers(0, 2**32, size=(2000, 127), dtype=np.uint32)  # an odd width: a padding nibble
    b = np.where(rng.random(a.shape) < rng.random((2000, 1)), a, rng.integers(0, 2**32, size=a.shape, dtype=np.uint32))
    full = (a == b).mean(axis=1)
    screen = dn.sketch_agreement(dn.sketch(a).view(np.uint64), dn.sketch(b).view(np.uint64), 127)
    assert (screen >= full).all()
    assert np.mean(screen - full) < 0.07  # 4 bits: 1/16 of the differing values agree by chance
