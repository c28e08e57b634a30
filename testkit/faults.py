"""Fault injection: what can go wrong on Binance's side, on demand.

Faults exist so the exporter's error handling can be exercised
deterministically instead of waiting for production to misbehave.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from exporter import schema
from exporter.simulator import Reply
from exporter.simulator.gate import MSG_REJECTED_KEY, MSG_TS_OUTSIDE, banned_msg, dumps, too_many_requests_msg

FAULT_KINDS: tuple[str, ...] = (
    "latency", "http_500", "http_503", "http_503_unknown", "http_408", "html_403", "truncated_json",
    "wrong_types", "missing_fields", "not_a_list", "rate_limit_429", "ban_418", "reset", "auth_2015",
    "timestamp_1021", "raw",
)
# Kinds that still produce the normal answer, only deformed; they need the payload first.
PAYLOAD_KINDS = frozenset({"truncated_json", "wrong_types", "missing_fields", "not_a_list"})

MSG_UNKNOWN = "An unknown error occured while processing the request."
MSG_SERVICE_UNAVAILABLE = "Service Unavailable."
MSG_UNKNOWN_503 = "Unknown error, please check your request or try again later."
MSG_TIMEOUT = "Timeout waiting for response from backend server. Send status unknown; execution status unknown."
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
# Every field the parser requires (a decimal it exports), from the schema, plus /time's serverTime.
REQUIRED_FIELDS = frozenset({"serverTime"} | {
    f.json for table in vars(schema).values() if isinstance(table, tuple)
    for f in table if isinstance(f, schema.Field) and f.kind == "decimal" and f.metric})
_DECIMAL_RE = re.compile(r"-?\d+(\.\d+)?")


@dataclass
class Fault:
    """One injected misbehaviour; `times=None` keeps it until cleared.

    `path` limits it to requests for that path. Kind "raw" answers exactly
    `status`, `headers` and `body` (Content-Length is added when not given).
    """

    kind: str
    times: int | None = None
    latency_s: float = 0.0
    retry_after_s: int | None = 30
    path: str | None = None
    status: int = 200
    headers: Sequence[tuple[str, str]] = ()
    body: bytes = b""

    def __post_init__(self) -> None:
        # Fail at set-up time: a typo in a test should not silently mean "no fault".
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {FAULT_KINDS}")
        if self.times is not None and self.times < 1:
            raise ValueError("Fault.times must be None or >= 1")
        if self.latency_s < 0:
            raise ValueError("Fault.latency_s must be >= 0")
        if not 100 <= self.status <= 999 or not isinstance(self.body, bytes):
            raise ValueError("Fault status must be 100-999 and body bytes")
        self.headers = tuple((str(name), str(value)) for name, value in self.headers)


class FaultBook:
    """Thread-safe store of active faults per (scope, path); `take` consumes one use atomically."""

    GLOBAL = object()

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: dict[tuple[object, str | None], Fault] = {}

    def set(self, scope: object, fault: Fault | None) -> None:
        """A fault replaces the scope's fault for the same path; None clears all of the scope's."""
        with self._lock:
            if fault is None:
                for key in [k for k in self._faults if k[0] is scope or k[0] == scope]:
                    del self._faults[key]
            else:  # a private copy: the caller's object never counts down
                self._faults[(scope, fault.path)] = replace(fault)

    def take(self, scope: object, path: str) -> Fault | None:
        """The scope's fault for `path` (a path-specific one first)."""
        with self._lock:
            for key in ((scope, path), (scope, None)):
                fault = self._faults.get(key)
                if fault is not None:
                    taken = replace(fault)
                    if fault.times is not None:
                        fault.times -= 1
                        if fault.times <= 0:
                            del self._faults[key]
                    return taken
            return None


def fault_reply(fault: Fault, *, weight_limit: int, spot: bool, now_ms: int) -> Reply | None:
    """The reply for faults that replace the answer outright; None for latency and payload kinds."""
    retry = [] if fault.retry_after_s is None else [("Retry-After", str(int(fault.retry_after_s)))]
    ban_s = fault.retry_after_s if fault.retry_after_s is not None else DEFAULT_BAN_S
    replies: dict[str, Callable[[], Reply]] = {
        "http_500": lambda: Reply.error(500, -1000, MSG_UNKNOWN),
        "http_503": lambda: Reply.error(503, -1001, MSG_SERVICE_UNAVAILABLE),
        "http_503_unknown": lambda: Reply.error(503, -1000, MSG_UNKNOWN_503),
        "http_408": lambda: Reply.error(408, -1007, MSG_TIMEOUT),
        "html_403": lambda: Reply(403, WAF_403_HTML, content_type="text/html"),
        "rate_limit_429": lambda: Reply.error(429, -1003, too_many_requests_msg(weight_limit, spot), retry),
        "ban_418": lambda: Reply.error(418, -1003, banned_msg(now_ms + ban_s * 1000, spot), retry),
        "reset": Reply.abort,
        "auth_2015": lambda: Reply.error(401, -2015, MSG_REJECTED_KEY),
        "timestamp_1021": lambda: Reply.error(400, -1021, MSG_TS_OUTSIDE),
        "raw": lambda: Reply(fault.status, fault.body, headers=list(fault.headers), raw=True),
    }
    make = replies.get(fault.kind)
    return None if make is None else make()


def _wrong_types(obj: Any, counter: list[int]) -> Any:
    """Every decimal string and integer becomes "abc" or an object, alternately."""
    if isinstance(obj, list):
        return [_wrong_types(item, counter) for item in obj]
    if isinstance(obj, dict):
        return {key: _wrong_types(value, counter) for key, value in obj.items()} or {"foo": "abc"}
    if (isinstance(obj, str) and _DECIMAL_RE.fullmatch(obj)) or (isinstance(obj, int) and not isinstance(obj, bool)):
        counter[0] += 1
        return "abc" if counter[0] % 2 else {"value": obj}
    return obj


def _missing_fields(obj: Any) -> Any:
    if isinstance(obj, list):
        return [_missing_fields(item) for item in obj]
    if isinstance(obj, dict):
        return {k: _missing_fields(v) for k, v in obj.items() if k not in REQUIRED_FIELDS}
    return obj


def deform(kind: str, reply: Reply) -> Reply:
    """A payload fault applied to a normal 200 answer."""
    if kind == "truncated_json":
        body = reply.body[: len(reply.body) // 2]
        try:  # halving a tiny body could leave valid JSON; it must never parse
            json.loads(body)
            body = body[:-1] if len(body) > 1 else b"["
        except ValueError:
            pass
        return replace(reply, body=body)
    try:
        obj = json.loads(reply.body)
    except ValueError:  # already truncated by another fault
        return reply
    if kind == "not_a_list":
        obj = {"foo": 1}
    elif kind == "wrong_types":
        obj = _wrong_types(obj, [0])
    elif kind == "missing_fields":
        obj = _missing_fields(obj)
    return replace(reply, body=dumps(obj))
