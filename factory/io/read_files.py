"""The reading stage: input files → caption rows (schema.CAPTION_ROW), one task per file, a batch
of rows at a time (factory/io/read.py streams each file)."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import ClassVar, Iterator

import pyarrow as pa

from factory import schema as S
from factory.errors import InputError
from factory.io.read import iter_caption_batches
from factory.io.redact import redact
from factory.stage import Stage

log = logging.getLogger(__name__)

# Seconds to wait before each new try at a file that the pre-pass read but the generation pass
# cannot (an object store's hiccup, say).
REREAD_WAIT_S = (2.0, 10.0)


def file_list(paths: list[str]) -> pa.Table:
    """What ReadFiles reads: one row per input file, with its index (the high bits of `pos`)."""
    return pa.table({"path": paths, "file_index": list(range(len(paths)))})


@dataclass
class ReadFiles(Stage):
    """Stage: rows of (path, file_index) → the caption rows of each file, in batches.

    In the pre-pass (`again` false) an unreadable file becomes one row that the driver reports in
    one line. The generation pass (`again`) reads files the pre-pass could read: there a failure
    must stop the run (to be resumed), since a row would silently drop every caption of the file;
    it is tried again first, going on after the rows it already passed on.
    """

    name: ClassVar[str] = "read"
    default_batch_rows: ClassVar[int] = 1
    # What the reader itself rejects a row for (an unreadable file stops the run instead).
    reasons: ClassVar[tuple[str, ...]] = (S.R_MALFORMED, S.R_TOO_LARGE, S.R_NO_CAPTION, S.R_NOT_STRING, S.R_BLANK)

    again: bool = False

    def process(self, batch: pa.Table) -> Iterator[pa.Table]:
        for path, index in zip(batch.column("path").to_pylist(), batch.column("file_index").to_pylist()):
            yield from self.read(path, index)

    def read(self, path: str, index: int) -> Iterator[pa.Table]:
        passed = 0  # rows of this file passed on: a new try skips them
        for wait in (*REREAD_WAIT_S, None) if self.again else (None,):
            try:
                seen = 0
                for table in iter_caption_batches(path, index):
                    fresh = table.slice(min(table.num_rows, max(0, passed - seen)))
                    seen += table.num_rows
                    if fresh.num_rows:
                        passed += fresh.num_rows
                        yield fresh
                return
            except InputError as e:
                if not self.again:
                    yield pa.Table.from_pylist([{S.SOURCE: redact(path), S.POS: index << 32, S.RAW: "", S.REASON: S.R_UNREADABLE,
                                                 S.DETAIL: str(e)}], schema=S.CAPTION_ROW)
                    return
                if wait is None:
                    raise InputError(f"{e} (the pre-pass of this run read it; the run stops here, and running it again resumes)") from e
                log.warning("%s: reading again in %.0f s", e, wait)
                time.sleep(wait)
