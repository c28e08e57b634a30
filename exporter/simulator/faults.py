"""Fault injection: what can go wrong on Binance's side, on demand.

Faults exist so the exporter's error handling can be exercised deterministically
instead of waiting for production to misbehave.
"""

from __future__ import annotations

import copy
import json
import threading
from dataclasses import dataclass, replace
from typing import Any

from .errors import (
    MSG_REJECTED_KEY,
    MSG_SERVICE_UNAVAILABLE,
    MSG_TIMEOUT,
    MSG_TS_OUTSIDE,
    MSG_UNKNOWN,
    MSG_UNKNOWN_503,
    Reply,
    banned_msg,
    dumps,
    too_many_requests_msg,
)
from .schema import DECIMAL_FIELDS

FAULT_KINDS: tuple[str, ...] = (
    "latency",
    "http_500",
    "http_503",
    "http_503_unknown",
    "http_408",
    "html_403",
    "truncated_json",
    "wrong_types",
    "missing_fields",
    "not_a_list",
    "rate_limit_429",
    "ban_418",
    "reset",
    "auth_2015",
    "timestamp_1021",
)

# Kinds that still produce the normal answer, only deformed; they need the payload first.
PAYLOAD_KINDS = frozenset({"truncated_json", "wrong_types", "missing_fields", "not_a_list"})

# The WAF page is not JSON on purpose: clients must not assume every error body parses.
WAF_403_HTML = (
    b"<!DOCTYPE HTML PUBLIC \"-//W3C//DTD HTML 4.01 Transitional//EN\" "
    b"\"http://www.w3.org/TR/html4/loose.dtd\">\n"
    b"<HTML><HEAD><META HTTP-EQUIV=\"Content-Type\" CONTENT=\"text/html; charset=iso-8859-1\">\n"
    b"<TITLE>ERROR: The request could not be satisfied</TITLE>\n</HEAD><BODY>\n"
    b"<H1>403 ERROR</H1>\n<H2>The request could not be satisfied.</H2>\n<HR noshade size=\"1px\">\n"
    b"Request blocked.\n</BODY></HTML>\n"
)

DEFAULT_BAN_S = 120


@dataclass
class Fault:
    """One injected misbehaviour; `times=None` keeps it until cleared."""

    kind: str
    times: int | None = None
    latency_s: float = 0.0
    retry_after_s: int | None = 30

    def __post_init__(self) -> None:
        # Fail at set-up time: a typo in a test should not silently mean "no fault".
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {FAULT_KINDS}")
        if self.times is not None and self.times < 1:
            raise ValueError("Fault.times must be None or >= 1")
        if self.latency_s < 0:
            raise ValueError("Fault.latency_s must be >= 0")


class FaultBook:
    """Thread-safe store of active faults; `take` consumes one use atomically."""

    GLOBAL = object()

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: dict[object, Fault] = {}

    def set(self, scope: object, fault: Fault | None) -> None:
        with self._lock:
            if fault is None:
                self._faults.pop(scope, None)
            else:
                # A private copy, so the caller's object is never mutated by the countdown.
                self._faults[scope] = replace(fault)

    def take(self, scope: object) -> Fault | None:
        with self._lock:
            fault = self._faults.get(scope)
            if fault is None:
                return None
            taken = replace(fault)
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    del self._faults[scope]
            return taken


def immediate_reply(fault: Fault, *, weight_limit: int, now_ms: int) -> Reply | None:
    """The reply for faults that replace the answer outright; None for latency/payload kinds."""
    kind = fault.kind
    retry = [] if fault.retry_after_s is None else [("Retry-After", str(int(fault.retry_after_s)))]
    if kind == "http_500":
        return Reply.error(500, -1000, MSG_UNKNOWN)
    if kind == "http_503":
        return Reply.error(503, -1001, MSG_SERVICE_UNAVAILABLE)
    if kind == "http_503_unknown":
        return Reply.error(503, -1000, MSG_UNKNOWN_503)
    if kind == "http_408":
        return Reply.error(408, -1007, MSG_TIMEOUT)
    if kind == "html_403":
        return Reply(403, WAF_403_HTML, content_type="text/html")
    if kind == "rate_limit_429":
        return Reply.error(429, -1003, too_many_requests_msg(weight_limit), retry)
    if kind == "ban_418":
        ban_s = fault.retry_after_s if fault.retry_after_s is not None else DEFAULT_BAN_S
        return Reply.error(418, -1003, banned_msg(now_ms + ban_s * 1000), retry)
    if kind == "reset":
        return Reply.abort()
    if kind == "auth_2015":
        return Reply.error(401, -2015, MSG_REJECTED_KEY)
    if kind == "timestamp_1021":
        return Reply.error(400, -1021, MSG_TS_OUTSIDE)
    return None


def _wrong_types(obj: Any) -> Any:
    if isinstance(obj, list):
        out = []
        for row in obj:
            row = dict(row) if isinstance(row, dict) else {}
            for i, name in enumerate(DECIMAL_FIELDS):
                row[name] = "abc" if i % 2 == 0 else {"value": row.get(name, "1.0")}
            out.append(row)
        return out
    if isinstance(obj, dict):
        return {k: "abc" for k in obj}
    return "abc"


def _missing_fields(obj: Any) -> Any:
    if isinstance(obj, list):
        return [{k: v for k, v in row.items() if k != "availableBalance"} for row in obj]
    if isinstance(obj, dict):
        return {k: v for k, v in obj.items() if k != "serverTime"}
    return obj


def render_payload(obj: Any, kinds: list[str]) -> Reply:
    """Serialise a 200 answer, deformed by the payload faults in `kinds` (in order)."""
    obj = copy.deepcopy(obj)
    truncate = False
    for kind in kinds:
        if kind == "not_a_list":
            obj = {"foo": 1}
        elif kind == "wrong_types":
            obj = _wrong_types(obj)
        elif kind == "missing_fields":
            obj = _missing_fields(obj)
        elif kind == "truncated_json":
            truncate = True
    body = dumps(obj)
    if truncate:
        body = body[: len(body) // 2]
        try:  # Halving a scalar-ish body could leave valid JSON; it must never parse.
            json.loads(body)
            body = body[:-1] if len(body) > 1 else b"["
        except ValueError:
            pass
    return Reply(200, body)
