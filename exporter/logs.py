"""One line per event on stderr, logfmt (`ts=… level=… msg=…`) or JSON, like the Go exporters.

Structured fields travel as fields, never inside the message text:

    log.warning("scrape failed", extra=fields(alias="main", reason="auth"))

so a value holding spaces, quotes, `=` or newlines is quoted once, by the
formatter, instead of being re-parsed out of a formatted string.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import Any

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR}
FIELDS_ATTR = "fields"
MAX_ERROR_CHARS = 500


def fields(**values: Any) -> dict[str, Mapping[str, Any]]:
    """The `extra=` of a log call carrying structured fields; None values are left out."""
    return {FIELDS_ATTR: {k: v for k, v in values.items() if v is not None}}


def _level_name(record: logging.LogRecord) -> str:
    return {"WARNING": "warn", "CRITICAL": "error"}.get(record.levelname, record.levelname.lower())


def _timestamp(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


def _record_fields(record: logging.LogRecord) -> list[tuple[str, str]]:
    out = [(str(k), v if isinstance(v, str) else str(v))
           for k, v in (getattr(record, FIELDS_ATTR, None) or {}).items()]
    if record.exc_info and record.exc_info[0] is not None:
        # What a traceback ends with ("ValueError: boom") is the part worth a log line.
        exc_type, exc, _ = record.exc_info
        out.append(("error", f"{exc_type.__name__}: {exc}"[:MAX_ERROR_CHARS]))
    return out


def _quote(value: str) -> str:
    if value == "" or any(c in value for c in ' "=\\') or not value.isprintable():
        return json.dumps(value)  # ASCII escapes: a lone surrogate must not break stderr
    return value


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = [f"ts={_timestamp(record)}", f"level={_level_name(record)}", f"logger={record.name}",
                 f"msg={_quote(record.getMessage())}"]
        parts += [f"{k}={_quote(v)}" for k, v in _record_fields(record)]
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"ts": _timestamp(record), "level": _level_name(record), "logger": record.name,
               "msg": record.getMessage(), **dict(_record_fields(record))}
        return json.dumps(doc)


def setup_logging(level: str = "info", fmt: str = "logfmt") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])
    # urllib3 logs full request URLs (with signatures) at debug; keep it quiet.
    logging.getLogger("urllib3").setLevel(logging.WARNING)
