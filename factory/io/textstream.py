"""Text read a piece at a time, never a whole file in memory: lines of bounded size, CSV records
over them, and the values of a JSON array.

A line, CSV record or JSON value longer than the limit is read to its end but only its start is
kept; the reader turns it into a reject, and the rows after it go on.
"""
from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator

from factory import schema as S

BOM = b"\xef\xbb\xbf"


class RowProblem(Exception):
    """One row that cannot be read (too large, not UTF-8): its reason and detail."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


class ByteLines:
    """Lines of a binary stream (io.BufferedReader), split at b"\\n" only (JSON allows U+2028 and
    the like raw inside a string), each with its line end. A line longer than `limit` bytes comes
    back cut to its first `keep` bytes; `size` is then more than the bytes returned."""

    def __init__(self, stream, limit: int, keep: int):
        self.stream, self.limit, self.keep = stream, limit, keep
        self.number = -1  # index of the last line returned
        self.quotes = 0  # '"' in the last line, counted over all of it (CSV resynchronises by them)

    def __iter__(self):
        return self

    def __next__(self) -> tuple[bytes, int]:
        line = self.stream.readline(self.limit + 1)
        if not line:
            raise StopIteration
        self.number += 1
        if self.number == 0 and line.startswith(BOM):
            line = line[len(BOM) :]
        size, quotes = len(line), line.count(b'"')
        if size > self.limit and not line.endswith(b"\n"):  # too long: read on to its end, keep the start
            head = line[: self.keep]
            while line and not line.endswith(b"\n"):
                line = self.stream.readline(1 << 20)
                size, quotes = size + len(line), quotes + line.count(b'"')
            line = head
        self.quotes = quotes
        return line, size


def strip_end(line: bytes) -> bytes:
    """A line without its \\n or \\r\\n."""
    if line.endswith(b"\n"):
        line = line[:-1]
    return line[:-1] if line.endswith(b"\r") else line


def decode(line: bytes) -> str:
    """UTF-8 text of a line; RowProblem (malformed) where it is not UTF-8."""
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise RowProblem(S.R_MALFORMED, f"not UTF-8 text: {e.reason} at byte {e.start}") from None


def shown(data: bytes | str, size: int, keep: int) -> str:
    """What rejects/ keeps of a row (`size` bytes, or characters for a str): its start, and how long
    it was when cut."""
    text = data.decode("utf-8", "backslashreplace") if isinstance(data, bytes) else data
    if size <= keep and len(text) <= keep:
        return text
    return f"{text[:keep]}… [{size:,} {'bytes' if isinstance(data, bytes) else 'characters'} in all]"


class CsvLines:
    """The str lines csv.reader parses (line ends kept), from ByteLines. A line too long or not
    UTF-8 raises RowProblem out of the reader; `skip_rest` then reads on to the end of that record
    (where the quotes it opened close), so the next record starts clean."""

    SPLIT_CR = re.compile(r"(?<=\r)(?!\n)")  # a lone \r ends a line too, as csv and StringIO(newline="") have it

    def __init__(self, lines: ByteLines, limit: int, keep: int):
        self.lines, self.limit, self.keep = lines, limit, keep
        self.pending: list[str] = []
        self.begin()

    def begin(self) -> None:
        """A new record starts with the next line."""
        self.quotes, self.size, self.head = 0, 0, b""

    def __iter__(self):
        return self

    def __next__(self) -> str:
        if self.pending:
            return self.pending.pop(0)
        data, size = next(self.lines)
        self.quotes += self.lines.quotes
        self.size += size
        if len(self.head) < self.keep:
            self.head += data[: self.keep - len(self.head)]
        if size > self.limit:
            raise RowProblem(S.R_TOO_LARGE, f"a line of {size:,} bytes (at most {self.limit:,})")
        if self.size > self.limit:
            raise RowProblem(S.R_TOO_LARGE, f"a record of more than {self.limit:,} bytes")
        text = decode(data)
        if "\r" in text[:-2]:
            first, *self.pending = self.SPLIT_CR.split(text)
            return first
        return text

    def raw(self) -> str:
        """The start of the record read so far, for rejects/."""
        return shown(self.head, self.size, self.keep)

    def skip_rest(self) -> None:
        """After a bad record: lines up to the one that closes every quote it opened."""
        self.pending = []
        while self.quotes % 2:
            try:
                next(self.lines)
            except StopIteration:
                return
            self.quotes += self.lines.quotes


class JsonFileError(Exception):
    """A JSON file that cannot be read on: message and line."""

    def __init__(self, msg: str, lineno: int):
        super().__init__(msg)
        self.msg, self.lineno = msg, lineno


_WS = re.compile(r"[ \t\n\r]*")
_IN_STRING = re.compile(r'["\\]')
_STRUCTURE = re.compile(r'["\[\]{}]')
_SCALAR_END = re.compile(r"[\s,\]}]")


class _Extent:
    """Finds where the JSON value starting at a buffer's position ends, over a buffer that grows:
    brackets counted, strings (and their escapes) stepped over, nothing parsed or kept."""

    def __init__(self, i: int):
        self.i, self.depth, self.in_string, self.scalar = i, 0, False, None

    def shift(self, n: int) -> None:
        self.i -= n

    def end(self, buf: str, eof: bool) -> int | None:
        """Index just past the value, or None when the buffer ends first."""
        if self.scalar is None:
            self.scalar = buf[self.i] not in '[{"'
            self.in_string = buf[self.i] == '"'
            self.depth = int(buf[self.i] in "[{")
            self.i += not self.scalar
        if self.scalar:
            m = _SCALAR_END.search(buf, self.i)
            return m.start() if m else (len(buf) if eof else self._rest(buf))
        while True:
            m = (_IN_STRING if self.in_string else _STRUCTURE).search(buf, self.i)
            if m is None:
                return self._rest(buf)
            c, self.i = m.group(), m.end()
            if self.in_string:
                if c == "\\":
                    if self.i >= len(buf):  # the escaped character is in the next piece
                        self.i -= 1
                        return None
                    self.i += 1
                else:
                    self.in_string = False
                    if self.depth == 0:
                        return self.i
            elif c == '"':
                self.in_string = True
            elif c in "[{":
                self.depth += 1
            else:
                self.depth -= 1
                if self.depth == 0:
                    return self.i

    def _rest(self, buf: str) -> None:
        self.i = len(buf)
        return None


class JsonArray:
    """The values of a JSON array (or one top-level object) from a binary stream, decoded and parsed
    a value at a time: yields (value, None) or (raw start, RowProblem). Raises JsonFileError where the
    file is no valid JSON (the rest cannot be found again), UnicodeDecodeError where it is no UTF-8."""

    def __init__(self, stream, limit: int, keep: int, chunk: int = 1 << 20):
        self.stream, self.limit, self.keep, self.chunk = stream, limit, keep, chunk
        self.decoder = codecs.getincrementaldecoder("utf-8-sig")()
        self.buf, self.pos, self.eof, self.lines_before = "", 0, False, 0
        self.array = False  # whether the file is an array (else one value), once values() has begun

    def _more(self) -> int:
        """Reads the next piece; returns how far the buffer shifted (what was before pos is dropped)."""
        data = self.stream.read(self.chunk)
        text = self.decoder.decode(data, final=not data)
        self.eof = not data
        shift = self.pos
        self.lines_before += self.buf.count("\n", 0, shift)
        self.buf, self.pos = self.buf[shift:] + text, 0
        return shift

    def _line(self, at: int | None = None) -> int:
        return self.lines_before + self.buf.count("\n", 0, self.pos if at is None else at) + 1

    def _skip_ws(self) -> str:
        """The next character that is no white space ("" at the end)."""
        while True:
            self.pos = _WS.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if self.eof:
                return ""
            self._more()

    def _error(self, msg: str):
        raise JsonFileError(msg, self._line())

    def values(self) -> Iterator[tuple[object, RowProblem | None]]:
        first = self._skip_ws()
        self.array = first == "["
        if not self.array:
            if not first:
                self._error("Expecting value")
            yield self._value()
            if self._skip_ws():
                self._error("Extra data")
            return
        self.pos += 1
        if self._skip_ws() == "]":
            self.pos += 1
        else:
            while True:
                if not self._skip_ws():
                    self._error("Expecting value")
                yield self._value()
                c = self._skip_ws()
                self.pos += 1
                if c == "]":
                    break
                if c != ",":
                    self.pos -= 1
                    self._error("Expecting ',' delimiter")
        if self._skip_ws():
            self._error("Extra data")

    def _value(self) -> tuple[object, RowProblem | None]:
        """The value at pos, parsed (pos moves past it); a value over the limit is skipped instead."""
        extent = _Extent(self.pos)
        while (end := extent.end(self.buf, self.eof)) is None:
            if len(self.buf) - self.pos > self.limit:
                return self._skip(extent)
            if self.eof:
                end = len(self.buf)
                break
            extent.shift(self._more())
        text, start = self.buf[self.pos : end], self.pos
        self.pos = end
        try:
            return json.loads(text), None
        except json.JSONDecodeError as e:
            raise JsonFileError(e.msg, self._line(start) + e.lineno - 1) from None
        except RecursionError:
            return shown(text, len(text), self.keep), RowProblem(S.R_TOO_LARGE, "JSON nested too deep to read")
        except ValueError as e:  # an integer beyond Python's 4300 digits for int(str)
            return shown(text, len(text), self.keep), RowProblem(S.R_TOO_LARGE, str(e).split(";")[0])

    def _skip(self, extent: _Extent) -> tuple[str, RowProblem]:
        head, size = self.buf[self.pos : self.pos + self.keep], 0
        while (end := extent.end(self.buf, self.eof)) is None:
            if self.eof:
                self._error("Unterminated value")
            size += extent.i - self.pos  # what the scan has passed is dropped (all but a split escape)
            self.pos = extent.i
            extent.shift(self._more())
        size += end - self.pos
        self.pos = end
        return f"{head}… [{size:,} characters in all]", RowProblem(
            S.R_TOO_LARGE, f"a value of {size:,} characters (at most {self.limit:,})")
