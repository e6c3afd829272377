"""One bad row never stops a file: each kind becomes a reject with a reason, and the rows around it go on."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from factory import schema as S
from factory.io import read
from factory.io.read import InputError, read_caption_file

GOOD = [{"id": "before", "caption": "A red car parked on a quiet street."},
        {"id": "after", "caption": "A cat asleep on a sunny window sill."}]


def around(bad: str) -> str:
    """A JSON Lines file: a good line, the bad one, a good line."""
    return json.dumps(GOOD[0]) + "\n" + bad + "\n" + json.dumps(GOOD[1]) + "\n"


def outcome(path) -> list[tuple]:
    return [(r[S.ID], r[S.REASON], r[S.SOURCE].rsplit(":", 1)[1]) for r in read_caption_file(str(path), 0).to_pylist()]


def rejected(path) -> dict:
    (row,) = [r for r in read_caption_file(str(path), 0).to_pylist() if r[S.REASON]]
    return row


def test_a_line_nested_ten_thousand_deep(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text(around('{"id": "deep", "caption": ' + "[" * 10_000 + "]" * 10_000 + "}"))
    assert outcome(p) == [("before", None, "1"), (None, S.R_TOO_LARGE, "2"), ("after", None, "3")]
    assert rejected(p)[S.DETAIL] == "JSON nested too deep to read"


def test_a_value_nested_ten_thousand_deep_in_a_json_array(tmp_path):
    p = tmp_path / "c.json"
    p.write_text("[" + json.dumps(GOOD[0]) + ", " + "[" * 10_000 + "]" * 10_000 + ", " + json.dumps(GOOD[1]) + "]")
    assert outcome(p) == [("before", None, "1"), (None, S.R_TOO_LARGE, "2"), ("after", None, "3")]


def test_an_integer_id_of_5000_digits(tmp_path):
    """Python's int() refuses more than 4300 digits: the row says so, with its file and line."""
    p = tmp_path / "c.jsonl"
    p.write_text(around('{"id": ' + "7" * 5000 + ', "caption": "A dog running on a beach."}'))
    assert outcome(p) == [("before", None, "1"), (None, S.R_TOO_LARGE, "2"), ("after", None, "3")]
    row = rejected(p)
    assert "4300 digits" in row[S.DETAIL] and row[S.SOURCE] == f"{p}:2"


def test_a_csv_field_past_the_csv_modules_limit(tmp_path):
    """The csv module refuses a field over 128 KiB; a caption that long is rejected as too large."""

    big = "a long caption " * 10_000  # 150,000 characters
    assert len(big) > 128 * 1024  # the csv module's own default field_size_limit (the reader raises it for itself)
    p = tmp_path / "c.csv"
    p.write_text(f'id,caption\nbefore,{GOOD[0]["caption"]}\nbig,"{big}"\nafter,{GOOD[1]["caption"]}\n')
    assert outcome(p) == [("before", None, "2"), ("big", S.R_TOO_LARGE, "3"), ("after", None, "4")]
    assert rejected(p)[S.DETAIL] == f"a caption of {len(big):,} characters (at most {read.MAX_FIELD_CHARS:,})"


def test_a_quoted_csv_field_over_the_row_limit_across_lines(tmp_path, monkeypatch):
    """The reader finds the end of the record (where its quote closes) and reads on from there."""
    monkeypatch.setattr(read, "MAX_ROW_BYTES", 200)
    p = tmp_path / "c.csv"
    field = "\n".join(["a line with a, comma and a quote \"\" inside"] * 20)
    p.write_text(f'id,caption\nbefore,{GOOD[0]["caption"]}\nbig,"{field}"\nafter,{GOOD[1]["caption"]}\n')
    assert outcome(p) == [("before", None, "2"), (None, S.R_TOO_LARGE, "3"), ("after", None, "4")]


def test_a_line_too_long_keeps_only_its_start_in_raw(tmp_path, monkeypatch):
    monkeypatch.setattr(read, "MAX_ROW_BYTES", 1000)
    monkeypatch.setattr(read, "RAW_CHARS", 100)
    p = tmp_path / "c.jsonl"
    line = json.dumps({"id": "huge", "caption": "x" * 50_000})
    p.write_text(around(line))
    assert outcome(p) == [("before", None, "1"), (None, S.R_TOO_LARGE, "2"), ("after", None, "3")]
    row = rejected(p)
    size = len(line) + 1  # with its line end
    assert row[S.DETAIL] == f"a line of {size:,} bytes (at most 1,000)"
    assert row[S.RAW].startswith('{"id": "huge", "caption": "xxx') and row[S.RAW].endswith(f"… [{size:,} bytes in all]")
    assert len(row[S.RAW]) < 130


def test_a_parquet_caption_too_large(tmp_path, monkeypatch):
    """A 50 MB caption, scaled down: the limit is what matters."""
    monkeypatch.setattr(read, "MAX_FIELD_CHARS", 1000)
    p = tmp_path / "c.parquet"
    pq.write_table(pa.table({"id": ["before", "huge", "after"], "caption": [GOOD[0]["caption"], "y" * 5000, GOOD[1]["caption"]]}), p)
    assert outcome(p) == [("before", None, "1"), ("huge", S.R_TOO_LARGE, "2"), ("after", None, "3")]


def test_one_line_that_is_not_utf8(tmp_path):
    """A line of Latin-1 in a UTF-8 file is a reject; a file of no UTF-8 line at all stays one error."""
    p = tmp_path / "c.jsonl"
    p.write_bytes(around('{"id": "latin", "caption": "Un caf\u00e9 au lait."}').encode("utf-8").replace("é".encode(), b"\xe9"))
    assert outcome(p) == [("before", None, "1"), (None, S.R_MALFORMED, "2"), ("after", None, "3")]
    assert rejected(p)[S.DETAIL].startswith("not UTF-8 text: invalid continuation byte")
    (tmp_path / "all.jsonl").write_bytes('{"caption": "Un café au lait."}\n'.encode("latin-1"))
    with pytest.raises(InputError, match=r"all\.jsonl is not UTF-8 text \(line 1: "):
        read_caption_file(str(tmp_path / "all.jsonl"), 0)


def test_a_nul_character_in_a_caption(tmp_path):
    p = tmp_path / "c.txt"
    p.write_bytes(b"A red car parked on a quiet street.\nA broken\x00caption\nA cat asleep on a sunny window sill.\n")
    assert [r for _, r, _ in outcome(p)] == [None, S.R_MALFORMED, None]
    assert rejected(p)[S.DETAIL] == "a NUL character in the caption"


def test_the_pre_pass_reads_past_every_bad_row(tmp_path):
    """What the run's pre-pass does with such a file (in the driver, as for small inputs): the bad
    rows are counted as read and as rejects by reason, only the good ones are kept."""
    from factory.config import compose
    from factory.job import load_job
    from factory.prepass import run_prepass

    p = tmp_path / "c.jsonl"
    p.write_text(around('{"id": ' + "7" * 5000 + ', "caption": "x"}') + "[" * 10_000 + "]" * 10_000 + "\n")
    pre = run_prepass([str(p)], load_job(compose([])).pipeline, 0.25, local_max_mb=16)
    assert pre.n_read == 4 and sorted(pre.kept_table().column(S.ID).to_pylist()) == ["after", "before"]
    assert pre.rejected_by_reason == {S.R_TOO_LARGE: 2}
