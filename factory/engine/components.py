"""Connected components of a graph too big for one machine, each node pointed at its component's minimum.

Nodes are binary values (keeper keys: the minimum of a group is its keeper); edges are rows (u, v)
with u > v. First each partition contracts the edges it holds (a local union-find: every node to
its local minimum), which leaves most near-duplicate groups as finished stars. When the edges left
fit one worker (`local_max_edges`), one partition holds them all and that contraction is exact.
Otherwise the large-star / small-star rounds of Kiveris et al. ("Connected Components in MapReduce
and Beyond", SoCC 2014) run, each a keyed shuffle of the edges (a large-star and a small-star per
execution), until an iteration changes nothing: then every component is a star around its
minimum. No edge list reaches the driver; it reads back one change count per partition and iteration.
"""
from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from ray.data import Dataset

from factory.curate.near_dup import connected_groups
from factory.engine.shuffle import column_sum, materialized, per_block, per_key

U, V, A, B, CHANGED = "u", "v", "a", "b", "changed"
EDGES = pa.schema([pa.field(U, pa.binary()), pa.field(V, pa.binary())])
log = logging.getLogger(__name__)
MAX_ROUNDS = 200  # O(log^2 n) rounds are proven; this only guards against a bug looping forever


def edges_table(u: pa.Array, v: pa.Array) -> pa.Table:
    """Edges as rows (u, v) with u > v; self-loops dropped."""
    hi = pc.if_else(pc.greater(u, v), u, v)
    lo = pc.if_else(pc.greater(u, v), v, u)
    keep = pc.not_equal(hi, lo)
    return pa.table({U: pc.filter(hi, keep), V: pc.filter(lo, keep)}, schema=EDGES)


def _ranked(first: pa.Array, second: pa.Array) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """The distinct nodes sorted, and each endpoint's index in them (so index order is node order)."""
    nodes = pc.unique(pa.concat_arrays([first, second]))
    nodes = nodes.take(pc.sort_indices(nodes))
    return nodes, pc.index_in(first, value_set=nodes).to_numpy(), pc.index_in(second, value_set=nodes).to_numpy()


def distinct_pairs(i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct (i, j) pairs, sorted."""
    if len(i) == 0:
        return i, j
    order = np.lexsort((j, i))
    i, j = i[order], j[order]
    new = np.ones(len(i), dtype=bool)
    new[1:] = (i[1:] != i[:-1]) | (j[1:] != j[:-1])
    return i[new], j[new]


def _out(nodes: pa.Array, u: np.ndarray, v: np.ndarray, changed: int | None = None) -> pa.Table:
    u, v = distinct_pairs(u, v)
    t = pa.table({U: nodes.take(pa.array(u, pa.int64())), V: nodes.take(pa.array(v, pa.int64()))}, schema=EDGES)
    if changed is None:
        return t
    counts = np.zeros(len(u), dtype=np.int64)
    counts[:1] = changed  # the partition's count rides on its first edge (a change always emits one)
    return t.append_column(CHANGED, pa.array(counts))


def contract(part: pa.Table) -> pa.Table:
    """The edges of one partition as stars: every node to the smallest node connected to it here."""
    part = part.combine_chunks()
    if part.num_rows == 0:
        return EDGES.empty_table()
    nodes, ui, vi = _ranked(part.column(U).chunk(0), part.column(V).chunk(0))
    labels = connected_groups(len(nodes), np.stack([ui, vi], axis=1))
    leaf = np.flatnonzero(labels != np.arange(len(nodes)))
    return _out(nodes, leaf, labels[leaf])


def both_ways(block: pa.Table) -> pa.Table:
    return pa.table({A: pa.concat_arrays([block.column(U).combine_chunks(), block.column(V).combine_chunks()]),
                     B: pa.concat_arrays([block.column(V).combine_chunks(), block.column(U).combine_chunks()])})


def _star_input(part: pa.Table, x: str, y: str):
    """(nodes, x ranks, y ranks, each x's smallest of itself and its neighbours) over a partition's
    distinct edges; None when it has none."""
    part = part.combine_chunks()
    if part.num_rows == 0:
        return None
    nodes, xi, yi = _ranked(part.column(x).chunk(0), part.column(y).chunk(0))
    xi, yi = distinct_pairs(xi, yi)
    m = np.arange(len(nodes))
    np.minimum.at(m, xi, yi)
    return nodes, xi, yi, m


def _no_edges() -> pa.Table:
    return EDGES.empty_table().append_column(CHANGED, pa.array([], pa.int64()))


def large_star(part: pa.Table) -> pa.Table:
    """Per node a (all its edges, both ways, are here): its larger neighbours to the minimum of a and its neighbours."""
    if (star := _star_input(part, A, B)) is None:
        return _no_edges()
    nodes, ai, bi, m = star
    up = bi > ai
    return _out(nodes, bi[up], m[ai[up]], int((m[ai[up]] != ai[up]).sum()))


def small_star(part: pa.Table) -> pa.Table:
    """Per node u (its edges to smaller nodes are here): u and those nodes to the smallest of them."""
    if (star := _star_input(part, U, V)) is None:
        return _no_edges()
    nodes, ui, vi, m = star
    hi = np.unique(ui)
    moved = vi != m[ui]
    u = np.concatenate([hi, vi[moved]])
    v = np.concatenate([m[hi], m[ui[moved]]])
    return _out(nodes, u, v, int((np.bincount(ui, minlength=len(nodes)) >= 2).sum()))


def small_star_after(part: pa.Table) -> pa.Table:
    """small_star of the large-star output in `part`, whose changes it adds to its own: one count for both steps."""
    out = small_star(part.select([U, V]))
    before = int(pc.sum(part.column(CHANGED)).as_py() or 0) if part.num_rows else 0
    if out.num_rows:  # edges in, edges out
        counts = out.column(CHANGED).to_numpy().copy()
        counts[0] += before
        out = out.set_column(out.schema.get_field_index(CHANGED), CHANGED, pa.array(counts))
    return out


def _iteration(edges: Dataset, partitions: int) -> tuple[Dataset, int]:
    """A large-star then a small-star round, in one execution; their changes, summed."""
    large = per_key(per_block(edges, both_ways), [A], large_star, partitions)
    out = materialized(per_key(large, [U], small_star_after, partitions))
    return out, column_sum(out, CHANGED)


def star_edges(edges: Dataset, partitions: int, local_max_edges: int = 2_000_000) -> Dataset:
    """(u, v) for every node u that is not its component's minimum v, each u once.

    `edges`: rows (u, v), u > v (see `edges_table`), duplicates allowed.
    """
    edges = materialized(edges)
    if edges.count() <= local_max_edges:
        return per_key(edges, [U], contract, 1)
    edges = materialized(per_key(edges, [U], contract, partitions))
    for rounds in range(1, MAX_ROUNDS + 1):
        edges, changes = _iteration(edges, partitions)
        log.debug("connected components: iteration %d, %d changes", rounds, changes)
        if changes == 0:
            return edges.select_columns([U, V])
    raise RuntimeError(f"connected components did not converge in {MAX_ROUNDS} iterations")

