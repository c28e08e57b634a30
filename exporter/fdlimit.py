"""The file descriptors the exporter needs, and the soft RLIMIT_NOFILE raised to fit them.

What the exporter holds open follows from its config: each Binance host's
keep-alive pool holds at most as many connections as requests can run on it
at once, and never more than `max_concurrency` (see `transport.Pools`), the HTTP
front at most `MAX_CONNECTIONS` clients, plus
`FD_RESERVE` for everything else (logs, listening socket, poller, files read
at start). Many systems still start processes with a soft limit of 1024: it is
raised at start as far as needed, up to the hard limit (the admin's word,
which a process cannot pass). If even the least that works cannot fit, the
exporter refuses to start with one line, instead of failing connections one
by one at run time.
"""

from __future__ import annotations

from dataclasses import dataclass

from exporter.httpserver import FD_RESERVE, MAX_CONNECTIONS

try:
    import resource
except ImportError:  # not on Windows
    resource = None  # type: ignore[assignment]

# The fewest client connections the HTTP front should have: a few Prometheus
# servers with their keep-alive connections and every worker busy, with room.
MIN_FRONT_CONNECTIONS = 64


class FdLimitError(Exception):
    """The hard limit leaves too few file descriptors; the message is one line a user can act on.

    `front`: the client connections that are left all the same (a reload keeps its config
    and shrinks the HTTP front to what is left, rather than failing connections at random)."""

    def __init__(self, message: str, front: int = 0) -> None:
        super().__init__(message)
        self.front = front


@dataclass(frozen=True)
class FdPlan:
    upstream: int  # connections to Binance the pools may hold
    front: int  # client connections the HTTP front may hold
    soft_limit: int | None  # None: unlimited (or no resource module)

    @property
    def needed(self) -> int:
        return self.upstream + self.front + FD_RESERVE


def fit_open_files(upstream: int) -> FdPlan:
    """Raise the soft limit for `upstream` pooled connections, the front and the reserve.

    Returns how many client connections the front may hold within what was
    granted, or raises FdLimitError when the hard limit is below the least that works.
    """
    if resource is None:
        return FdPlan(upstream, MAX_CONNECTIONS, None)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = upstream + MAX_CONNECTIONS + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
        if target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
            except (ValueError, OSError):
                pass
    if soft == resource.RLIM_INFINITY:
        return FdPlan(upstream, MAX_CONNECTIONS, None)
    least = upstream + MIN_FRONT_CONNECTIONS + FD_RESERVE
    if soft < least:
        shown_hard = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
        raise FdLimitError(
            f"needs at least {least} open files ({upstream} connections to Binance, pooled and streams, "
            f"{MIN_FRONT_CONNECTIONS} for scrapes, {FD_RESERVE} reserved) but may open only {soft} "
            f"(hard limit {shown_hard}); raise the hard limit (ulimit -Hn, systemd LimitNOFILE=, "
            f"--ulimit nofile=) or lower max_concurrency", front=max(0, soft - upstream - FD_RESERVE))
    return FdPlan(upstream, min(MAX_CONNECTIONS, soft - upstream - FD_RESERVE), soft)
