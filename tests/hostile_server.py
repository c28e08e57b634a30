"""A loopback HTTP server that answers whatever a test scripts, byte by byte and as slowly as it likes.

The simulator speaks Binance faithfully; this one plays the upstream that
doesn't: huge, endless, trickling, compressed or malformed answers. Each
request's answer is `script(path) -> list of (bytes, delay_before_s)`; the time
endpoint answers normally unless the script says otherwise. Every connection
stops writing when the server stops, so no test leaves a thread trickling.
"""

from __future__ import annotations

import json
import socket
import socketserver
import threading
import time
from collections.abc import Callable

Chunks = list[tuple[bytes, float]]
Script = Callable[[str], "Chunks | None"]


def response(status: int, body: bytes, headers: dict[str, str] | None = None,
             content_type: str = "application/json") -> bytes:
    lines = [f"HTTP/1.1 {status} X", f"Content-Type: {content_type}", f"Content-Length: {len(body)}",
             *(f"{k}: {v}" for k, v in (headers or {}).items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def trickle(data: bytes, every_s: float) -> Chunks:
    return [(data[i:i + 1], every_s) for i in range(len(data))]


def server_time() -> bytes:
    return response(200, json.dumps({"serverTime": int(time.time() * 1000)}).encode())


class HostileServer:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[str] = []
        self.connections = 0
        self.answered = 0  # answers sent in full, every scripted chunk of them
        self._stop = threading.Event()
        outer = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                outer.connections += 1
                self.request.settimeout(30)
                buf = b""
                while not outer._stop.is_set():
                    while b"\r\n\r\n" not in buf:
                        try:
                            data = self.request.recv(65536)
                        except OSError:
                            return
                        if not data:
                            return
                        buf += data
                    head, _, buf = buf.partition(b"\r\n\r\n")
                    path = head.split(b" ", 2)[1].decode("latin-1").split("?")[0]
                    outer.requests.append(path)
                    chunks = outer.script(path)
                    if chunks is None:
                        chunks = [(server_time(), 0.0)]
                    for data, delay in chunks:
                        if delay and outer._stop.wait(delay):
                            return
                        try:
                            self.request.sendall(data)
                        except OSError:
                            return
                    outer.answered += 1

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True
            request_queue_size = 256

        self._server = Server(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)

    def __enter__(self) -> HostileServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()


def balance_script(answer: Callable[[], Chunks], path_prefix: str = "/fapi/v3/balance") -> Script:
    """`answer()` for the balance endpoint, a normal clock for everything else."""
    return lambda path: answer() if path.startswith(path_prefix) else None


__all__ = ["HostileServer", "balance_script", "response", "server_time", "socket", "trickle"]
