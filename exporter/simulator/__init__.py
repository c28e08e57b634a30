"""Local simulator of Binance USDⓈ-M Futures' balance API over real HTTP on loopback.

Used by the exporter's ``--demo`` mode, the test suite and the benchmark, so
all three talk to the same faithful stand-in instead of ad-hoc mocks.

Choices where the Binance spec is silent (see /work/shared/binance-api.md §8, §9):

* unknown path → 404 ``{"code":-1099,"msg":"Not found, unauthenticated, or unauthorized."}``;
  non-GET → 405 ``{"code":-1099,"msg":"Method not allowed."}`` with ``Allow: GET``;
  both weigh 1.
* fault ``http_503`` → 503 JSON ``{"code":-1001,"msg":"Service Unavailable."}``.
* rate-limit windows are fixed 1-minute buckets aligned to whole minutes of
  *server* time (local time + ``clock_skew_ms``); requests refused with 429
  still add their weight, requests refused during a ban do not.
* per-account faults apply to signed balance requests that passed validation;
  global faults apply to every request before routing.
* the signed-request check order is documented in ``auth``; the request
  pipeline order in ``pipeline``.
"""

from .generated import account_key, account_secret, generate_accounts
from .faults import FAULT_KINDS, Fault
from .server import Simulator
from .state import SimAccount

__all__ = [
    "FAULT_KINDS",
    "Fault",
    "SimAccount",
    "Simulator",
    "account_key",
    "account_secret",
    "generate_accounts",
]
