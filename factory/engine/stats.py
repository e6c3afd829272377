"""Ray Data's own figures per operator of an executed dataset."""
from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def operator_stats(ds) -> list[dict]:
    """Ray Data's figures per operator of an executed dataset: rows in and out, span and task seconds."""
    try:
        summary = ds.get_stats_summary()
    except Exception as e:  # a DeveloperAPI: a run must not fail over its statistics
        log.warning("no Ray Data statistics: %s", e)
        return []
    ops, todo = [], [summary]
    while todo:
        s = todo.pop()
        for op in s.operators_stats:
            start, end = op.earliest_start_time, op.latest_end_time
            ops.append({
                "operator": op.operator_name,
                "rows_in": op.total_input_num_rows,
                "rows_out": int(op.output_num_rows.sum) if op.output_num_rows else None,
                "span_s": round(end - start, 3) if start is not None and end is not None else None,
                "task_s": round(op.wall_time.sum, 3) if op.wall_time else None,
                "start": start,
            })
        todo.extend(s.parents)
    ops.sort(key=lambda o: (o["start"] is None, o["start"] or 0))
    for o in ops:
        o.pop("start")
    return ops
