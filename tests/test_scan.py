"""The duplicate pre-pass gives the same keys in the driver and through Ray tasks."""
import json

import pytest

from factory import pipeline
from factory import schema as S
from factory.io.read import InputError


def test_local_and_ray_scans_agree(tmp_path, ray_local):
    a = tmp_path / "a.jsonl"
    a.write_text("".join(json.dumps({"id": i, "caption": f"caption number {i % 7}"}) + "\n" for i in range(40)) + "{bad\n")
    b = tmp_path / "b.txt"
    b.write_text("one caption\nanother caption\n")
    paths = [str(a), str(b)]
    local, n_local = pipeline.scan_keys(paths, 0.25, local_max_mb=16)
    remote, n_remote = pipeline.scan_keys(paths, 0.25, local_max_mb=0)
    assert n_local == n_remote == 43
    assert local.sort_by(S.POS).to_pylist() == remote.sort_by(S.POS).to_pylist()
    assert local.num_rows == 42  # the malformed line is read but has no key

    bad = tmp_path / "c.json"
    bad.write_text("[{oops")
    for limit in (16, 0):
        with pytest.raises(InputError, match="c.json:1: not valid JSON"):
            pipeline.scan_keys([str(bad)], 0.25, local_max_mb=limit)


def test_minhash_rides_along_in_the_same_scan(tmp_path, ray_local):
    from factory.curate.near_dup import signature_column

    a = tmp_path / "a.jsonl"
    a.write_text("".join(json.dumps({"id": i, "caption": f"a red car number {i} on a street"}) + "\n" for i in range(30)) + '{"id": 99}\n')
    local, _ = pipeline.scan_keys([str(a)], 0.25, local_max_mb=16, minhash=(32, 1))
    remote, _ = pipeline.scan_keys([str(a)], 0.25, local_max_mb=0, minhash=(32, 1))
    assert local.sort_by(S.POS).to_pylist() == remote.sort_by(S.POS).to_pylist()
    expected = signature_column([f"a red car number {i} on a street" for i in range(30)], 32, 1)
    assert local.sort_by(S.POS).column(S.MINHASH).to_pylist() == expected.to_pylist()
    empty = tmp_path / "e.jsonl"
    empty.write_text('{"id": 1, "caption": "   "}\n')  # its one row is a reject: no keys
    keys, n = pipeline.scan_keys([str(empty)], 0.25, local_max_mb=16, minhash=(32, 1))
    assert n == 1 and keys.num_rows == 0 and S.MINHASH in keys.column_names
