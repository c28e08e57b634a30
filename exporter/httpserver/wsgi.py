"""The WSGI adapter: one parsed request in, the app's answer framed by h11 out (bytes the poller writes)."""

from __future__ import annotations

import email.utils
import io
import sys
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote

import h11

from exporter.httpserver.state import Conn

# WSGI (PEP 3333), as this server calls an app and as exporter.web writes one.
Environ = dict[str, Any]
StartResponse = Callable[..., object]
WsgiApp = Callable[[Environ, StartResponse], Iterable[bytes]]


def wsgi_environ(base: Environ, request: h11.Request, addr: object, tls: bool) -> Environ:
    """The WSGI environ of one request, as wsgiref builds it (minus os.environ: ours holds API secrets)."""
    target = request.target.decode("latin-1")
    path, _, query = target.partition("?")
    env = dict(base)
    env.update({
        "REQUEST_METHOD": request.method.decode("ascii"), "PATH_INFO": unquote(path, "iso-8859-1"),
        "QUERY_STRING": query, "SERVER_PROTOCOL": "HTTP/" + request.http_version.decode("ascii"),
        "REMOTE_ADDR": addr[0] if isinstance(addr, tuple) else "",
        "wsgi.version": (1, 0), "wsgi.url_scheme": "https" if tls else "http", "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr, "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False,
    })
    if tls:
        env["HTTPS"] = "on"
    for name, value in request.headers:
        key = name.decode("ascii").upper().replace("-", "_")
        if "_" in name.decode("ascii"):
            continue  # X_Scrape_Timeout would pass for X-Scrape-Timeout; wsgiref drops these too
        text = value.decode("latin-1")
        if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            env[key] = text
            continue
        key = "HTTP_" + key
        env[key] = f"{env[key]},{text}" if key in env else text
    return env


def run_app(app: WsgiApp, env: Environ) -> tuple[str, list[tuple[str, str]], list[bytes]]:
    """Call a WSGI app; (status, headers, body chunks). Bodies here are small lists of bytes."""
    response: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: object = None) -> Callable[[bytes], None]:
        if response and not exc_info:
            raise AssertionError("start_response called twice")
        response[:] = [status, list(headers)]
        return chunks.append

    chunks: list[bytes] = []
    result = app(env, start_response)
    try:
        chunks.extend(bytes(c) if not isinstance(c, bytes) else c for c in result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    if not response:
        raise AssertionError("the app did not call start_response")
    return response[0], response[1], chunks


def _send(http: h11.Connection, event: h11.Event) -> list[bytes]:
    """h11's bytes for `event`; h11 answers None only for ConnectionClosed, which is never sent here."""
    return http.send_with_data_passthrough(event) or []


def respond(app: WsgiApp, base_environ: Environ, conn: Conn) -> list[bytes]:
    """Run the app for the connection's request; its answer as h11 frames it (HEAD: the head only)."""
    request = conn.request
    assert request is not None
    env = wsgi_environ(base_environ, request, conn.addr, conn.tls)
    status, headers, chunks = run_app(app, env)
    code, _, reason = status.partition(" ")
    head_request = request.method == b"HEAD"
    if not any(name.lower() == "content-length" for name, _ in headers):
        headers.append(("Content-Length", str(sum(len(c) for c in chunks))))
    headers.append(("Date", email.utils.formatdate(usegmt=True)))
    if conn.close_after:
        headers.append(("Connection", "close"))
    http = conn.http
    parts = _send(http, h11.Response(status_code=int(code), headers=headers, reason=reason.encode("latin-1")))
    if not head_request:
        for chunk in chunks:
            if chunk:
                parts += _send(http, h11.Data(data=chunk))
    parts += _send(http, h11.EndOfMessage())
    return parts


def error_response(conn: Conn) -> list[bytes]:
    """A 500 and a close, when the app failed before its answer began (h11 refuses it after)."""
    conn.close_after = True
    body = b"internal error\n"
    http = conn.http
    parts = _send(http, h11.Response(status_code=500, reason=b"Internal Server Error", headers=[
        ("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))),
        ("Connection", "close")]))
    if conn.request is not None and conn.request.method != b"HEAD":
        parts += _send(http, h11.Data(data=body))
    return parts + _send(http, h11.EndOfMessage())
