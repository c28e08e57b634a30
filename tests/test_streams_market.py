"""Public market streams (issue 24's connection kind) on the one connection loop, over real WebSocket
on loopback: symbols SUBSCRIBEd as <symbol>@markPrice@1s (batched, URL first), markPriceUpdate
handed to the sink as Decimal, up/down per market, UNSUBSCRIBE when a symbol is no longer watched."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from websockets.asyncio.server import ServerConnection, serve

from conftest import wait_until
from exporter.loopthread import LoopThread
from exporter.parsing import BadResponse
from exporter.streams.manager import Layer
from exporter.streams.market import MarketStreams, mark_stream, parse_mark
from exporter.streams.tuning import Tuning

FAST = Tuning(backoff_base_s=0.05, backoff_max_s=0.2, handshake_timeout_s=1.0, send_interval_s=0.1)


class MarkServer:
    """A Binance-like public stream server: subscriptions per connection, marks pushed on demand."""

    def __init__(self) -> None:
        self.subscribed: dict[ServerConnection, set[str]] = {}
        self.messages: list[dict[str, Any]] = []
        self.handshakes = 0
        self.ready = threading.Event()
        self.thread = LoopThread("mark-server")
        self.thread.start(self._main)
        self.ready.wait(5)
        assert self.thread.loop is not None
        self.loop = self.thread.loop

    async def _main(self, stop: asyncio.Event) -> None:
        async with serve(self._handle, "127.0.0.1", 0) as server:
            self.port = server.sockets[0].getsockname()[1]
            self.ready.set()
            await stop.wait()

    async def _handle(self, ws: ServerConnection) -> None:
        self.handshakes += 1
        query = parse_qs(urlsplit(ws.request.path).query)
        self.subscribed[ws] = set(query.get("streams", [""])[0].split("/")) - {""}
        try:
            async for text in ws:
                data = json.loads(text)
                self.messages.append(data)
                names = set(data["params"])
                if data["method"] == "SUBSCRIBE":
                    self.subscribed[ws] |= names
                else:
                    self.subscribed[ws] -= names
                await ws.send(json.dumps({"result": None, "id": data["id"]}))
        finally:
            del self.subscribed[ws]

    def streams(self) -> set[str]:
        return {name for names in list(self.subscribed.values()) for name in names}

    def push(self, symbol: str, price: str, time_ms: int | None = None, raw: str | None = None) -> None:
        name = mark_stream(symbol)
        data = {"e": "markPriceUpdate", "E": time_ms or int(time.time() * 1000), "s": symbol, "p": price,
                "i": price, "P": price, "r": "0.00010000", "T": 1}

        async def send() -> None:
            for ws, names in list(self.subscribed.items()):
                if name in names:
                    await ws.send(raw if raw is not None else json.dumps({"stream": name, "data": data}))
        asyncio.run_coroutine_threadsafe(send(), self.loop).result(5)

    def drop(self) -> None:
        async def close() -> None:
            for ws in list(self.subscribed):
                ws.transport.abort()
        asyncio.run_coroutine_threadsafe(close(), self.loop).result(5)

    def stop(self) -> None:
        self.thread.stop()


@pytest.fixture
def marks() -> Any:
    server = MarkServer()
    layer = Layer(300, FAST, name="market-test")
    got: list[tuple[str, str, Decimal, int]] = []
    streams = MarketStreams(layer, {"usdm": f"ws://127.0.0.1:{server.port}/market",
                                    "coinm": f"ws://127.0.0.1:{server.port}"}, lambda *a: got.append(a))
    yield server, streams, got
    layer.close()
    server.stop()


def test_marks_reach_the_sink_per_market_on_one_connection_each(marks) -> None:
    server, streams, got = marks
    assert streams.state() == {"usdm": False, "coinm": False}
    symbols = [f"SYM{i}USDT" for i in range(300)]
    streams.watch("usdm", ["BTCUSDT", "ETHUSDT", *symbols])
    streams.watch("coinm", ["BTCUSD_PERP"])
    wait_until(lambda: mark_stream("SYM299USDT") in server.streams() and streams.state() == {
        "usdm": True, "coinm": True}, timeout=10)
    assert server.handshakes == 2  # one connection per market
    assert "btcusdt@markPrice@1s" in server.streams() and "btcusd_perp@markPrice@1s" in server.streams()
    subscribes = [m for m in server.messages if m["method"] == "SUBSCRIBE"]
    assert len(subscribes) <= 4 and all(len(m["params"]) <= 200 for m in subscribes)  # batched
    server.push("BTCUSDT", "61234.56780000")
    server.push("BTCUSD_PERP", "61200.1")
    wait_until(lambda: len(got) == 2, timeout=5)
    assert {(g[0], g[1], g[2]) for g in got} == {("usdm", "BTCUSDT", Decimal("61234.56780000")),
                                                 ("coinm", "BTCUSD_PERP", Decimal("61200.1"))}
    # A symbol no longer held is UNSUBSCRIBEd; bad marks reach no sink.
    streams.watch("usdm", ["BTCUSDT"])
    wait_until(lambda: mark_stream("ETHUSDT") not in server.streams(), timeout=5)
    server.push("BTCUSDT", "NaN")
    server.push("BTCUSDT", "1", time_ms=2**53 - 2)
    wait_until(lambda: streams.status.invalid.get("usdm", 0) == 2, timeout=5)
    server.push("BTCUSDT", "60000")
    wait_until(lambda: got[-1][2] == Decimal("60000"), timeout=5)
    assert len(got) == 3


def test_a_cut_market_connection_is_down_then_back_by_itself(marks) -> None:
    server, streams, got = marks
    streams.watch("usdm", ["BTCUSDT"])
    wait_until(lambda: streams.state()["usdm"], timeout=10)
    server.drop()
    wait_until(lambda: server.handshakes == 2 and streams.state()["usdm"], timeout=10)
    server.push("BTCUSDT", "1.5")
    wait_until(lambda: got and got[-1][2] == Decimal("1.5"), timeout=5)


@pytest.mark.parametrize("data", [
    {"e": "markPriceUpdate", "E": 1, "s": "ETHUSDT", "p": "1"}, {"e": "other", "E": 1, "s": "BTCUSDT", "p": "1"},
    {"e": "markPriceUpdate", "E": 1, "s": "BTCUSDT", "p": "-1"}, {"e": "markPriceUpdate", "E": 1, "s": "BTCUSDT"},
    {"e": "markPriceUpdate", "E": True, "s": "BTCUSDT", "p": "1"}, [1],
])
def test_bad_mark_updates_are_refused(data) -> None:
    with pytest.raises(BadResponse):
        parse_mark(data, "BTCUSDT")
    assert parse_mark({"e": "markPriceUpdate", "E": 5, "s": "BTCUSDT", "p": "0.1"}, "BTCUSDT") == (Decimal("0.1"), 5)
