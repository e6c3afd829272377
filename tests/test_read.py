"""Readers: every format, ids as strings, and every kind of bad row kept with a reason."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from factory import schema as S
from factory.io.read import InputError, caption_id, list_inputs, read_caption_file


def rows(table):
    return table.to_pylist()


def test_synthvlm_json_array(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps([{"id": 1, "caption": "A red car on a quiet street."}, {"id": "x7", "caption": "A cat on a mat."}]))
    out = rows(read_caption_file(str(p), 0))
    assert [r[S.ID] for r in out] == ["1", "x7"]
    assert all(r[S.REASON] is None for r in out)
    assert out[0][S.SOURCE].endswith("c.json:1")


def test_jsonl_malformed_and_invalid_rows_are_kept_with_reasons(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_text(
        '{"id": 1, "caption": "good one here"}\n'
        "{not json\n"
        '{"id": 2}\n'
        '{"id": 3, "caption": 42}\n'
        '{"id": 4, "caption": "   "}\n'
        '["a", "list"]\n'
        "\n"
        '{"caption": "no id given"}\n'
    )
    out = rows(read_caption_file(str(p), 3))
    reasons = [r[S.REASON] for r in out]
    assert reasons == [None, S.R_MALFORMED, S.R_NO_CAPTION, S.R_NOT_STRING, S.R_BLANK, S.R_MALFORMED, None]
    assert out[1][S.RAW] == "{not json"
    assert out[-1][S.ID] == caption_id("no id given")
    assert out[1][S.SOURCE].endswith("c.jsonl:2")
    # pos keeps the input order, file index in the high bits
    assert [r[S.POS] >> 32 for r in out] == [3] * 7
    assert [r[S.POS] & 0xFFFFFFFF for r in out] == sorted(r[S.POS] & 0xFFFFFFFF for r in out)


def test_parquet_csv_txt(tmp_path):
    pq.write_table(pa.table({"id": [10, 11], "caption": ["a dog in the park", None]}), tmp_path / "c.parquet")
    (tmp_path / "c.csv").write_text('id,caption\n5,"a boat, at sea"\n6,\n')
    (tmp_path / "c.txt").write_text("first caption line\n\nsecond caption line\n")
    pqr = rows(read_caption_file(str(tmp_path / "c.parquet"), 0))
    assert [(r[S.ID], r[S.REASON]) for r in pqr] == [("10", None), ("11", S.R_NO_CAPTION)]
    csvr = rows(read_caption_file(str(tmp_path / "c.csv"), 1))
    assert csvr[0][S.CAPTION] == "a boat, at sea" and csvr[0][S.ID] == "5"
    assert csvr[1][S.REASON] == S.R_BLANK
    txt = rows(read_caption_file(str(tmp_path / "c.txt"), 2))
    assert [r[S.CAPTION] for r in txt] == ["first caption line", "second caption line"]
    assert txt[0][S.ID] == caption_id("first caption line")


def test_whole_input_errors_are_one_line(tmp_path):
    with pytest.raises(InputError, match="no file matches"):
        list_inputs(str(tmp_path / "missing*.jsonl"))
    (tmp_path / "c.xml").write_text("<a/>")
    with pytest.raises(InputError, match="unknown input format"):
        list_inputs(str(tmp_path / "c.xml"))
    bad = tmp_path / "c.json"
    bad.write_text("[{broken")
    with pytest.raises(InputError, match=r"c\.json:1: not valid JSON"):
        read_caption_file(str(bad), 0)
    pq_bad = tmp_path / "c.parquet"
    pq_bad.write_bytes(b"not parquet")
    with pytest.raises(InputError, match="cannot read .* as Parquet"):
        read_caption_file(str(pq_bad), 0)


def test_glob_and_folder_inputs(tmp_path):
    for i in range(3):
        (tmp_path / f"part{i}.txt").write_text(f"caption number {i}\n")
    assert len(list_inputs(str(tmp_path / "part*.txt"))) == 3
    assert len(list_inputs(str(tmp_path))) == 3
    for form in (str(tmp_path / "part*.txt"), str(tmp_path), str(tmp_path / "part1.txt")):  # file:// URIs, as output= takes them
        assert list_inputs("file://" + form) == list_inputs(form)


def test_the_generation_pass_stops_on_a_file_it_can_no_longer_read(tmp_path, monkeypatch):
    """The pre-pass read it; losing it later must stop the run (to resume), not drop its captions
    as one reject row. A hiccup that passes is tried again first, and a try that failed midway
    passes on no row twice."""
    import pyarrow as pa

    from factory.io import read_files

    monkeypatch.setattr(read_files, "REREAD_WAIT_S", (0.0, 0.0))
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"id": f"r{i}", "caption": f"A red car number {i} on a street."}) + "\n" for i in range(5)))
    batch = pa.table({"path": [str(path)], "file_index": [0]})
    real, calls = read_files.iter_caption_batches, []

    def flaky(p, i):  # batches of 2 rows; the first two tries lose the connection after 1 and 2 batches
        calls.append(p)
        for n, table in enumerate(real(p, i, rows_per_batch=2)):
            if len(calls) < 3 and n == len(calls):
                raise InputError(f"cannot read {p}: connection reset")
            yield table

    monkeypatch.setattr(read_files, "iter_caption_batches", flaky)
    tables = list(read_files.ReadFiles(again=True)(batch))
    assert len(calls) == 3 and [i for t in tables for i in t.column(S.ID).to_pylist()] == [f"r{i}" for i in range(5)]
    assert pa.concat_tables(tables).equals(read_caption_file(str(path), 0))  # positions and all, as one read gives them

    calls.clear()
    path.unlink()
    monkeypatch.setattr(read_files, "iter_caption_batches", lambda p, i: (calls.append(p), real(p, i))[1])
    with pytest.raises(InputError, match="the pre-pass of this run read it"):
        list(read_files.ReadFiles(again=True)(batch))
    assert len(calls) == 3
    # The pre-pass reports it as one row instead (and the driver stops on it before generating).
    (row,) = list(read_files.ReadFiles()(batch))
    assert row.column(S.REASON).to_pylist() == [S.R_UNREADABLE]


@pytest.mark.parametrize("sep", ["\u2028", "\u2029", "\u0085"])
def test_a_jsonl_line_is_split_only_at_newlines(tmp_path, sep):
    """JSON allows these raw inside a string; str.splitlines would cut the row in two."""
    caption = f"A red car{sep}parked by a quiet street at dusk."
    lines = [json.dumps({"id": 1, "caption": caption}, ensure_ascii=False), json.dumps({"id": 2, "caption": "A cat on a mat."})]
    p = tmp_path / "c.jsonl"
    p.write_bytes(("\r\n".join(lines) + "\r\n").encode())  # Windows line ends too
    out = rows(read_caption_file(str(p), 0))
    assert [(r[S.ID], r[S.CAPTION], r[S.REASON]) for r in out] == [("1", json.loads(lines[0])["caption"], None),
                                                                     ("2", "A cat on a mat.", None)]
    assert out[1][S.SOURCE].endswith("c.jsonl:2")


@pytest.mark.parametrize("name", ["c.csv", "c.parquet", "c.jsonl", "c.json"])
def test_a_file_without_a_caption_field_is_one_error_not_a_file_of_rejects(tmp_path, name):
    rows_ = [{"id": "1", "text": "A red car on a quiet street."}, {"id": "2", "text": "A cat on a mat."}]
    p = tmp_path / name
    if name.endswith(".csv"):
        p.write_text("id,text\n" + "".join(f"{r['id']},{r['text']}\n" for r in rows_))
    elif name.endswith(".parquet"):
        pq.write_table(pa.Table.from_pylist(rows_), p)
    elif name.endswith(".jsonl"):
        p.write_text("".join(json.dumps(r) + "\n" for r in rows_))
    else:
        p.write_text(json.dumps(rows_))
    with pytest.raises(InputError) as err:
        read_caption_file(str(p), 0)
    assert str(err.value) == f"{p} has no 'caption' field in any row (the first has id, text); expected 'caption' and optionally 'id'"
    # one row with a caption among them: the others are rows without one, kept as rejects
    if name.endswith(".jsonl"):
        p.write_text("".join(json.dumps(r) + "\n" for r in rows_ + [{"id": "3", "caption": "A dog in the snow."}]))
        assert [r[S.REASON] for r in rows(read_caption_file(str(p), 0))] == [S.R_NO_CAPTION, S.R_NO_CAPTION, None]


@pytest.mark.parametrize("name, opener", [("c.jsonl.gz", "gzip"), ("c.csv.bz2", "bz2"), ("c.json.zst", "zstd")])
def test_compressed_inputs_read_as_their_plain_files(tmp_path, name, opener):
    """Decompressed by pyarrow; the reference files are written by Python's own gzip/bz2 and pyarrow's zstd."""
    import bz2
    import gzip

    records = [{"id": "1", "caption": "A red car on a quiet street."}, {"id": "2", "caption": "A cat on a mat."}]
    plain_name = name.rsplit(".", 1)[0]
    plain = tmp_path / plain_name
    if plain_name.endswith(".jsonl"):
        plain.write_text("".join(json.dumps(r) + "\n" for r in records))
    elif plain_name.endswith(".csv"):
        plain.write_text("id,caption\n" + "".join(f"{r['id']},{r['caption']}\n" for r in records))
    else:
        plain.write_text(json.dumps(records))
    raw = plain.read_bytes()
    if opener == "zstd":  # no zstd in Python's standard library: a zstd frame from pyarrow's stream writer
        sink = pa.BufferOutputStream()
        with pa.CompressedOutputStream(sink, "zstd") as out:
            out.write(raw)
        packed = sink.getvalue().to_pybytes()
        assert packed[:4] == b"\x28\xb5\x2f\xfd"  # a standard zstd frame (RFC 8878's magic number)
    else:
        packed = {"gzip": gzip.compress, "bz2": bz2.compress}[opener](raw)
    (tmp_path / name).write_bytes(packed)
    got = rows(read_caption_file(str(tmp_path / name), 0))
    want = rows(read_caption_file(str(plain), 0))
    assert [(r[S.ID], r[S.CAPTION], r[S.REASON]) for r in got] == [(r[S.ID], r[S.CAPTION], r[S.REASON]) for r in want]
    assert got[1][S.SOURCE] == f"{tmp_path / name}:{want[1][S.SOURCE].rsplit(':', 1)[1]}"
    assert list_inputs(str(tmp_path)) == sorted([str(plain), str(tmp_path / name)])


def test_broken_inputs_are_one_error_or_a_reject_each(tmp_path):
    (tmp_path / "t.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00truncated")
    with pytest.raises(InputError, match=r"cannot decompress .*t\.jsonl\.gz as gzip"):
        read_caption_file(str(tmp_path / "t.jsonl.gz"), 0)
    (tmp_path / "latin1.txt").write_bytes("Un café au lait sur une terrasse.\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"latin1\.txt is not UTF-8 text"):
        read_caption_file(str(tmp_path / "latin1.txt"), 0)
    (tmp_path / "extra.csv").write_text("id,caption\n1,A red car on a quiet street.\n2,A cat,on a mat\n")
    out = rows(read_caption_file(str(tmp_path / "extra.csv"), 0))
    assert [(r[S.ID], r[S.REASON], r[S.DETAIL]) for r in out] == [("1", None, None), (None, S.R_MALFORMED, "more fields than the header")]
    assert out[1][S.SOURCE].endswith("extra.csv:3")  # the header is line 1


def test_an_empty_id_cell_is_a_missing_id(tmp_path):
    """A CSV whose id column is partly empty (or JSON with "id": ""): those rows get the caption's
    hash id like rows without one, instead of all sharing the id "" (and all but one rejected)."""
    (tmp_path / "c.csv").write_text("id,caption\n,A red car by a lake.\n7,A cat on a mat.\n ,Two dogs in the snow.\n")
    (tmp_path / "c.jsonl").write_text('{"id": "", "caption": "A blue boat."}\n{"id": 0, "caption": "A green hill."}\n')
    csvr = rows(read_caption_file(str(tmp_path / "c.csv"), 0))
    assert [r[S.ID] for r in csvr] == [caption_id("A red car by a lake."), "7", caption_id("Two dogs in the snow.")]
    jsonr = rows(read_caption_file(str(tmp_path / "c.jsonl"), 1))
    assert [r[S.ID] for r in jsonr] == [caption_id("A blue boat."), "0"]  # 0 is an id; only blank text is none
    assert all(r[S.REASON] is None for r in csvr + jsonr)
