"""Reading candidates/ files of any age: a column a file lacks reads as nulls, and the generator of
samples made before that column existed (by a run of one generator) is named."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from factory import schema as S
from factory.io import files


def with_generator(table: pa.Table, legacy: str | None) -> pa.Table:
    """`table` whose null generators (samples made before the column existed, by a run of one
    generator) name that generator, `legacy`."""
    if S.GENERATOR not in table.column_names or legacy is None:
        return table
    i = table.schema.get_field_index(S.GENERATOR)
    return table.set_column(i, S.GENERATOR, pc.fill_null(table.column(i), legacy))


def read_candidates(paths: list[str], columns: list[str], legacy: str | None = None, filter=None) -> pa.Table:
    """`columns` of the candidates files `paths` (any age: a column an older file lacks is null),
    their generator filled in for `legacy`."""
    return with_generator(files.read_parquet_files(paths, columns, filter, schema=S.CANDIDATES), legacy)
