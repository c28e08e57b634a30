"""Hostile stream servers over real WebSocket on loopback: only that account's stream degrades.

Each account points its stream_base_url at a path of one hostile server whose
first segment names the behaviour; listenKeys come from the simulator. A
healthy account on the simulator's own stream server must keep streaming, and
every account keeps being polled.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Iterator

import pytest
from test_streams import Live, account, account_update, now_ms
from websockets.asyncio.server import ServerConnection, serve

from conftest import ACCOUNTS, OFFICIAL_ROW, value, wait_until
from testkit import SimAccount, Simulator

QUIET = logging.getLogger("tests.hostile.wire")  # the hostile side's own errors are the point: not logged
QUIET.disabled = True
MODES = ("garbage", "binary", "huge", "absurd", "foreign", "silent", "flood", "pingflood")


class HostileServer:
    """WebSocket servers that misbehave per path: /<mode>/ws?listenKey=..."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self.raw_port = 0  # accepts TCP and never speaks (no handshake)
        self.handshakes: dict[str, int] = dict.fromkeys(MODES, 0)
        ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self.thread.start()
        ready.wait(5)

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._main(ready))

    async def _main(self, ready: threading.Event) -> None:
        self.stop_event = asyncio.Event()
        held: list[asyncio.StreamWriter] = []

        async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            held.append(writer)  # accepted, never answered

        raw = await asyncio.start_server(mute, "127.0.0.1", 0)
        self.raw_port = raw.sockets[0].getsockname()[1]
        async with serve(self._handle, "127.0.0.1", 0, max_size=None, ping_interval=None, logger=QUIET) as server:
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            await self.stop_event.wait()
        raw.close()

    async def _handle(self, ws: ServerConnection) -> None:
        mode = ws.request.path.split("/")[1]
        self.handshakes[mode] += 1
        if mode == "garbage":
            await ws.send('{"e": "ACCOUNT_UPDATE", "E": 1, "a": {')
        elif mode == "binary":
            await ws.send(b"\x00\x01\x02")
        elif mode == "huge":
            await ws.send("x" * (2 << 20))
        elif mode == "absurd":
            for wallet in ("1e400", "NaN", "9" * 200, True):
                await ws.send(json.dumps(account_update(wallet, "1")))
        elif mode == "foreign":
            await ws.send(json.dumps({"e": "listenKeyExpired", "E": now_ms(), "listenKey": "someone-else" * 4}))
            await ws.send(json.dumps({"stream": "someone-else" * 4, "data": account_update("1", "1")}))
        elif mode == "flood":
            event = json.dumps({"e": "TRADE_LITE", "E": now_ms()})
            while True:
                await ws.send(event)
        elif mode == "pingflood":  # issue 22: pings as fast as it can, never reading our pongs
            ws.transport.pause_reading()
            for i in range(100_000):
                await ws.ping(i.to_bytes(4, "big"))
        elif mode == "silent":
            ws.transport.pause_reading()  # handshake done, then nothing: not even pongs
        await asyncio.sleep(3600)

    def url(self, mode: str) -> str:
        return f"ws://127.0.0.1:{self.port}/{mode}"

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(2)


@pytest.fixture
def hostile() -> Iterator[HostileServer]:
    server = HostileServer()
    yield server
    server.stop()


def test_each_hostile_stream_degrades_alone(hostile: HostileServer) -> None:
    creds = [(f"key-hostile-{m}-" + "k" * 12, f"secret-hostile-{m}-" + "s" * 30) for m in MODES]
    healthy = ACCOUNTS[0]
    sim = Simulator([SimAccount(api_key=k, api_secret=s, balances=[dict(OFFICIAL_ROW)]) for k, s in creds]
                    + [SimAccount(api_key=healthy.key, api_secret=healthy.secret, balances=[dict(OFFICIAL_ROW)])])
    accounts = [{"alias": mode, "api_key": k, "api_secret": s, "stream_base_url": hostile.url(mode)}
                for mode, (k, s) in zip(MODES, creds, strict=True)]
    accounts.append({"alias": "mute", "api_key": creds[0][0], "api_secret": creds[0][1],
                     "stream_base_url": f"ws://127.0.0.1:{hostile.raw_port}/private"})
    accounts.append(account(healthy))
    lv = Live(sim, accounts)
    try:
        lv.settled("alpha")
        streams = lv.engine.streams
        wait_until(lambda: streams.state(("foreign", "usdm")).up, timeout=10)
        foreign_key = streams.streams[("foreign", "usdm")].key

        def degraded() -> bool:
            s = {mode: streams.state((mode, "usdm")) for mode in MODES}
            return (all(s[m].events["invalid"] >= 1 and s[m].reconnects >= 1
                        for m in ("garbage", "binary", "huge", "absurd", "flood", "pingflood"))
                    and hostile.handshakes["silent"] >= 2 and s["silent"].events["invalid"] == 0
                    and s["foreign"].events["invalid"] >= 2)
        wait_until(degraded, timeout=15)
        foreign = streams.state(("foreign", "usdm"))
        # Another key's expiry is not ours: counted as invalid, no renewal.
        assert foreign.events["listenKeyExpired"] == 0 and foreign.events["ACCOUNT_UPDATE"] == 0
        assert streams.streams[("foreign", "usdm")].key in (foreign_key, None) and foreign_key is not None
        assert foreign_key.reveal() == sim.listen_keys.by_account[(creds[MODES.index("foreign")][0], "fapi")].value
        absurd = streams.state(("absurd", "usdm"))
        assert absurd.events["ACCOUNT_UPDATE"] == 0 and absurd.assets == {}  # nothing half-applied
        assert streams.state(("mute", "usdm")).up is False
        # The healthy account streams on, and everyone is polled as before.
        sim.latency_s = 1.0
        sim.push_event(healthy.key, "usdm", account_update("4242", "42"))
        wait_until(lambda: value(lv.metrics(), "binance_futures_balance", alias="alpha", asset="USDT") == 4242.0,
                   timeout=2)
        sim.latency_s = 0.0
        m = lv.metrics()
        for alias in (*MODES, "mute", "alpha"):
            assert value(m, "binance_futures_up", alias=alias) == 1.0, alias
        assert value(m, "binance_futures_stream_up", alias="alpha") == 1.0
        assert value(m, "binance_futures_stream_up", alias="mute") == 0.0
        # One loop thread for every stream, a bounded pool for listenKey calls.
        names = [t.name for t in threading.enumerate()]
        assert names.count("user-streams") == 1
        assert sum(n.startswith("listenkey") for n in names) <= 4
        assert sim.listen_keys.deletes == 0
    finally:
        lv.close()
