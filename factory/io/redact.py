"""Credentials out of URIs: what a run records or logs shows every URI without its secrets.

`s3://KEY:SECRET@bucket/x?secret_key=...&endpoint_override=host` becomes
`s3://***@bucket/x?secret_key=***&endpoint_override=host`. The run itself goes on using the real
URI; only the text that lands in an output (manifest.json, report/, the dataset card, rejects/'
`source`) or a log line goes through here.
"""
from __future__ import annotations

import logging
import re

MASK = "***"

# A URI inside any text: a scheme, then everything up to white space or a quote/bracket.
_URI = re.compile(r"\b([A-Za-z][A-Za-z0-9+.\-]*://)([^\s'\"<>`]*)")
# Query parameters whose value is a secret, by name (case-insensitive): pyarrow's S3 options
# (access_key, secret_key, session_token), pre-signed S3/GCS URLs (X-Amz-*/X-Goog-* signatures and
# credentials), Azure SAS tokens (sig) and account keys, and the usual generic names.
_SECRET_PARAMS = re.compile(
    r"^(x-amz-(signature|credential|security-token)|x-goog-(signature|credential)|sig|signature|"
    r"(aws_)?(access_?key(_?id)?|secret(_?access)?_?key|session_?token|security_?token)|"
    r"account_?key|sas(_?token)?|token|access_?token|refresh_?token|id_?token|auth|authorization|"
    r"password|passwd|pwd|secret|client_?secret|api_?key|apikey|key|credentials?|private_?key)$",
    re.IGNORECASE,
)
# Schemes whose user part names a container, not a person (abfs://container@account.dfs...).
_CONTAINER_USER = {"abfs", "abfss", "az", "wasb", "wasbs"}


def _redact_query(query: str) -> str:
    parts = []
    for pair in query.split("&"):
        name, eq, value = pair.partition("=")
        parts.append(f"{name}={MASK}" if eq and value and _SECRET_PARAMS.match(name.replace("%2D", "-")) else pair)
    return "&".join(parts)


def _redact_uri(match: re.Match) -> str:
    scheme, rest = match.group(1), match.group(2)
    rest, qmark, query = rest.partition("?")
    at = rest.find("@")
    if at >= 0:
        user = rest[:at]
        # user:password@host (a password may hold an unescaped '/'); a lone user@host too, except
        # where the scheme puts a container there. A '@' further down a path is no user part.
        if ":" in user or ("/" not in user and scheme[:-3].lower() not in _CONTAINER_USER):
            rest = MASK + rest[at:]
    return f"{scheme}{rest}{qmark}{_redact_query(query) if qmark else ''}"


def redact(text):
    """`text` with the user part (user:password@) and secret query parameters of every URI in it
    masked; anything that is no string comes back as it is."""
    if not isinstance(text, str) or "://" not in text:
        return text
    return _URI.sub(_redact_uri, text)


def redact_all(obj):
    """`obj` (a config, a manifest: dicts, lists, strings) with every string redacted, as a copy."""
    if isinstance(obj, dict):
        return {k: redact_all(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact_all(v) for v in obj)
    return redact(obj)


class RedactingFilter(logging.Filter):
    """A handler filter: each record's message (with its arguments) redacted before it is written."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True
