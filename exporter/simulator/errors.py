"""Binance error vocabulary and the transport-neutral reply the pipeline produces.

Messages are copied verbatim from Binance's USDⓈ-M error-code page (including
its "occured" typo) so client code is exercised against the real strings.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

MSG_UNKNOWN = "An unknown error occured while processing the request."
MSG_SERVICE_UNAVAILABLE = "Service Unavailable."
MSG_UNKNOWN_503 = "Unknown error, please check your request or try again later."
MSG_TIMEOUT = (
    "Timeout waiting for response from backend server. "
    "Send status unknown; execution status unknown."
)
MSG_BAD_KEY_FORMAT = "API-key format invalid."
MSG_REJECTED_KEY = "Invalid API-key, IP, or permissions for action."
MSG_TS_OUTSIDE = "Timestamp for this request is outside of the recvWindow."
MSG_TS_AHEAD = "Timestamp for this request was 1000ms ahead of the server's time."
MSG_BAD_SIGNATURE = "Signature for this request is not valid."
MSG_NOT_FOUND = "Not found, unauthenticated, or unauthorized."
MSG_DUPLICATE_PARAM = "Duplicate values for a parameter detected."
MSG_METHOD_NOT_ALLOWED = "Method not allowed."


def mandatory_param_msg(name: str) -> str:
    return f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed."


def invalid_param_msg(name: str) -> str:
    return f"Data sent for parameter '{name}' is not valid."


def too_many_requests_msg(limit: int) -> str:
    return (
        f"Too many requests; current limit is {limit} requests per minute. "
        "Please use the websocket for live updates to avoid polling the API."
    )


def banned_msg(until_ms: int) -> str:
    return (
        f"Way too many requests; IP banned until {until_ms}. "
        "Please use the websocket for live updates to avoid bans."
    )


def dumps(obj: Any) -> bytes:
    """Compact JSON, like Binance's own bodies (no spaces after separators)."""
    return json.dumps(obj, separators=(",", ":")).encode("utf-8")


class ApiError(Exception):
    """Raised deep in validation so the pipeline can turn it into one error reply."""

    def __init__(self, status: int, code: int, msg: str) -> None:
        super().__init__(f"{status} {code} {msg}")
        self.status = status
        self.code = code
        self.msg = msg

    def reply(self) -> Reply:
        return Reply.error(self.status, self.code, self.msg)


@dataclass
class Reply:
    """What to send back, decoupled from http.server so the pipeline stays testable.

    `reset=True` means "send nothing, abort the TCP connection".
    """

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)
    reset: bool = False

    @classmethod
    def json(cls, status: int, obj: Any, headers: list[tuple[str, str]] | None = None) -> Reply:
        return cls(status, dumps(obj), headers=list(headers or []))

    @classmethod
    def error(
        cls, status: int, code: int, msg: str, headers: list[tuple[str, str]] | None = None
    ) -> Reply:
        return cls.json(status, {"code": code, "msg": msg}, headers)

    @classmethod
    def abort(cls) -> Reply:
        return cls(0, reset=True)
