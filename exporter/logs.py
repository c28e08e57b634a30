"""One line per event on stderr, logfmt (`ts=… level=… msg=…`) or JSON, like the Go exporters."""

from __future__ import annotations

import json
import logging
import re
import sys
import time

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING, "error": logging.ERROR}
_KV_RE = re.compile(r"(\w+)=('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"|\S*)")


def _level_name(record: logging.LogRecord) -> str:
    return {"WARNING": "warn", "CRITICAL": "error"}.get(record.levelname, record.levelname.lower())


def _split(message: str) -> tuple[str, list[tuple[str, str]]]:
    """Our messages are written 'what happened key=value ...': split the text from the fields."""
    first = _KV_RE.search(message)
    if not first:
        return message, []
    text = message[: first.start()].strip()
    fields = [(m.group(1), m.group(2).strip("'\"")) for m in _KV_RE.finditer(message, first.start())]
    return text, fields


def _quote(value: str) -> str:
    if value == "" or any(c in value for c in ' "=\\') or not value.isprintable():
        return json.dumps(value)
    return value


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text, fields = _split(record.getMessage())
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        parts = [f"ts={ts}", f"level={_level_name(record)}", f"logger={record.name}", f"msg={_quote(text)}"]
        parts += [f"{k}={_quote(v)}" for k, v in fields]
        if record.exc_info:
            parts.append(f"error={_quote(self.formatException(record.exc_info).splitlines()[-1])}")
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text, fields = _split(record.getMessage())
        doc = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
               "level": _level_name(record), "logger": record.name, "msg": text, **dict(fields)}
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info).splitlines()[-1]
        return json.dumps(doc)


def setup_logging(level: str = "info", fmt: str = "logfmt") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(LEVELS[level])
    # urllib3 logs full request URLs (with signatures) at debug; keep it quiet.
    logging.getLogger("urllib3").setLevel(logging.WARNING)
