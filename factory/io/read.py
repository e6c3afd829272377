"""Caption readers: files of any supported format → caption rows, each valid or with a reason.

Nothing is dropped here: a malformed line, a row without a caption or with a non-string or
blank one comes out with `reason` set, so that it lands in rejects/ and not on the floor.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math

import pyarrow as pa
import pyarrow.parquet as pq

from factory import schema as S
from factory.errors import InputError
from factory.io import files

FORMATS = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".csv": "csv", ".txt": "txt"}


COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".bz2": "bz2"}  # pyarrow's codec names


def compression(path: str) -> str | None:
    lower = path.lower()
    return next((codec for ext, codec in COMPRESSIONS.items() if lower.endswith(ext)), None)


def input_format(path: str) -> str:
    lower = path.lower()
    if codec := compression(path):
        lower = lower[: lower.rindex(".")]  # captions.jsonl.gz: JSON Lines
    for ext, fmt in FORMATS.items():
        if lower.endswith(ext):
            return fmt
    known = ", ".join(sorted(FORMATS))
    raise InputError(f"unknown input format {path!r}: expected one of {known}"
                     + (f", optionally compressed ({', '.join(COMPRESSIONS)})" if not codec else ""))


def list_inputs(pattern: str | None) -> list[str]:
    if not pattern:
        raise InputError("no input given: pass input=PATH (a file, a folder or a glob)")
    paths = files.expand_input(pattern)
    if not paths:
        raise InputError(f"input not found: no file matches {pattern!r}")
    for p in paths:
        input_format(p)
    return paths


def caption_id(caption: str) -> str:
    """Id of a row that has none: stable across runs and machines."""
    return "h" + hashlib.blake2b(caption.encode("utf-8"), digest_size=8).hexdigest()


def _id_text(value) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    text = str(value)
    return text if text.strip() else None  # an empty CSV cell is no id: two would be "duplicates"


class _Rows:
    """Accumulates caption rows in the reader's output shape."""

    def __init__(self, path: str, file_index: int):
        self.path, self.file_index = path, file_index
        self.cols: dict[str, list] = {f.name: [] for f in S.CAPTION_ROW}
        self.first_keys: list[str] | None = None  # of the first object read
        self.with_caption = 0  # objects that have a caption key at all

    def add(self, row: int, raw: str, id_=None, caption=None, reason=None, detail=None) -> None:
        c = self.cols
        c[S.ID].append(id_)
        c[S.CAPTION].append(caption)
        c[S.SOURCE].append(f"{self.path}:{row + 1}")
        c[S.POS].append((self.file_index << 32) | row)
        c[S.RAW].append(raw)
        c[S.REASON].append(reason)
        c[S.DETAIL].append(detail)

    def add_record(self, row: int, record, raw: str | None = None) -> None:
        """One parsed record: validates the caption and derives a missing id."""
        if raw is None:
            raw = json.dumps(record, ensure_ascii=False, default=str)
        if not isinstance(record, dict):
            return self.add(row, raw, reason=S.R_MALFORMED, detail=f"expected an object, got {type(record).__name__}")
        if self.first_keys is None:
            self.first_keys = [str(k) for k in record]
        self.with_caption += S.CAPTION in record
        id_ = _id_text(record.get(S.ID))
        cap = record.get(S.CAPTION)
        if cap is None or (isinstance(cap, float) and math.isnan(cap)):
            return self.add(row, raw, id_, reason=S.R_NO_CAPTION)
        if not isinstance(cap, str):
            return self.add(row, raw, id_, reason=S.R_NOT_STRING, detail=type(cap).__name__)
        if not cap.strip():
            return self.add(row, raw, id_, reason=S.R_BLANK)
        self.add(row, raw, id_ if id_ is not None else caption_id(cap), cap)

    def table(self) -> pa.Table:
        if self.first_keys is not None and not self.with_caption:
            # A whole file without the column is a mistake (a `text` column, a wrong file), not bad rows.
            raise InputError(f"{self.path} has no '{S.CAPTION}' field in any row (the first has {', '.join(self.first_keys) or 'none'}); "
                             f"expected '{S.CAPTION}' and optionally '{S.ID}'")
        return pa.Table.from_pydict(self.cols, schema=S.CAPTION_ROW)


def lines(text: str) -> list[str]:
    """Lines split at \\n (and \\r\\n) only: str.splitlines also splits at U+2028, U+0085 and others,
    which JSON allows raw inside a string."""
    return [ln[:-1] if ln.endswith("\r") else ln for ln in text.split("\n")]


def read_caption_file(path: str, file_index: int) -> pa.Table:
    """Parse one input file into caption rows (schema.CAPTION_ROW). Raises InputError if unreadable."""
    fmt = input_format(path)
    out = _Rows(path, file_index)
    try:
        data = files.read_bytes(path)
    except Exception as e:  # permissions, vanished file, network
        raise InputError(f"cannot read {path}: {e}") from None
    if codec := compression(path):
        try:
            data = pa.input_stream(pa.py_buffer(data), compression=codec).read()
        except Exception as e:  # noqa: BLE001 (a truncated or mislabelled file)
            raise InputError(f"cannot decompress {path} as {codec}: {e}") from None
    if fmt == "parquet":
        try:
            table = pq.read_table(io.BytesIO(data))
        except Exception as e:
            raise InputError(f"cannot read {path} as Parquet: {e}") from None
        for i, rec in enumerate(table.to_pylist()):
            out.add_record(i, rec)
        return out.table()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise InputError(f"{path} is not UTF-8 text: {e}") from None
    if fmt == "json":
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); use .jsonl for one object a line") from None
        if isinstance(records, dict):
            records = [records]
        if not isinstance(records, list):
            raise InputError(f"{path}: expected a JSON array of objects, got {type(records).__name__}")
        for i, rec in enumerate(records):
            out.add_record(i, rec)
    elif fmt == "jsonl":
        for i, line in enumerate(lines(text)):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                out.add(i, line, reason=S.R_MALFORMED, detail=f"invalid JSON: {e.msg}")
                continue
            out.add_record(i, rec, raw=line)
    elif fmt == "csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        for i, rec in enumerate(reader):
            if None in rec:  # more fields than the header names
                out.add(i + 1, json.dumps(rec, default=str), reason=S.R_MALFORMED, detail="more fields than the header")
                continue
            out.add_record(i + 1, {k: v for k, v in rec.items() if v is not None}, raw=None)
    elif fmt == "txt":
        for i, line in enumerate(lines(text)):
            if not line.strip():
                continue  # blank lines separate nothing in a caption list
            out.add_record(i, {S.CAPTION: line.strip()}, raw=line)
    return out.table()
