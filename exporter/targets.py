"""What the exporter fetches: the hosts a config talks to, one client per credential, and targets.

A target is one account in one market: one fetch unit with its own `up` and
error counter. Hosts are keyed by (base URL, kind); where one URL serves
several kinds (a proxy, the demo's simulator), all but the first kind get
"/<kind>" in their `host` label, so every host keeps its own series.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import replace as dataclasses_replace
from urllib.parse import urlsplit

from exporter.client import Client, HostClock
from exporter.clock import Clock
from exporter.config import AccountConfig, Config
from exporter.endpoints import HOST_KINDS, Call, coinm_calls, pm_calls, sub_account_calls, usdm_calls
from exporter.governor import Governor
from exporter.hosts import Host
from exporter.modes import ModeReader
from exporter.transport import Transport, Watchdog


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
    modes: ModeReader | None = None  # USD-M accounts read with their own key

    @property
    def key(self) -> tuple[str, str]:
        return self.alias, self.market

    @property
    def weight(self) -> int:
        return sum(call.weight for call in self.calls)


class Topology:
    """Builds and owns hosts, their clocks and every connection pool."""

    def __init__(self, config: Config, watchdog: Watchdog) -> None:
        self.config = config
        self.watchdog = watchdog
        self.hosts: dict[tuple[str, str], Host] = {}
        self.host_clocks: dict[tuple[str, str], HostClock] = {}
        self._transports: list[Transport] = []
        self._netlocs: dict[tuple[str, str], str] = {}
        self._kinds_by_url = _kinds_by_url(config)

    def host(self, account: AccountConfig, kind: str) -> Host:
        base_url = account.base_url_for(kind)
        key = (base_url, kind)
        if key in self.hosts:
            return self.hosts[key]
        if HOST_KINDS[kind].time_path is None:  # Portfolio Margin: sign with the USD-M host's clock
            time_host = self.host(account, "usdm")
            clock, host_clock = time_host.clock, self.host_clocks[(time_host.base_url, "usdm")]
        else:
            clock, host_clock = Clock(), None
        netloc = self._netlocs[key] = account.host_label or urlsplit(base_url).netloc
        governor = Governor(self.config.weight_limit_for(kind), self.config.weight_budget_share, clock.now_ms)
        host = Host(base_url=base_url, label=self._label(key), kind=kind, governor=governor, clock=clock)
        self.hosts[key] = host
        self.host_clocks[key] = host_clock or HostClock(host, self._transport(base_url, 1))
        return host

    def _label(self, key: tuple[str, str]) -> str:
        base_url, kind = key
        kinds = self._kinds_by_url.get(base_url, [kind])
        return f"{self._netlocs[key]}/{kind}" if len(kinds) > 1 and kind != kinds[0] else self._netlocs[key]

    def update(self, config: Config) -> list[Host]:
        """Take a reloaded config: hosts it still needs stay, with their governor (weight history),
        back-off and clock; limits and labels follow the config. Returns the hosts it no longer
        needs, now closed and forgotten (their targets must be gone)."""
        self.config = config
        self._kinds_by_url = _kinds_by_url(config)
        needed = {(url, kind) for url, kinds in self._kinds_by_url.items() for kind in kinds}
        gone = [key for key in self.hosts if key not in needed]
        dropped = [self.hosts.pop(key) for key in gone]
        clocks = [self.host_clocks.pop(key) for key in gone]
        for key, host in self.hosts.items():
            host.label = self._label(key)
            host.governor.reconfigure(config.weight_limit_for(host.kind), config.weight_budget_share)
        kept = {id(c) for c in self.host_clocks.values()}
        for clock in {id(c): c for c in clocks}.values():
            if id(clock) not in kept:  # a Portfolio Margin host shares its USD-M host's clock
                self.release(clock.transport)
        return dropped

    def release(self, transport: Transport) -> None:
        """Close the connections of a client or clock that is gone (a removed account)."""
        if transport in self._transports:
            self._transports.remove(transport)
        transport.close()

    def _transport(self, base_url: str, pool_size: int) -> Transport:
        transport = Transport(base_url, pool_size, self.watchdog)
        self._transports.append(transport)
        return transport

    def client(self, account: AccountConfig, host: Host, pool_size: int = 2) -> Client:
        clock = self.host_clocks[(host.base_url, host.kind)]
        return Client(host, self._transport(host.base_url, pool_size), clock, account.api_key, account.signer,
                      account.recv_window_ms)

    def target(self, account: AccountConfig, market: str) -> Target:
        host = self.host(account, market)
        if market == "usdm":
            calls = usdm_calls(account.api_version, account.endpoint, account.positions)
        elif market == "coinm":
            calls = coinm_calls(account.endpoint, account.positions)
        else:
            calls = pm_calls(account.positions)
        return Target(account.alias, market, account, host, self.client(account, host), calls,
                      modes=ModeReader(account.alias) if market == "usdm" else None)

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

    def close(self) -> None:
        for transport in self._transports:
            transport.close()


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
