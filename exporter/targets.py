"""What the exporter fetches: the hosts a config talks to, one client per credential, and targets.

A target is one account in one market: one fetch unit with its own `up` and
error counter. Hosts are keyed by (base URL, kind); where one URL serves
several kinds (a proxy, the demo's simulator), all but the first kind get
"/<kind>" in their `host` label, so every host keeps its own series.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from dataclasses import replace as dataclasses_replace
from typing import TypeAlias
from urllib.parse import urlsplit

from exporter.client import Client, HostClock
from exporter.clock import Clock
from exporter.config import AccountConfig, Config
from exporter.endpoints import HOST_KINDS, Call, coinm_calls, pm_calls, sub_account_calls, usdm_calls
from exporter.governor import Governor
from exporter.hosts import Host
from exporter.transport import Pools

# A target's identity, (alias, market): what engine, scheduler, streams, discovery and render file
# a target under. A plain tuple, so keys compare and hash as before.
TargetKey: TypeAlias = tuple[str, str]


@dataclass(frozen=True)
class Target:
    """One fetch unit: one account in one market (one `up`, one error counter)."""

    alias: str
    market: str
    account: AccountConfig
    host: Host
    client: Client
    calls: tuple[Call, ...]
    master: str | None = None  # sub-accounts: the master account's alias
    email: str | None = None

    @property
    def key(self) -> TargetKey:
        return self.alias, self.market

    @property
    def weight(self) -> int:
        return sum(call.weight for call in self.calls)


# A dropped host's last minute of weight still counts at Binance (the governor's window is
# 61 s); a pause is kept for as long as it runs.
RETIRED_KEEP_S = 120.0


class Topology:
    """Builds and owns hosts and their clocks; clients and clocks take their host's pool from `pools`.

    `pools` outlive hosts and accounts (a reload keeps them, `update`), so accounts
    added later reuse the connections already open.
    """

    def __init__(self, config: Config, pools: Pools) -> None:
        self.config = config
        self.pools = pools
        self.hosts: dict[tuple[str, str], Host] = {}
        self.host_clocks: dict[tuple[str, str], HostClock] = {}
        self._netlocs: dict[tuple[str, str], str] = {}
        self._kinds_by_url = _kinds_by_url(config)
        # Hosts a reload dropped, kept while Binance still remembers them: (host, clock, when).
        self._retired: dict[tuple[str, str], tuple[Host, HostClock, float]] = {}

    def host(self, account: AccountConfig, kind: str) -> Host:
        base_url = account.base_url_for(kind)
        key = (base_url, kind)
        if key in self.hosts:
            return self.hosts[key]
        if key in self._retired:  # dropped by a recent reload, back again: its weight and pause still count
            kept, kept_clock, _ = self._retired.pop(key)
            self._netlocs[key] = account.host_label or urlsplit(base_url).netloc
            kept.label = self._label(key)
            kept.governor.reconfigure(self.config.weight_limit_for(kind), self.config.weight_budget_share)
            self.hosts[key], self.host_clocks[key] = kept, kept_clock
            return kept
        if HOST_KINDS[kind].time_path is None:  # Portfolio Margin: sign with the USD-M host's clock
            time_host = self.host(account, "usdm")
            clock, host_clock = time_host.clock, self.host_clocks[(time_host.base_url, "usdm")]
        else:
            clock, host_clock = Clock(), None
        self._netlocs[key] = account.host_label or urlsplit(base_url).netloc
        governor = Governor(self.config.weight_limit_for(kind), self.config.weight_budget_share, clock.now_ms)
        host = Host(base_url=base_url, label=self._label(key), kind=kind, governor=governor, clock=clock)
        self.hosts[key] = host
        self.host_clocks[key] = host_clock or HostClock(host, self.pools.get(base_url))
        return host

    def _label(self, key: tuple[str, str]) -> str:
        base_url, kind = key
        kinds = self._kinds_by_url.get(base_url, [kind])
        return f"{self._netlocs[key]}/{kind}" if len(kinds) > 1 and kind != kinds[0] else self._netlocs[key]

    def update(self, config: Config) -> list[Host]:
        """Take a reloaded config: hosts it still needs stay, with their governor (weight history),
        back-off and clock; limits and labels follow the config. Returns the hosts it no longer
        needs (their targets must be gone). A dropped host is kept aside for a while: a reload
        that brings it back gets it with its weight history and any 429/418 pause, which
        Binance still counts. Connection pools are shared per base URL and outlive hosts
        (`Pools`): nothing is closed here."""
        self.config = config
        self._kinds_by_url = _kinds_by_url(config)
        needed = {(url, kind) for url, kinds in self._kinds_by_url.items() for kind in kinds}
        gone = [key for key in self.hosts if key not in needed]
        dropped = [self.hosts.pop(key) for key in gone]
        now = time.monotonic()
        for key, host in zip(gone, dropped, strict=True):
            self._retired[key] = (host, self.host_clocks.pop(key), now)
        for key, (host, _, at) in list(self._retired.items()):
            if now - at > RETIRED_KEEP_S and host.backoff.remaining()[0] == 0:
                del self._retired[key]  # its minute has passed and it is not paused: nothing to remember
        for key, host in self.hosts.items():
            host.label = self._label(key)
            host.governor.reconfigure(config.weight_limit_for(host.kind), config.weight_budget_share)
        return dropped

    def client(self, account: AccountConfig, host: Host, concurrency: int = 1) -> Client:
        """`concurrency`: requests the client may run at once (one per target; a master's, for its sub-accounts)."""
        clock = self.host_clocks[(host.base_url, host.kind)]
        return Client(host, self.pools.get(host.base_url, concurrency), clock, account.api_key, account.signer,
                      account.recv_window_ms)

    def target(self, account: AccountConfig, market: str) -> Target:
        host = self.host(account, market)
        if market == "usdm":
            calls = usdm_calls(account.api_version, account.endpoint, account.positions)
        elif market == "coinm":
            calls = coinm_calls(account.endpoint, account.positions)
        else:
            calls = pm_calls(account.positions)
        return Target(account.alias, market, account, host, self.client(account, host), calls)

    @staticmethod
    def sub_account_target(master: AccountConfig, alias: str, email: str, market: str, host: Host,
                           client: Client) -> Target:
        """A sub-account read through its master's client, with the master's settings and thresholds."""
        # A sub-account never streams: its listenKey would need its own API key.
        account = dataclasses_replace(master, alias=alias, markets=(market,), sub_accounts=None, user_stream=False)
        return Target(alias, market, account, host, client, sub_account_calls(email, market, master.positions),
                      master.alias, email)

    def clocks(self) -> list[HostClock]:
        """Each clock once (Portfolio Margin hosts share the USD-M host's)."""
        return list({id(c): c for c in self.host_clocks.values()}.values())


def _kinds_by_url(config: Config) -> dict[str, list[str]]:
    """The kinds of host each base URL serves for this config, in HOST_KINDS order: every
    market of an account, the USD-M host's clock for Portfolio Margin, /sapi for masters."""
    kinds_by_url: dict[str, list[str]] = {}
    for account in config.accounts:
        needed = set(account.markets) | ({"usdm"} if "pm" in account.markets else set()) \
            | ({"sapi"} if account.sub_accounts is not None else set())
        for kind in needed:
            kinds_by_url.setdefault(account.base_url_for(kind), []).append(kind)
    return {url: [k for k in HOST_KINDS if k in kinds] for url, kinds in kinds_by_url.items()}
