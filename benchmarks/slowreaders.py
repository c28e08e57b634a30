"""Hostile-client benchmark (issue 18): slow readers of a large /metrics, and floods of stalled TLS handshakes.

    python -m benchmarks.slowreaders            # 500 sub-accounts (~3 MB /metrics), 70 slow readers,
                                                # 3 TLS floods (~2 min)
    python -m benchmarks.slowreaders --quick    # smoke mode: 50 sub-accounts, 20 slow readers, small floods

Everything runs on loopback and is bounded in count and time.

Phase 1, slow readers. The simulator (own process, no latency) owns a
master key with `--sub-accounts` sub-accounts; the exporter (a real process,
plain HTTP) lists them at start-up, so /metrics is about 6 KB per
sub-account. Then:

* baseline: `--probes` requests of /-/healthy and scrapes of /metrics (as
  Prometheus asks: gzip, the scrape-timeout header), one after the other;
* attack: `--slow-readers` clients with a tiny receive window
  (SO_RCVBUF `--rcvbuf`, set before connecting) send `GET /metrics` without
  gzip and never read. For `--attack-seconds` the driver keeps probing
  /-/healthy (every 0.2 s, each on a fresh connection) and scraping /metrics
  back to back, and samples the exporter's RSS every 0.2 s. The slow readers
  are closed at the end (the exporter may have closed them before);
* after: `--settle-seconds` later, RSS again.

Phase 2, stalled TLS handshakes. A second exporter with a TLS web config
(a fresh self-signed certificate). `--floods` times, `--flood-size` clients
connect, send a whole ClientHello and stall; the driver waits until the
exporter has closed them all (its handshake timeout), and records RSS
during and after each flood and `--settle-seconds` after the last.

Figures: /-/healthy and scrape latency (p50, p99, max) per phase, peak RSS
(VmHWM over the phase, and the sampled maximum), RSS after. JSON to
`--output` (default benchmarks/results/slowreaders.json; quick mode:
slowreaders-quick.json).

Targets (issue 18): with 70 slow readers of a ~3 MB /metrics, /-/healthy
under 1 s, scrape p99 under 3 s, peak RSS under 200 MB; memory returns
after the attack. After TLS floods, RSS returns towards its start.
"""

from __future__ import annotations

import argparse
import gzip
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python benchmarks/slowreaders.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests

from benchmarks.procstats import (
    MB,
    BenchParser,
    ExporterProcess,
    SimProcess,
    credentials,
    exit_code,
    fill_defaults,
    fmt,
    md_table,
    peak_rss,
    percentile,
    progress_log,
    report_head,
    write_json,
)
from benchmarks.tlskit import client_hello, self_signed

try:
    import resource
except ImportError:  # pragma: no cover - not on Windows
    resource = None  # type: ignore[assignment]

HEALTH_TARGET_S = 1.0
SCRAPE_P99_TARGET_S = 3.0
PEAK_RSS_TARGET_MB = 200.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = BenchParser("slowreaders", __doc__, "slowreaders.json", "slowreaders-quick.json")
    p.add_argument("--sub-accounts", type=int, help="sub-accounts of the master (default 500; quick 50)")
    p.add_argument("--assets", type=int, default=5, help="non-zero balance rows per sub-account")
    p.add_argument("--slow-readers", type=int, help="clients that never read (default 70; quick 20)")
    p.add_argument("--rcvbuf", type=int, default=4096, help="SO_RCVBUF of each slow reader")
    p.add_argument("--attack-seconds", type=float, help="how long the slow readers stay (default 40; quick 6)")
    p.add_argument("--settle-seconds", type=float, help="wait before the after-attack RSS (default 15; quick 3)")
    p.add_argument("--probes", type=int, default=10, help="baseline /-/healthy probes and scrapes")
    p.add_argument("--floods", type=int, help="TLS handshake floods (default 3; quick 1; 0 = skip)")
    p.add_argument("--flood-size", type=int, help="stalled handshakes per flood (default 3000; quick 300)")
    args = p.parse(argv)
    fill_defaults(args, sub_accounts=(50, 500), slow_readers=(20, 70), attack_seconds=(6.0, 40.0),
                  settle_seconds=(3.0, 15.0), floods=(1, 3), flood_size=(300, 3000))
    return args


def config(sim_url: str, sub_accounts: bool) -> dict[str, Any]:
    key, secret = credentials(0)
    account: dict[str, Any] = {"alias": "master", "api_key": key, "api_secret": secret}
    if sub_accounts:
        account.update({"markets": [], "sub_accounts": {"include": ["*"]}})
    return {"defaults": {"base_url": sim_url, "sapi_base_url": sim_url},
            "scrape_interval_seconds": 15, "accounts": [account]}


def raise_fd_limit(wanted: int) -> None:
    if resource is None:
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def timed(call: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    try:
        result = call()
    except Exception as exc:  # noqa: BLE001 - recorded
        result = type(exc).__name__
    return time.perf_counter() - started, result


def healthy(url: str, verify: bool | str = True) -> Any:
    return requests.get(f"{url}/-/healthy", timeout=60, verify=verify).status_code


def scrape(url: str) -> Any:
    resp = requests.get(f"{url}/metrics", timeout=60, headers={
        "Accept-Encoding": "gzip", "X-Prometheus-Scrape-Timeout-Seconds": "10"})
    return resp.status_code


def stats(values: list[float]) -> dict[str, float | None]:
    return {"n": len(values), "p50_s": percentile(values, 50), "p99_s": percentile(values, 99),
            "max_s": max(values) if values else None}


class RssSampler:
    """The exporter's RSS every `every` seconds, on a thread, while `running`."""

    def __init__(self, exp: ExporterProcess, every: float = 0.2) -> None:
        self.exp, self.every, self.samples = exp, every, []  # type: ignore[var-annotated]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        assert self.exp.ps is not None
        while not self._stop.is_set():
            try:
                self.samples.append(self.exp.ps.memory_info().rss / MB)
            except Exception:  # noqa: BLE001 - the process may be gone
                return
            self._stop.wait(self.every)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def rss_mb(exp: ExporterProcess) -> float:
    assert exp.ps is not None
    return exp.ps.memory_info().rss / MB


def slow_reader(port: int, rcvbuf: int) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: the window is set at SYN
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/plain\r\n\r\n")
    return s


def loop_until(deadline: float, every: float, call: Callable[[], Any], out: list[tuple[float, Any]],
               started: list[float]) -> None:
    """Call until the deadline, `every` seconds apart; `started`: when each call began (monotonic)."""
    while time.monotonic() < deadline:
        started.append(time.monotonic())
        out.append(timed(call))
        time.sleep(max(0.0, every - out[-1][0]))


def phase_slow_readers(sim: SimProcess, args: argparse.Namespace, workdir: Path, log: Callable[[str], None]) -> dict:
    exp = ExporterProcess(config(sim.base_url, True), workdir, name="slowreaders").start(timeout=180)
    try:
        assert exp.ps is not None
        url = exp.base_url
        port = int(url.rsplit(":", 1)[1])
        body = requests.get(f"{url}/metrics", timeout=60).content
        log(f"/metrics: {len(body) / MB:.2f} MB uncompressed, {len(gzip.compress(body, 1)) / 1024:.0f} KB gzip")
        base_health = [timed(lambda: healthy(url))[0] for _ in range(args.probes)]
        base_scrape = [timed(lambda: scrape(url))[0] for _ in range(args.probes)]
        rss_before = rss_mb(exp)
        hwm_before = (peak_rss(exp.proc.pid) or 0) / MB  # type: ignore[union-attr]

        health: list[tuple[float, Any]] = []
        scrapes: list[tuple[float, Any]] = []
        health_at: list[float] = []
        scrapes_at: list[float] = []
        readers: list[socket.socket] = []
        with RssSampler(exp) as sampler:
            started = time.monotonic()
            for _ in range(args.slow_readers):
                readers.append(slow_reader(port, args.rcvbuf))
            connect_s = time.monotonic() - started
            deadline = started + args.attack_seconds
            prober = threading.Thread(target=loop_until, args=(deadline, 0.2, lambda: healthy(url), health, health_at),
                                      daemon=True)
            prober.start()
            loop_until(deadline, 0.0, lambda: scrape(url), scrapes, scrapes_at)
            prober.join(timeout=120)
            open_at_end = sum(1 for s in readers if _still_open(s))
            for s in readers:
                s.close()
            rss_end = rss_mb(exp)
            time.sleep(args.settle_seconds)
            rss_after = rss_mb(exp)
        hwm = (peak_rss(exp.proc.pid) or 0) / MB  # type: ignore[union-attr]
        health_s = [t for t, _ in health]
        scrape_s = [t for t, _ in scrapes]
        return {
            "metrics_bytes": len(body),
            "baseline": {"healthy": stats(base_health), "scrape": stats(base_scrape), "rss_mb": rss_before,
                         "rss_mb_peak_hwm": hwm_before},
            "attack": {"slow_readers": args.slow_readers, "connect_s": connect_s,
                       "healthy": stats(health_s), "scrape": stats(scrape_s),
                       "healthy_non_200": sum(1 for _, r in health if r != 200),
                       "scrape_non_200": sum(1 for _, r in scrapes if r != 200),
                       "slow_readers_open_at_end": open_at_end,
                       # (seconds into the attack, seconds taken) of every probe: when the slow ones happened
                       # strict=False: a probe may still be running when the attack phase ends
                       "healthy_timeline": [(round(at - started, 2), round(t, 4))
                                            for at, (t, _) in zip(health_at, health, strict=False)],
                       "scrape_timeline": [(round(at - started, 2), round(t, 4))
                                           for at, (t, _) in zip(scrapes_at, scrapes, strict=False)],
                       "rss_mb_max_sampled": max(sampler.samples, default=None), "rss_mb_peak_hwm": hwm,
                       "rss_mb_at_end": rss_end},
            "after": {"settle_s": args.settle_seconds, "rss_mb": rss_after},
        }
    finally:
        exp.stop()


def _still_open(s: socket.socket) -> bool:
    """True while the server has not closed the connection (unread data is fine)."""
    try:
        s.setblocking(False)
        while True:
            data = s.recv(1 << 20)
            if not data:
                return False
    except BlockingIOError:
        return True
    except OSError:
        return False


def phase_tls_floods(sim: SimProcess, args: argparse.Namespace, workdir: Path, log: Callable[[str], None]) -> dict:
    cert, key = self_signed(workdir)
    web = workdir / "web.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n")
    exp = ExporterProcess(config(sim.base_url, False), workdir, name="tlsflood",
                          extra_args=(f"--web.config.file={web}",), verify=str(cert)).start()
    try:
        url = exp.base_url
        port = int(url.rsplit(":", 1)[1])
        hello = client_hello()
        rss_start = rss_mb(exp)
        floods = []
        for i in range(args.floods):
            with RssSampler(exp) as sampler:
                socks = []
                for _ in range(args.flood_size):
                    try:
                        s = socket.create_connection(("127.0.0.1", port), timeout=10)
                        s.sendall(hello)
                        socks.append(s)
                    except OSError:
                        break
                probe_s, status = timed(lambda: healthy(url, str(cert)))
                closed_by = time.monotonic() + 60
                for s in socks:  # the exporter closes each after its handshake timeout
                    s.settimeout(max(0.1, closed_by - time.monotonic()))
                    try:
                        while s.recv(65536):
                            pass
                    except OSError:
                        pass
                    s.close()
            floods.append({"connections": len(socks), "healthy_s": probe_s, "healthy_status": status,
                           "rss_mb_max_sampled": max(sampler.samples, default=None), "rss_mb_after": rss_mb(exp)})
            log(f"TLS flood {i + 1}: {len(socks)} stalled handshakes, RSS max "
                f"{fmt(floods[-1]['rss_mb_max_sampled'])} MB, after {floods[-1]['rss_mb_after']:.1f} MB")
        time.sleep(args.settle_seconds)
        return {"rss_mb_start": rss_start, "floods": floods, "rss_mb_after_settle": rss_mb(exp),
                "rss_mb_peak_hwm": (peak_rss(exp.proc.pid) or 0) / MB}  # type: ignore[union-attr]
    finally:
        exp.stop()


def evaluate(slow: dict, tls: dict | None) -> list[dict[str, Any]]:
    attack = slow["attack"]

    def target(name: str, value: float | None, limit: float, unit: str) -> dict[str, Any]:
        ok = value is not None and value < limit
        return {"target": name, "value": value, "limit": limit, "unit": unit, "result": "PASS" if ok else "FAIL"}

    out = [target("/-/healthy max under slow readers", attack["healthy"]["max_s"], HEALTH_TARGET_S, "s"),
           target("scrape p99 under slow readers", attack["scrape"]["p99_s"], SCRAPE_P99_TARGET_S, "s"),
           target("peak RSS (VmHWM) under slow readers", attack["rss_mb_peak_hwm"], PEAK_RSS_TARGET_MB, "MB"),
           target("RSS after the attack, over the baseline", slow["after"]["rss_mb"] - slow["baseline"]["rss_mb"],
                  50.0, "MB")]
    if tls and tls["floods"]:
        out.append(target("RSS after TLS floods, over the start", tls["rss_mb_after_settle"] - tls["rss_mb_start"],
                          50.0, "MB"))
    return out


def render(slow: dict, tls: dict | None, targets: list[dict[str, Any]]) -> str:
    rows = []
    for phase in ("baseline", "attack"):
        data = slow[phase]
        rows.append([phase, fmt(data["healthy"]["p50_s"], 3), fmt(data["healthy"]["p99_s"], 3),
                     fmt(data["healthy"]["max_s"], 3), fmt(data["scrape"]["p50_s"], 3),
                     fmt(data["scrape"]["p99_s"], 3), fmt(data["scrape"]["max_s"], 3),
                     fmt(data.get("rss_mb_peak_hwm"))])
    out = [f"/metrics {slow['metrics_bytes'] / MB:.2f} MB, {slow['attack']['slow_readers']} slow readers\n",
           md_table(["phase", "healthy p50 s", "healthy p99 s", "healthy max s", "scrape p50 s", "scrape p99 s",
                     "scrape max s", "peak RSS MB"], rows),
           f"\nRSS: before {slow['baseline']['rss_mb']:.1f} MB, max sampled "
           f"{fmt(slow['attack']['rss_mb_max_sampled'])} MB, at the end {slow['attack']['rss_mb_at_end']:.1f} MB, "
           f"{slow['after']['settle_s']:g} s after {slow['after']['rss_mb']:.1f} MB; slow readers still open at "
           f"the end: {slow['attack']['slow_readers_open_at_end']}"]
    if tls:
        out += ["\n### Stalled TLS handshakes\n",
                md_table(["flood", "connections", "healthy s", "RSS max MB", "RSS after MB"],
                         [[i + 1, f["connections"], fmt(f["healthy_s"], 3), fmt(f["rss_mb_max_sampled"]),
                           fmt(f["rss_mb_after"])] for i, f in enumerate(tls["floods"])]),
                f"\nRSS at start {tls['rss_mb_start']:.1f} MB, after settling {tls['rss_mb_after_settle']:.1f} MB, "
                f"peak (VmHWM) {tls['rss_mb_peak_hwm']:.1f} MB"]
    out += ["\n### Targets\n", md_table(["target", "value", "limit", "result"],
                                        [[t["target"], fmt(t["value"], 3), f"{t['limit']:g} {t['unit']}",
                                          t["result"]] for t in targets])]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    log = progress_log(started)

    raise_fd_limit(2 * args.flood_size + args.slow_readers + 512)
    report = report_head("slowreaders", argv, args)
    with tempfile.TemporaryDirectory(prefix="bench-slow-") as tmp:
        workdir = Path(tmp)
        with SimProcess(1, args.assets, 0.0, sub_accounts=args.sub_accounts) as sim:
            log(f"simulator: master with {args.sub_accounts} sub-accounts")
            slow = phase_slow_readers(sim, args, workdir, log)
            log(f"slow readers: healthy max {fmt(slow['attack']['healthy']['max_s'], 3)} s, scrape p99 "
                f"{fmt(slow['attack']['scrape']['p99_s'], 3)} s, peak RSS {slow['attack']['rss_mb_peak_hwm']:.1f} MB")
            tls = phase_tls_floods(sim, args, workdir, log) if args.floods > 0 else None
    targets = evaluate(slow, tls)
    report.update({"slow_readers": slow, "tls_floods": tls, "targets": targets,
                   "duration_s": time.monotonic() - started})
    write_json(args.output, report)
    print(render(slow, tls, targets))
    return exit_code(targets, args.strict)


if __name__ == "__main__":
    sys.exit(main())
