"""No credential of a URI lands in what a run records or logs: manifest, report, dataset card, log lines."""
from __future__ import annotations

import io
import json
import logging

import pytest
import yaml

from factory.io.redact import RedactingFilter, redact, redact_all

SECRET_INPUT = "s3://AKIAKEY:wJalr/SECRET@bucket/captions/*.jsonl?endpoint_override=minio:9000&secret_key=SECRET2"


@pytest.mark.parametrize("text, shown", [
    ("s3://KEY:SECRET@bucket/c.jsonl", "s3://***@bucket/c.jsonl"),
    (SECRET_INPUT, "s3://***@bucket/captions/*.jsonl?endpoint_override=minio:9000&secret_key=***"),
    ("s3://b/c.csv?access_key=AK&secret_key=SK&session_token=T&region=eu-west-1",
     "s3://b/c.csv?access_key=***&secret_key=***&session_token=***&region=eu-west-1"),
    ("https://b.s3.amazonaws.com/c.jsonl?X-Amz-Algorithm=AWS4&X-Amz-Credential=AK%2F2024&X-Amz-Signature=abc&X-Amz-Security-Token=t",
     "https://b.s3.amazonaws.com/c.jsonl?X-Amz-Algorithm=AWS4&X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Security-Token=***"),
    ("https://storage.googleapis.com/b/c.jsonl?X-Goog-Signature=abc&X-Goog-Date=1",
     "https://storage.googleapis.com/b/c.jsonl?X-Goog-Signature=***&X-Goog-Date=1"),
    ("abfs://container@account.dfs.core.windows.net/c.jsonl?sv=2022&sig=abc%3D",
     "abfs://container@account.dfs.core.windows.net/c.jsonl?sv=2022&sig=***"),
    ("https://user:pw@example.com/c.jsonl", "https://***@example.com/c.jsonl"),
    ("cannot read s3://K:S@b/x.jsonl: access denied; see gs://b/y@v2.jsonl", "cannot read s3://***@b/x.jsonl: access denied; see gs://b/y@v2.jsonl"),
    ("/data/captions.jsonl:12", "/data/captions.jsonl:12"),
])
def test_redact_hides_the_user_part_and_secret_parameters(text, shown):
    assert redact(text) == shown
    assert redact(redact(text)) == shown  # twice changes nothing


def config_with_secrets(tmp_path) -> dict:
    from factory.config import compose, plain

    cfg = plain(compose([f"output={tmp_path / 'out'}"]))
    cfg["input"] = SECRET_INPUT
    return cfg


def assert_clean(text: str) -> None:
    assert "SECRET" not in text and "wJalr" not in text, text
    assert "bucket/captions/*.jsonl" in text  # what the URI names stays readable


def test_the_manifest_records_the_config_without_credentials(tmp_path):
    from factory.layout import Manifest

    cfg = config_with_secrets(tmp_path)
    manifest = Manifest(str(tmp_path / "manifest.json"), cfg, {}, None)
    manifest.save()
    assert_clean((tmp_path / "manifest.json").read_text())
    assert cfg["input"] == SECRET_INPUT  # the run itself goes on with the real URI


def test_the_report_shows_no_credentials_even_from_an_older_manifest(tmp_path):
    from factory.report import index_html

    m = {"status": "complete", "config": config_with_secrets(tmp_path), "counts": {"read": 3}}
    page = index_html(m, 0, 0)
    assert_clean(page)
    assert "s3://***@bucket/captions/*.jsonl" in page


def test_the_dataset_card_shows_no_credentials(tmp_path):
    from factory.export.hf import card_text

    text = card_text({"selected": 1}, config_with_secrets(tmp_path), {}, [], ["part-a.parquet"])
    assert_clean(text)
    assert yaml.safe_load(text.split("---")[1])["configs"]  # still a card the Hub reads


def test_status_shows_no_credentials(tmp_path):
    from factory.status import status_lines

    out = tmp_path / "out"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"status": "failed", "runs": 1, "config": {"input": SECRET_INPUT},
                                                   "error": f"InputError: cannot read {redact(SECRET_INPUT)}", "counts": {}}))
    assert_clean("\n".join(status_lines(str(out))))


def test_log_lines_go_through_the_redacting_filter():
    """The CLI's logging (factory/__main__.py setup_logging): every line is redacted."""
    from factory.__main__ import setup_logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    root.handlers.clear()
    stream = io.StringIO()
    try:
        setup_logging(stream)
        logging.getLogger("factory.test").warning("cannot read %s (try %d)", SECRET_INPUT, 2)
    finally:
        for h in root.handlers[:]:
            root.removeHandler(h)
        root.handlers.extend(saved[0])
        root.setLevel(saved[1])
    assert_clean(stream.getvalue())
    assert stream.getvalue().endswith("(try 2)\n") and "s3://***@bucket/captions/*.jsonl" in stream.getvalue()
    assert RedactingFilter().filter(logging.makeLogRecord({"msg": "plain %s", "args": ("text",)}))


def test_redact_all_copies_a_config():
    cfg = {"input": SECRET_INPUT, "nested": [{"uri": "s3://K:S@b/x"}], "n": 3}
    clean = redact_all(cfg)
    assert clean == {"input": redact(SECRET_INPUT), "nested": [{"uri": "s3://***@b/x"}], "n": 3}
    assert cfg["input"] == SECRET_INPUT
