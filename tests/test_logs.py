"""Log lines: one line per event, logfmt fields a log pipeline can parse."""

from __future__ import annotations

import json
import logging

from exporter.logs import JsonFormatter, LogfmtFormatter


def record(msg: str, *args: object, exc: bool = False) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom\nsecond line")
        except ValueError:
            import sys

            exc_info = sys.exc_info()
    return logging.LogRecord("exporter.collector", logging.WARNING, __file__, 1, msg, args, exc_info)


def test_logfmt_splits_message_and_fields() -> None:
    line = LogfmtFormatter().format(record("scrape failed alias=%s reason=%s error=%r", "a b", "signature", 'it "broke"'))
    assert "\n" not in line
    assert 'level=warn logger=exporter.collector msg="scrape failed" alias="a" ' not in line
    assert 'msg="scrape failed"' in line and "reason=signature" in line and "level=warn" in line


def test_exceptions_stay_on_one_line() -> None:
    line = LogfmtFormatter().format(record("unexpected error alias=%s", "x", exc=True))
    assert "\n" not in line and "Traceback" not in line and "error=" in line
    doc = json.loads(JsonFormatter().format(record("unexpected error alias=%s", "x", exc=True)))
    assert doc["alias"] == "x" and doc["level"] == "warn" and "Traceback" not in doc["error"]
