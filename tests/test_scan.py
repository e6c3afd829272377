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
