"""Request counters, so tests and benchmarks can see what actually hit the wire."""

from __future__ import annotations

import threading
from collections import Counter


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.connections = 0
        self.requests = 0
        self._by_path: Counter[str] = Counter()
        self._by_key: Counter[str] = Counter()

    def connection(self) -> None:
        with self._lock:
            self.connections += 1

    def request(self, path: str, api_key: str | None) -> None:
        with self._lock:
            self.requests += 1
            self._by_path[path] += 1
            if api_key is not None:
                self._by_key[api_key] += 1

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            return {
                "connections": self.connections,
                "requests": self.requests,
                "requests_by_path": dict(self._by_path),
                "requests_by_key": dict(self._by_key),
            }
