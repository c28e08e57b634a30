"""The one connection loop (exporter/streams/connection.py) over real WebSocket on loopback:
batched SUBSCRIBE within Binance's message rate, UNSUBSCRIBE of an expired key, late events of a
dropped key, and no import cycle in the stream layer."""

from __future__ import annotations

import asyncio
import json
import random
import time
from types import SimpleNamespace
from typing import Any

from websockets.asyncio.server import ServerConnection, serve

from exporter.secrets import Secret
from exporter.streams.connection import Link
from exporter.streams.events import StreamState
from exporter.streams.tuning import MAX_PARAMS, AttemptLimiter, Tuning
from exporter.streams.user import UserConnection, UserLink, UserMember

FAST = Tuning(backoff_base_s=0.05, backoff_max_s=0.2, handshake_timeout_s=1.0, send_interval_s=0.12)


class Keys:
    """A listenKey source: a new key per create()."""

    def __init__(self, name: str) -> None:
        self.name, self.made = name, 0

    def create(self) -> Secret:
        self.made += 1
        return Secret(f"{self.name}{self.made}".ljust(20, "k"))

    def keepalive(self) -> None:
        return None


def member(alias: str) -> UserMember:
    target = SimpleNamespace(alias=alias, market="usdm", key=(alias, "usdm"))
    return UserMember(target, Keys(alias), StreamState())  # type: ignore[arg-type]


class Recorder:
    """A stream-mode server that answers every SUBSCRIBE/UNSUBSCRIBE and records when each came."""

    def __init__(self) -> None:
        self.messages: list[tuple[float, dict[str, Any]]] = []
        self.conns: list[ServerConnection] = []

    async def handle(self, ws: ServerConnection) -> None:
        self.conns.append(ws)
        async for text in ws:
            data = json.loads(text)
            self.messages.append((time.monotonic(), data))
            await ws.send(json.dumps({"result": None, "id": data["id"]}))


async def layer(rec: Recorder, run: Any) -> None:
    async with serve(rec.handle, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]

        async def rest(call: Any) -> Any:
            return call()

        refreshed: list[tuple[str, str]] = []
        link = Link(FAST, AttemptLimiter(300), random.Random(1), rest)
        conn = UserConnection(link, UserLink(refreshed.append, refreshed.append, None),
                              f"ws://127.0.0.1:{port}/private", 1000, shared=True)
        try:
            await run(conn)
        finally:
            if conn.task is not None:
                conn.task.cancel()
                await asyncio.gather(conn.task, return_exceptions=True)


async def until(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met"
        await asyncio.sleep(0.02)


def test_joins_are_subscribed_in_batches_within_binances_message_rate() -> None:
    rec = Recorder()
    members = [member(f"acct{i}") for i in range(450)]

    async def run(conn: UserConnection) -> None:
        conn.add(members[0])
        conn.task = asyncio.create_task(conn.run())
        await until(lambda: members[0].state.up)
        for m in members[1:]:
            conn.add(m)
        await until(lambda: all(m.state.up for m in members))

    asyncio.run(layer(rec, run))
    subscribes = [(t, d) for t, d in rec.messages if d["method"] == "SUBSCRIBE"]
    assert sum(len(d["params"]) for _, d in subscribes) == 449
    assert len(subscribes) <= 449 // MAX_PARAMS + 2  # batched: a few messages, not 449
    assert all(len(d["params"]) <= MAX_PARAMS for _, d in subscribes)
    times = [t for t, _ in rec.messages]
    assert all(b - a >= FAST.send_interval_s * 0.9 for a, b in zip(times, times[1:], strict=False))  # < 10/s


def test_an_expired_key_is_unsubscribed_and_its_late_events_touch_no_one() -> None:
    rec = Recorder()
    a, b = member("alpha"), member("bravo")

    async def run(conn: UserConnection) -> None:
        conn.add(a)
        conn.add(b)
        conn.task = asyncio.create_task(conn.run())
        await until(lambda: a.state.up and b.state.up)
        old = a.key.reveal()
        now = int(time.time() * 1000)
        await rec.conns[-1].send(json.dumps({"stream": old, "data": {"e": "listenKeyExpired", "E": now,
                                                                     "listenKey": old}}))
        await until(lambda: any(d["method"] == "UNSUBSCRIBE" and d["params"] == [old] for _, d in rec.messages))
        await until(lambda: a.state.up and a.key is not None and a.key.reveal() != old)
        # A late event for the expired key: dropped, counted on no one.
        await rec.conns[-1].send(json.dumps({"stream": old, "data": {"e": "MARGIN_CALL", "E": now}}))
        # A removed member's key: UNSUBSCRIBEd, and its late events dropped the same way.
        gone = b.key.reveal()
        conn.remove(b.ident)
        await until(lambda: any(d["method"] == "UNSUBSCRIBE" and d["params"] == [gone] for _, d in rec.messages))
        await rec.conns[-1].send(json.dumps({"stream": gone, "data": {"e": "MARGIN_CALL", "E": now}}))
        marker = a.key.reveal()
        await rec.conns[-1].send(json.dumps({"stream": marker, "data": {"e": "MARGIN_CALL", "E": now + 1}}))
        await until(lambda: a.state.margin_calls == 1)

    asyncio.run(layer(rec, run))
    assert a.state.events["invalid"] == 0 and b.state.events["invalid"] == 0
    assert a.state.events["MARGIN_CALL"] == 1 and a.state.events["listenKeyExpired"] == 1
    assert a.state.reconnects == 1 and b.state.reconnects == 0


def test_no_import_cycle_in_the_exporter() -> None:
    """Issue 22: streams.py and stream_mux.py imported each other; nothing in exporter/ may."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    files = {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
             for p in (root / "exporter").rglob("*.py")}
    deps: dict[str, set[str]] = {}
    for name, path in files.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("exporter"):
                found.add(node.module)
                found |= {f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in files}
            elif isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("exporter")}
        deps[name] = {d for d in found if d in files and d != name}
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        for dep in deps[name]:
            assert dep not in path, f"import cycle: {' -> '.join((*path, dep))}"
            if dep not in done:
                visit(dep, (*path, dep))
        done.add(name)

    for name in files:
        visit(name, (name,))
    assert "exporter.streams.connection" in files and "exporter.stream_mux" not in files


def test_a_peer_that_does_not_read_is_dropped() -> None:
    """Issue 22: pongs into an unbounded buffer grew RSS to 1.5 GB while the stream stayed up, and our own
    ping waited on drain() so its timeout never started. Unread bytes past the bound, or stuck past the
    write limit for longer than the ping timeout, drop the connection."""
    from exporter.streams.connection import BoundedConnection

    class Transport:
        def __init__(self) -> None:
            self.size, self.aborted = 0, False

        def get_write_buffer_size(self) -> int:
            return self.size

        def abort(self) -> None:
            self.aborted = True

    def conn(tuning: Tuning) -> tuple[BoundedConnection, Transport]:
        ws = object.__new__(BoundedConnection)
        ws.tuning, ws.dropped, ws._stuck_since, ws.write_limit_high = tuning, None, None, 32 * 1024
        ws.transport = Transport()  # type: ignore[assignment]
        return ws, ws.transport  # type: ignore[return-value]

    ws, transport = conn(Tuning(ping_timeout_s=0.2))
    transport.size = 40 * 1024  # past the write limit, under the bound
    ws.check_outgoing()
    assert not transport.aborted
    ws._stuck_since -= 0.25  # stuck since longer than the ping timeout
    ws.check_outgoing()
    assert transport.aborted and ws.dropped == "the server does not read"
    ws, transport = conn(Tuning())
    transport.size = 65 * 1024  # past the bound: at once
    ws.check_outgoing()
    assert transport.aborted
    ws, transport = conn(Tuning())
    transport.size = 1000
    ws.check_outgoing()
    assert not transport.aborted and ws.dropped is None
