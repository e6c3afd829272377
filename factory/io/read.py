"""Caption readers: files of any supported format → caption rows, each valid or with a reason.

Nothing is dropped here: a malformed line, a row without a caption or with a non-string or
blank one comes out with `reason` set, so that it lands in rejects/ and not on the floor.

Files stream: they are read a piece at a time (decompressed on the way) and come out as batches of
rows, so memory stays bounded whatever a file's size. One row never stops a file: a row too large,
nested too deep or not UTF-8 is a reject like the others (factory/io/textstream.py).
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from factory import schema as S
from factory.errors import InputError
from factory.io import files
from factory.io.redact import redact
from factory.io.textstream import (
    ByteLines,
    CsvLines,
    JsonArray,
    JsonFileError,
    RowProblem,
    decode,
    shown,
    strip_end,
)

FORMATS = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".csv": "csv", ".txt": "txt"}

# Rows the reader rejects as row_too_large: a line, CSV record or JSON value of more bytes than
# MAX_ROW_BYTES (read to its end, not kept), a caption or id of more characters than MAX_FIELD_CHARS
# (no text encoder reads past a few hundred tokens; the csv module's own field limit is 128 KiB).
MAX_ROW_BYTES = 1 << 20
MAX_FIELD_CHARS = 1 << 16
RAW_CHARS = 10_000  # what the `raw` column keeps of a row (rejects/ shows it): its start beyond this
ROWS_PER_BATCH = 8192  # rows of one batch the reader yields ...
BATCH_BYTES = 32 << 20  # ... or fewer, once their text comes to this


COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".bz2": "bz2"}  # pyarrow's codec names


def compression(path: str) -> str | None:
    lower = files.path_part(path).lower()
    return next((codec for ext, codec in COMPRESSIONS.items() if lower.endswith(ext)), None)


def input_format(path: str) -> str:
    """The format of a file by its name (a URI's path part: not its ?query)."""
    lower = files.path_part(path).lower()
    if codec := compression(path):
        lower = lower[: lower.rindex(".")]  # captions.jsonl.gz: JSON Lines
    for ext, fmt in FORMATS.items():
        if lower.endswith(ext):
            return fmt
    known = ", ".join(sorted(FORMATS))
    raise InputError(f"unknown input format {redact(path)!r}: expected one of {known}"
                     + (f", optionally compressed ({', '.join(COMPRESSIONS)})" if not codec else ""))


def list_inputs(pattern: str | None, exclude: list[str] | None = None) -> list[str]:
    """The input files `pattern` names, leaving out those below a folder in `exclude` (the run's
    own output, where it lies inside an input folder)."""
    if not pattern:
        raise InputError("no input given: pass input=PATH (a file, a folder or a glob)")
    paths = files.expand_input(pattern, exclude)  # ValueError: a URI pyarrow cannot parse (said without its credentials)
    if not paths:
        raise InputError(f"input not found: no file matches {redact(pattern)!r}")
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


def _raw_json(record) -> str:
    try:
        return json.dumps(record, ensure_ascii=False, default=str)
    except (RecursionError, ValueError):
        return repr(record)[:RAW_CHARS]


class _Rows:
    """Accumulates caption rows in the reader's output shape, a batch at a time."""

    def __init__(self, path: str, file_index: int):
        self.path, self.file_index = redact(path), file_index  # the path as rows and errors show it
        self.first_keys: list[str] | None = None  # of the first object read
        self.with_caption = 0  # objects that have a caption key at all
        self.decoded = False  # whether any line was UTF-8 (a file of none is no text file)
        self.not_utf8: str | None = None  # the first line's that was not
        self._new_batch()

    def _new_batch(self) -> None:
        self.cols: dict[str, list] = {f.name: [] for f in S.CAPTION_ROW}
        self.bytes = 0

    def add(self, row: int, raw: str, id_=None, caption=None, reason=None, detail=None) -> None:
        c = self.cols
        if len(raw) > RAW_CHARS + 40:  # (not one cut already: its note of the size is the 40)
            raw = shown(raw, len(raw), RAW_CHARS)
        c[S.ID].append(id_)
        c[S.CAPTION].append(caption)
        c[S.SOURCE].append(f"{self.path}:{row + 1}")
        c[S.POS].append((self.file_index << 32) | row)
        c[S.RAW].append(raw)
        c[S.REASON].append(reason)
        c[S.DETAIL].append(detail)
        self.bytes += len(raw) + len(caption or "")

    def problem(self, row: int, raw: str, p: RowProblem) -> None:
        if p.detail.startswith("not UTF-8") and self.not_utf8 is None:
            self.not_utf8 = f"line {row + 1}: {p.detail}"
        self.add(row, raw, reason=p.reason, detail=p.detail)

    def add_record(self, row: int, record, raw: str | None = None) -> None:
        """One parsed record: validates the caption and derives a missing id."""
        if raw is None:
            raw = _raw_json(record)
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
        for what, text in (("a caption", cap), ("an id", id_ or "")):
            if len(text) > MAX_FIELD_CHARS:
                return self.add(row, raw, id_ if what == "a caption" else None, reason=S.R_TOO_LARGE,
                                detail=f"{what} of {len(text):,} characters (at most {MAX_FIELD_CHARS:,})")
        if "\x00" in cap:
            return self.add(row, raw, id_, reason=S.R_MALFORMED, detail="a NUL character in the caption")
        if not cap.strip():
            return self.add(row, raw, id_, reason=S.R_BLANK)
        self.add(row, raw, id_ if id_ is not None else caption_id(cap), cap)

    def full(self, rows: int) -> bool:
        return len(self.cols[S.POS]) >= rows or self.bytes >= BATCH_BYTES

    def take(self) -> pa.Table:
        """The rows gathered since the last take."""
        table = pa.Table.from_pydict(self.cols, schema=S.CAPTION_ROW)
        self._new_batch()
        return table

    def check_file(self) -> None:
        """Problems of the file as a whole, known once it is read."""
        if self.first_keys is not None and not self.with_caption:
            # A whole file without the column is a mistake (a `text` column, a wrong file), not bad rows.
            raise InputError(f"{self.path} has no '{S.CAPTION}' field in any row (the first has {', '.join(self.first_keys) or 'none'}); "
                             f"expected '{S.CAPTION}' and optionally '{S.ID}'")
        if self.not_utf8 and not self.decoded:
            raise InputError(f"{self.path} is not UTF-8 text ({self.not_utf8})")


def _parse_json(text: str):
    """(record, None), or (None, RowProblem) for a line that is no JSON or too much of it."""
    try:
        return json.loads(text), None
    except json.JSONDecodeError as e:
        return None, RowProblem(S.R_MALFORMED, f"invalid JSON: {e.msg}")
    except RecursionError:
        return None, RowProblem(S.R_TOO_LARGE, "JSON nested too deep to read")
    except ValueError as e:  # an integer beyond Python's 4300 digits for int(str)
        return None, RowProblem(S.R_TOO_LARGE, str(e).split(";")[0])


def _text_lines(stream, out: _Rows) -> Iterator[tuple[int, str]]:
    """(index, text) of each non-blank line, line ends off; a line too long or not UTF-8 becomes a reject."""
    src = ByteLines(stream, MAX_ROW_BYTES, RAW_CHARS)
    for data, size in src:
        if size > MAX_ROW_BYTES:
            out.add(src.number, shown(data, size, RAW_CHARS), reason=S.R_TOO_LARGE,
                    detail=f"a line of {size:,} bytes (at most {MAX_ROW_BYTES:,})")
            yield src.number, None
            continue
        line = strip_end(data)
        try:
            text = decode(line)
        except RowProblem as p:
            out.problem(src.number, shown(line, len(line), RAW_CHARS), p)
            yield src.number, None
            continue
        if text.strip():  # blank lines separate nothing
            out.decoded = True
            yield src.number, text


def _jsonl(stream, out: _Rows) -> Iterator[None]:
    for i, line in _text_lines(stream, out):
        if line is not None:
            rec, problem = _parse_json(line)
            if problem:
                out.add(i, line, reason=problem.reason, detail=problem.detail)
            else:
                out.add_record(i, rec, raw=line)
        yield


def _txt(stream, out: _Rows) -> Iterator[None]:
    for i, line in _text_lines(stream, out):
        if line is not None:
            out.add_record(i, {S.CAPTION: line.strip()}, raw=line)
        yield


def _csv(stream, out: _Rows) -> Iterator[None]:
    """Rows of a CSV with a header line; a record may span lines (a quoted newline). Row numbers
    count records (the header is row 1), as csv.DictReader does, blank lines skipped."""
    csv.field_size_limit(max(csv.field_size_limit(), MAX_ROW_BYTES + 1))  # our own limit decides, not the module's 128 KB
    src = CsvLines(ByteLines(stream, MAX_ROW_BYTES, RAW_CHARS), MAX_ROW_BYTES, RAW_CHARS)
    reader, header, row = csv.reader(src), None, 0
    while True:
        src.begin()
        try:
            fields = next(reader)
        except StopIteration:
            return
        except (csv.Error, RowProblem) as e:
            if header is None:
                raise InputError(f"{out.path}: cannot read its CSV header ({e})") from None
            row += 1
            p = e if isinstance(e, RowProblem) else RowProblem(
                S.R_TOO_LARGE if "field limit" in str(e) else S.R_MALFORMED, f"invalid CSV: {e}")
            out.problem(row, src.raw(), p)
            src.skip_rest()
            yield
            continue
        out.decoded = True
        if header is None:
            header = fields
            continue
        if not fields:
            continue
        row += 1
        rec = dict(zip(header, fields))
        if len(fields) > len(header):  # more fields than the header names
            out.add(row, json.dumps(rec | {None: fields[len(header) :]}), reason=S.R_MALFORMED, detail="more fields than the header")
        else:
            out.add_record(row, rec)
        yield


def _json(stream, out: _Rows) -> Iterator[None]:
    """A JSON array of objects (SynthVLM's format), or one object, parsed a value at a time."""
    values = JsonArray(stream, MAX_ROW_BYTES, RAW_CHARS)
    try:
        for i, (value, problem) in enumerate(values.values()):
            if not values.array and not isinstance(value, dict) and problem is None:
                raise InputError(f"{out.path}: expected a JSON array of objects, got {type(value).__name__}")
            if problem:
                out.add(i, value, reason=problem.reason, detail=problem.detail)
            else:
                out.add_record(i, value)
            yield
    except JsonFileError as e:
        raise InputError(f"{out.path}:{e.lineno}: not valid JSON ({e.msg}); use .jsonl for one object a line") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{out.path} is not UTF-8 text: {e}") from None


def _parquet(f, out: _Rows) -> Iterator[None]:
    """Rows of a Parquet file, a batch at a time; only its id and caption columns are read."""
    pf = pq.ParquetFile(f)
    names = pf.schema_arrow.names
    if S.CAPTION not in names:
        if pf.metadata.num_rows:
            out.first_keys = names  # check_file names them
        return
    i = 0
    for batch in pf.iter_batches(batch_size=1024, columns=[c for c in (S.ID, S.CAPTION) if c in names]):
        for rec in batch.to_pylist():
            out.add_record(i, rec)
            i += 1
            yield


PARSERS = {"jsonl": _jsonl, "txt": _txt, "csv": _csv, "json": _json, "parquet": _parquet}


def _open(path: str, fmt: str, codec: str | None):
    """The file as the parser reads it: a buffered (decompressing) stream; for Parquet a random-access file."""
    try:
        if fmt == "parquet":
            if codec:  # a compressed Parquet file has to be whole in memory to be read at random
                with files.open_input_stream(path) as raw:
                    return pa.BufferReader(pa.CompressedInputStream(raw, codec).read())
            return files.open_input_file(path)
        stream = files.open_input_stream(path)
    except ValueError as e:
        if isinstance(e, pa.ArrowException):
            raise
        raise InputError(str(e)) from None  # a URI pyarrow cannot parse (files.resolve: without its credentials)
    return io.BufferedReader(pa.CompressedInputStream(stream, codec) if codec else stream, buffer_size=1 << 20)


def iter_caption_batches(path: str, file_index: int, rows_per_batch: int = ROWS_PER_BATCH) -> Iterator[pa.Table]:
    """The caption rows (schema.CAPTION_ROW) of one input file, a batch at a time, read as a
    stream. Raises InputError for a file that cannot be read (possibly after some batches)."""
    fmt, codec = input_format(path), compression(path)
    out = _Rows(path, file_index)
    try:
        with _open(path, fmt, codec) as f:
            for _ in PARSERS[fmt](f, out):
                if out.full(rows_per_batch):
                    yield out.take()
    except (OSError, pa.ArrowException) as e:  # permissions, a vanished file, the network, bad bytes
        what = f"cannot decompress {out.path} as {codec}" if codec else (
            f"cannot read {out.path} as Parquet" if fmt == "parquet" else f"cannot read {out.path}")
        raise InputError(redact(f"{what}: {e}")) from None
    out.check_file()
    if out.cols[S.POS]:
        yield out.take()


def read_caption_file(path: str, file_index: int) -> pa.Table:
    """Parse one input file into caption rows (schema.CAPTION_ROW). Raises InputError if unreadable."""
    tables = list(iter_caption_batches(path, file_index))
    return pa.concat_tables(tables) if tables else S.CAPTION_ROW.empty_table()
