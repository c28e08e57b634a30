"""One asyncio event loop in one daemon thread, for a program that is otherwise threads.

The user data streams (and the simulator's stream server) multiplex many
WebSockets on one loop; everything else calls into that loop from its own
threads. This is the loop's life in one place: start it with the coroutine to
run, hand it calls from any thread, stop it from any thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any


class LoopThread:
    def __init__(self, name: str) -> None:
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    @property
    def started(self) -> bool:
        return self._thread is not None

    def start(self, main: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
        """Run `main(stop)` on a new loop in a new thread; return once the loop exists.
        `main` should return soon after `stop` is set."""
        running = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._stop = asyncio.Event()
            self.loop = loop
            running.set()
            try:
                loop.run_until_complete(main(self._stop))
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name=self.name, daemon=True)
        self._thread.start()
        running.wait()

    def call(self, fn: Callable[..., object], *args: object) -> bool:
        """`fn(*args)` on the loop, from any thread; False if the loop is not (or no longer) running."""
        loop = self.loop
        if loop is None or loop.is_closed():
            return False
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # closed meanwhile
            return False
        return True

    def stop(self, timeout: float = 2.0) -> None:
        """Ask `main` to return, and wait for the thread up to `timeout`."""
        if self._stop is not None:
            self.call(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout)
