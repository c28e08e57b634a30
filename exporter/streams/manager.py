"""Places stream members on connections and answers `state()`: the layer's face to the engine.

Every stream connection runs on ONE asyncio loop in ONE thread (`user-streams`):
hundreds of accounts cost hundreds of members on a few sockets, not threads. The only
other threads are a small pool for the blocking listenKey REST calls.

A stream that is down never holds a scrape and never stops polling: the account is
then exactly what it is without a stream.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from exporter.listenkey import ListenKeys
from exporter.loopthread import LoopThread
from exporter.streams.connection import Connection, Link, Member
from exporter.streams.events import StreamState
from exporter.streams.tuning import MAX_STREAMS_PER_CONNECTION, REST_THREADS, AttemptLimiter, Tuning
from exporter.streams.user import UserConnection, UserLink, UserMember
from exporter.targets import Target, TargetKey
from exporter.transport import Pools

_T = TypeVar("_T")


class Layer:
    """The loop, the attempt limiter and the REST pool every kind of connection shares."""

    def __init__(self, connections_per_5m: int, tuning: Tuning | None = None, name: str = "user-streams") -> None:
        self.tuning = tuning or Tuning()
        self.limiter = AttemptLimiter(connections_per_5m)
        self.rng = random.Random()
        self._pool = ThreadPoolExecutor(max_workers=REST_THREADS, thread_name_prefix="listenkey")
        self.loop = LoopThread(name)
        self.link = Link(self.tuning, self.limiter, self.rng, self.rest)
        self.connections: list[Connection] = []
        self._start_lock = threading.Lock()  # market streams start it from fetch threads too
        self._closed = False

    async def rest(self, call: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    def place(self, member: Member, fits: Callable[[Connection], bool],
              make: Callable[[], Connection]) -> Connection:
        """On the loop: the member on a connection with room that `fits`, or on a new one."""
        conn = next((c for c in self.connections if fits(c) and not c.full), None)
        if conn is None:
            conn = make()
            self.connections.append(conn)
            conn.add(member)
            conn.task = asyncio.create_task(conn.run(), name=f"stream-{len(self.connections)}")
        else:
            conn.add(member)
        return conn

    def unplace(self, conn: Connection, ident: Hashable) -> None:
        """On the loop: the member off its connection (UNSUBSCRIBEd); a connection left empty ends."""
        conn.remove(ident)
        if not conn.members and conn in self.connections:
            if conn.task is not None:
                conn.task.cancel()
            self.connections.remove(conn)

    def start(self, then: Callable[[], None]) -> None:
        """Run the loop (once, whoever asks first; never again once closed) and `then()` on it."""
        with self._start_lock:
            if self._closed:
                return
            if not self.loop.started:
                self.loop.start(self._main)
        self.loop.call(then)

    def close(self, timeout: float = 2.0) -> None:
        with self._start_lock:
            self._closed = True
        self.loop.stop(timeout)
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _main(self, stop: asyncio.Event) -> None:
        await stop.wait()
        tasks = [c.task for c in self.connections if c.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class StreamManager:
    """The user data streams of every account configured with `user_stream: true`."""

    def __init__(self, targets: Iterable[Target], on_event: Callable[[TargetKey, bool], None],
                 connections_per_5m: int, pools: Pools, tuning: Tuning | None = None,
                 on_modes: Callable[[TargetKey], None] | None = None, keys_per_connection: int = 1) -> None:
        """`on_event(key, gap)`: an event (or a gap, then True) asks for a REST refresh of the account.
        `on_modes(key)`: ACCOUNT_CONFIG_UPDATE changed the account's modes (re-read them by REST).
        `keys_per_connection` > 1: USD-M accounts share connections (stream mode)."""
        self.layer = Layer(connections_per_5m, tuning)
        self.tuning = self.layer.tuning
        self.limiter = self.layer.limiter
        self.keys_per_connection = keys_per_connection
        self._user = UserLink(resync=lambda key: on_event(key, True), refresh=lambda key: on_event(key, False),
                              modes_changed=on_modes)
        self._pools = pools  # listenKey calls share each host's pool with the REST refreshes
        self._lock = threading.Lock()
        self.streams: dict[TargetKey, UserMember] = {}
        self._conn_of: dict[TargetKey, Connection] = {}
        for target in targets:
            self.streams[target.key] = self._member(target)

    def _member(self, target: Target) -> UserMember:
        transport = self._pools.get(target.host.base_url)
        keys = ListenKeys(target.host, transport, target.account.api_key, target.market,
                          target.account.timeout_seconds)
        return UserMember(target, keys, StreamState())

    def update(self, targets: Iterable[Target], keys_per_connection: int | None = None) -> None:
        """A reloaded config: streams of targets that are gone or replaced close (their listenKey
        is left alone, never DELETEd), new targets' streams open; unchanged ones carry on.
        A changed `keys_per_connection` applies to the streams opened from now on."""
        if keys_per_connection is not None:
            self.keys_per_connection = keys_per_connection
        wanted = {target.key: target for target in targets}
        with self._lock:
            gone = [key for key, member in self.streams.items()
                    if key not in wanted or wanted[key] is not member.target]
            for key in gone:
                del self.streams[key]
            added = [self._member(target) for key, target in wanted.items() if key not in self.streams]
            for member in added:
                self.streams[member.target.key] = member
        self.layer.loop.call(self._respawn, gone, added)  # not running yet: start() opens them all

    def _respawn(self, gone: list[TargetKey], added: list[UserMember]) -> None:
        """On the loop: members that are gone leave their connections, new ones are placed."""
        for key in gone:
            conn = self._conn_of.pop(key, None)
            if conn is not None:
                self.layer.unplace(conn, key)
        for member in added:
            self._place(member)

    def _shares(self, member: UserMember) -> bool:
        return self.keys_per_connection > 1 and member.target.market == "usdm"

    def _place(self, member: UserMember) -> None:
        key = member.target.key
        if key in self._conn_of:
            return
        base = member.target.account.stream_url_for(member.target.market)
        shared = self._shares(member)
        capacity = min(self.keys_per_connection, MAX_STREAMS_PER_CONNECTION) if shared else 1

        def fits(conn: Connection) -> bool:
            return isinstance(conn, UserConnection) and conn.subscribes and shared and conn.base == base

        self._conn_of[key] = self.layer.place(
            member, fits, lambda: UserConnection(self.layer.link, self._user, base, capacity, shared))

    def connections(self) -> int:
        """Connections the streams use (open or being opened)."""
        return len(self.layer.connections)

    def state(self, key: TargetKey) -> StreamState | None:
        member = self.streams.get(key)
        return None if member is None else member.state

    # ---- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        if self.streams:
            self.layer.start(self._place_all)

    def close(self, timeout: float = 2.0) -> None:
        """Close every connection (never DELETE a listenKey: the user's bots may share it)."""
        self.layer.close(timeout)

    def _place_all(self) -> None:
        with self._lock:
            members = list(self.streams.values())
        for member in members:
            self._place(member)
