"""Log lines: one line per event, fields passed as fields and quoted once, by the formatter."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from exporter.logs import JsonFormatter, LogfmtFormatter, fields


def record(msg: str, exc: bool = False, **values: object) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom\nsecond line")
        except ValueError:
            exc_info = sys.exc_info()
    rec = logging.LogRecord("exporter.engine", logging.WARNING, __file__, 1, msg, (), exc_info)
    rec.__dict__.update(fields(**values))
    return rec


@pytest.mark.parametrize("value, logfmt", [
    ("signature", "reason=signature"),
    ('it "broke"', r'reason="it \"broke\""'),
    ("a b", 'reason="a b"'),
    ("line1\nline2", r'reason="line1\nline2"'),
    ("", 'reason=""'),
    ("k=v", 'reason="k=v"'),
    ("Grüße", "reason=Grüße"),
    ("x\ud800y", r'reason="x\ud800y"'),
])
def test_values_are_quoted_once_and_survive(value: str, logfmt: str) -> None:
    line = LogfmtFormatter().format(record("scrape failed", alias="main", reason=value))
    assert "\n" not in line
    assert line.endswith(f'msg="scrape failed" alias=main {logfmt}')
    line.encode("utf-8")  # a lone surrogate from upstream must not break writing the line
    doc = json.loads(JsonFormatter().format(record("scrape failed", alias="main", reason=value)))
    assert doc["reason"] == value and doc["alias"] == "main" and doc["msg"] == "scrape failed"


def test_none_fields_are_left_out_and_numbers_are_plain() -> None:
    line = LogfmtFormatter().format(record("scrape failed", alias="a", status=None, code=-1022))
    assert line.endswith('msg="scrape failed" alias=a code=-1022')


def test_exceptions_stay_on_one_line() -> None:
    line = LogfmtFormatter().format(record("unexpected error", exc=True, alias="x"))
    assert "\n" not in line and "Traceback" not in line and "error=" in line
    assert line.endswith(r'alias=x error="ValueError: boom\nsecond line"')
    doc = json.loads(JsonFormatter().format(record("unexpected error", exc=True, alias="x")))
    assert doc["alias"] == "x" and doc["level"] == "warn" and "Traceback" not in doc["error"]


def test_plain_messages_from_libraries_still_format() -> None:
    rec = logging.LogRecord("urllib3", logging.ERROR, __file__, 1, "pool %s full", ("x",), None)
    assert LogfmtFormatter().format(rec).endswith('level=error logger=urllib3 msg="pool x full"')
