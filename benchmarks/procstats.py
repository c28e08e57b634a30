"""Shared helpers for the benchmarks: child processes, psutil sampling, statistics, output.

Nothing here needs more than the exporter's own dependencies plus psutil.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import platform
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml

try:
    import psutil
except ImportError:  # pragma: no cover - exercised only without the bench extra
    sys.exit("the benchmarks need psutil: pip install psutil  (or pip install -e '.[bench]')")

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
ASSETS = ("USDT", "USDC", "BNB", "BTC", "ETH", "BUSD", "FDUSD", "BFUSD", "XRP", "SOL")
MB = 1024 * 1024
SERVING_RE = re.compile(r"Serving metrics at (https?://[^/\s]+)")
# What Prometheus 2.x/3.x sends by default: OpenMetrics preferred, so prometheus_client answers in it.
PROMETHEUS_ACCEPT = ("application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
                     "text/plain;version=0.0.4;q=0.5,*/*;q=0.1")


METRIC_LINE_RE = re.compile(rb"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})? (\S+)$", re.M)
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def metric_samples(body: bytes, *names: str) -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample of these metric names in a text exposition.

    A regex over the lines, not prometheus_client's parser: a 300-account
    exposition is ~1 MB, and the driver shares 2 cores with the exporter.
    """
    wanted = {n.encode() for n in names}
    out = []
    for m in METRIC_LINE_RE.finditer(body):
        if m.group(1) in wanted:
            labels = dict(LABEL_RE.findall(m.group(2).decode())) if m.group(2) else {}
            out.append((m.group(1).decode(), labels, float(m.group(3))))
    return out


def credentials(index: int, seed: int = 0) -> tuple[str, str]:
    """Account `index`'s (api_key, api_secret): long, unique, so a leak check can't match by chance."""
    key = hashlib.sha256(f"bench-key/{seed}/{index}".encode()).hexdigest()
    secret = hashlib.sha256(f"bench-secret/{seed}/{index}".encode()).hexdigest()
    return f"bk{index:04d}{key[:58]}", f"bs{index:04d}{secret[:58]}"


def alias(index: int) -> str:
    return f"acc-{index:04d}"


def child_env(repo: Path = REPO) -> dict[str, str]:
    """The driver's environment, with the repo importable even when not pip-installed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(repo), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.setdefault("MALLOC_ARENA_MAX", "2")  # as the Dockerfile and the systemd unit run the exporter
    return env


# -- statistics ----------------------------------------------------------------------------

def percentile(values: Sequence[float], pct: float) -> float | None:
    """Linear-interpolated percentile (numpy's default method); None for no values."""
    if not values:
        return None
    data = sorted(values)
    if len(data) == 1:
        return data[0]
    rank = (len(data) - 1) * pct / 100.0
    low = int(rank)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (rank - low)


def median(values: Sequence[float]) -> float | None:
    return percentile(values, 50.0)


def rolling_windows(data: Sequence[tuple[float, float]], window: float = 60.0) -> Iterator[tuple[float, float, int]]:
    """For each event of time-sorted `data`: its time t, the sum of values in (t - window, t],
    and the index in `data` of that window's oldest event.

    Windows are half-open the way the exporter's governor counts its rolling
    minute (an event exactly `window` old has expired).
    """
    total, low = 0.0, 0
    for t, value in data:
        total += value
        while data[low][0] <= t - window:
            total -= data[low][1]
            low += 1
        yield t, total, low


def rolling_max(events: Iterable[tuple[float, float]], window: float = 60.0) -> tuple[float, float | None]:
    """The largest sum of values in any `window` seconds, and when that window ended."""
    best, best_end = 0.0, None
    for t, total, _ in rolling_windows(sorted(events), window):
        if total > best:
            best, best_end = total, t
    return best, best_end


def slope_per_minute(points: Sequence[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, value) points, scaled to value per minute."""
    if len(points) < 2:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return None
    cov = sum((t - mean_t) * (v - mean_v) for t, v in points)
    return cov / var * 60.0


# -- process sampling ----------------------------------------------------------------------

def peak_rss(pid: int) -> int | None:
    """The kernel's high-water mark of resident memory (VmHWM), Linux only."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def sample(proc: psutil.Process) -> dict[str, float]:
    """One reading of the exporter: RSS bytes, threads, open fds, CPU seconds (user+sys)."""
    with proc.oneshot():
        cpu = proc.cpu_times()
        out = {
            "t": time.monotonic(),
            "rss": float(proc.memory_info().rss),
            "threads": float(proc.num_threads()),
            "cpu": cpu.user + cpu.system,
            "cpu_user": cpu.user,
            "cpu_sys": cpu.system,
        }
        out["fds"] = float(proc.num_fds()) if hasattr(proc, "num_fds") else float("nan")
    return out


class LoadMeter:
    """CPU seconds burnt on the machine by anything but the given processes, over an interval.

    The benchmark shares 2 cores with whatever else runs (a test suite, an editor):
    this says how much of the machine was busy elsewhere, so a noisy row can be spotted.
    """

    def __init__(self, *pids: int) -> None:
        self.procs = [psutil.Process(p) for p in pids]
        self.start_t = time.monotonic()
        self.start_busy = self._busy()
        self.start_own = self._own()

    @staticmethod
    def _busy() -> float:
        t = psutil.cpu_times()
        return sum(t) - t.idle - getattr(t, "iowait", 0.0)

    def _own(self) -> float:
        total = 0.0
        for proc in self.procs:
            try:
                c = proc.cpu_times()
                total += c.user + c.system
            except psutil.Error:
                pass
        return total

    def stop(self) -> dict[str, float]:
        """{'other_cpu_s', 'other_load_pct' (of all cores)}; call while the processes still live."""
        wall = max(1e-9, time.monotonic() - self.start_t)
        other = max(0.0, (self._busy() - self.start_busy) - (self._own() - self.start_own))
        return {"other_cpu_s": other, "other_load_pct": 100.0 * other / (wall * (os.cpu_count() or 1))}


# -- machine -------------------------------------------------------------------------------

def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _git_dirty() -> list[str] | None:
    """Uncommitted changes under exporter/: the code measured is then not exactly git_commit."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--", "exporter"], cwd=REPO,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return [line[3:] for line in out.stdout.splitlines()] if out.returncode == 0 else None


def machine_info() -> dict[str, Any]:
    from exporter import __version__

    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpu_count_physical": psutil.cpu_count(logical=False),
        "cpu_model": _cpu_model(),
        "memory_total_mb": round(psutil.virtual_memory().total / MB),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "psutil": psutil.__version__,
        "requests": requests.__version__,
        "exporter_version": __version__,
        "git_commit": _git_commit(),
        "git_uncommitted_exporter_files": _git_dirty(),
    }


class BenchParser(argparse.ArgumentParser):
    """The command line every benchmark starts from.

    Its name and docstring, `--output` (a JSON file, by default benchmarks/results/<output>, or
    <quick_output> with `--quick`), `--quick` (smoke mode: small and fast) when it has one, and
    `--strict` (exit 1 when a target fails) when it checks targets.
    """

    def __init__(self, name: str, doc: str | None, output: str, quick_output: str | None = None,
                 strict: bool = True) -> None:
        super().__init__(prog=f"python -m benchmarks.{name}", description=doc,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
        self.outputs = (output, quick_output or output)
        if quick_output is not None:
            self.add_argument("--quick", action="store_true", help=f"smoke mode: small, fast, writes {quick_output}")
        self.add_argument("--output", type=Path, help=f"JSON file (default benchmarks/results/{output})")
        if strict:
            self.add_argument("--strict", action="store_true", help="exit 1 if any target FAILs")

    def parse(self, argv: list[str] | None) -> argparse.Namespace:
        args = self.parse_args(argv)
        if args.output is None:
            args.output = RESULTS / self.outputs[1 if getattr(args, "quick", False) else 0]
        return args


def progress_log(started: float) -> Callable[[str], None]:
    """`log(msg)`: one progress line on stderr, stamped with the seconds since `started`."""
    def log(msg: str) -> None:
        print(f"[{time.monotonic() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)
    return log


def exit_code(targets: Iterable[dict[str, Any]], strict: bool) -> int:
    """What a benchmark exits with: 1 under --strict when a target FAILed, else 0."""
    return 1 if strict and any(t["result"] == "FAIL" for t in targets) else 0


def fill_defaults(args: Any, **defaults: tuple[Any, Any]) -> None:
    """Each option left unset gets its (quick, full) default, by `args.quick`."""
    for name, (quick, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)


def harness_parser(name: str, doc: str | None) -> argparse.ArgumentParser:
    """A harness's parser with the options every harness has: --quick, --output, --strict."""
    p = argparse.ArgumentParser(prog=f"python -m benchmarks.{name}", description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"smoke mode: small, fast, writes {name}-quick.json")
    p.add_argument("--output", type=Path, help=f"JSON file (default benchmarks/results/{name}.json)")
    p.add_argument("--strict", action="store_true", help="exit 1 if any target FAILs")
    return p


def harness_args(p: argparse.ArgumentParser, argv: list[str] | None, name: str,
                 **defaults: tuple[Any, Any]) -> argparse.Namespace:
    """Parsed options, each unset one at its (quick, full) default, --output at the harness's file."""
    args = p.parse_args(argv)
    fill_defaults(args, **defaults)
    if args.output is None:
        args.output = RESULTS / (f"{name}-quick.json" if args.quick else f"{name}.json")
    return args


def report_head(name: str, argv: list[str] | None, args: Any) -> dict[str, Any]:
    """What every result file starts with: which benchmark, how it was run, on what."""
    return {
        "benchmark": name,
        "command": " ".join([f"python -m benchmarks.{name}", *(argv if argv is not None else sys.argv[1:])]),
        "machine": machine_info(),
        "params": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }


# -- output --------------------------------------------------------------------------------

def md_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join("" if c is None else str(c) for c in row) + " |")
    return "\n".join(lines)


def write_json(path: Path, data: Any) -> None:
    """Atomic replace, so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=False)
        fh.write("\n")
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; results are meant to be read and committed
    os.replace(tmp, path)


def fmt(value: float | None, digits: int = 1, scale: float = 1.0) -> str:
    return "n/a" if value is None else f"{value * scale:.{digits}f}"


# -- child processes -----------------------------------------------------------------------

def _pump_lines(stream: Any, sink: queue.Queue[str | None]) -> None:
    for line in iter(stream.readline, ""):
        sink.put(line)
    sink.put(None)


class SimProcess:
    """`benchmarks.simserver` in its own process (its CPU stays out of the exporter's and driver's)."""

    def __init__(self, accounts: int, assets: int = 5, latency_ms: float = 0.0, seed: int = 0, *,
                 weight_limit: int | None = None, sub_accounts: int = 0, request_log: bool = False,
                 positions: int = 0, symbols: int = 50) -> None:
        self.args = [sys.executable, "-m", "benchmarks.simserver", f"--accounts={accounts}",
                     f"--assets={assets}", f"--latency-ms={latency_ms}", f"--seed={seed}",
                     f"--sub-accounts={sub_accounts}", f"--positions={positions}", f"--symbols={symbols}"]
        if weight_limit is not None:  # else simserver's default: no practical limit on /fapi
            self.args.append(f"--weight-limit={weight_limit}")
        if request_log:
            self.args.append("--request-log")
        self.proc: subprocess.Popen[str] | None = None
        self.base_url = ""
        self._lock = threading.Lock()
        self._lines: queue.Queue[str | None] = queue.Queue()

    def start(self, timeout: float = 60.0) -> SimProcess:
        self.proc = subprocess.Popen(self.args, cwd=REPO, env=child_env(), text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        threading.Thread(target=_pump_lines, args=(self.proc.stdout, self._lines), daemon=True).start()
        self.base_url = self._read(timeout).strip()
        if not self.base_url.startswith("http://127.0.0.1:"):
            raise RuntimeError(f"simulator did not start: {self.base_url!r}")
        return self

    def _read(self, timeout: float) -> str:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError("simulator did not answer in time") from None
        if line is None:
            raise RuntimeError("simulator exited")
        return line

    def command(self, cmd: dict, timeout: float = 30.0) -> dict:
        assert self.proc is not None and self.proc.stdin is not None
        with self._lock:
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
            reply = json.loads(self._read(timeout))
        if "error" in reply:
            raise RuntimeError(f"simulator: {reply['error']}")
        return reply

    def stats(self) -> dict:
        return self.command({"op": "stats"})

    def set_latency(self, ms: float) -> None:
        self.command({"op": "latency", "ms": ms})

    def set_faults(self, faults: dict[str, dict | None]) -> None:
        self.command({"op": "faults", "faults": faults})

    def requests(self, since: int = 0) -> dict:
        """The request log from entry `since` on: {"entries": [[at, path, account, email, status, weight]],
        "next", "dropped"} (simserver needs request_log=True)."""
        return self.command({"op": "requests", "since": since}, timeout=120.0)

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> SimProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def exporter_config(base_url: str, count: int, *, max_concurrency: int | None, timeout_seconds: float | None,
                    seed: int = 0, weight_limit: int = 1_000_000, cache_seconds: float | None = 0.0,
                    **top: Any) -> dict:
    """The first `count` simulator accounts; `top` adds top-level keys (scrape_interval_seconds, ...).

    None leaves a key out, i.e. at the exporter's default.

    The defaults measure the exporter's work, not its weight budget: every
    scrape fetches every account (`cache_seconds: 0`; the exporter's own default
    would serve scrapes less than 0.8 x scrape_interval_seconds apart from its
    cache), and `weight_limit` is far above what back-to-back scrapes use, so
    the governor never defers a fetch. benchmarks.budget measures the budget.
    """
    defaults: dict[str, Any] = {"base_url": base_url}
    if timeout_seconds is not None:
        defaults["timeout_seconds"] = timeout_seconds
    if cache_seconds is not None:
        defaults["cache_seconds"] = cache_seconds
    return {
        "defaults": defaults,
        **({} if max_concurrency is None else {"max_concurrency": max_concurrency}),
        "weight_limit": weight_limit,
        **top,
        "accounts": [
            {"alias": alias(i), "api_key": credentials(i, seed)[0], "api_secret": credentials(i, seed)[1]}
            for i in range(count)
        ],
    }


def py_spy() -> str | None:
    """py-spy on PATH, or next to this interpreter (a venv that is not activated)."""
    found = shutil.which("py-spy")
    if found:
        return found
    local = Path(sys.executable).parent / "py-spy"
    return str(local) if local.exists() else None


@dataclass
class ExporterProcess:
    """`python -m exporter` on 127.0.0.1:<free port>, stderr kept in a file for later checks."""

    config: dict
    workdir: Path
    name: str = "exporter"
    log_level: str = "warn"
    extra_args: tuple[str, ...] = ()  # more flags, e.g. --web.config.file=...
    verify: bool | str = True  # for an https exporter: the CA file the readiness check trusts
    repo: Path = REPO  # the checkout whose exporter runs (benchmarks.encode: another tree side by side)
    proc: subprocess.Popen[str] | None = None
    base_url: str = ""
    ps: psutil.Process | None = None
    stderr_path: Path = field(init=False)
    _stdout: queue.Queue[str | None] = field(default_factory=queue.Queue, init=False)

    def start(self, timeout: float = 60.0) -> ExporterProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / f"{self.name}.yaml"
        config_path.write_text(yaml.safe_dump(self.config, sort_keys=False), encoding="utf-8")
        config_path.chmod(0o600)
        self.stderr_path = self.workdir / f"{self.name}.stderr"
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", f"--config.file={config_path}",
             "--web.listen-address=127.0.0.1:0", f"--log.level={self.log_level}", *self.extra_args],
            cwd=self.repo, env=child_env(self.repo), text=True, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=self._stderr,
        )
        threading.Thread(target=_pump_lines, args=(self.proc.stdout, self._stdout), daemon=True).start()
        deadline = time.monotonic() + timeout
        while not self.base_url:
            try:
                line = self._stdout.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                self.stop()
                raise RuntimeError(f"exporter did not start; stderr:\n{self.stderr()[-2000:]}")
            match = SERVING_RE.search(line)
            if match:
                self.base_url = match.group(1)
        while True:  # ready = the start-up clock sync is done, so the first scrape signs correctly
            try:
                if requests.get(f"{self.base_url}/-/ready", timeout=2, verify=self.verify).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("exporter never became ready")
            time.sleep(0.05)
        self.ps = psutil.Process(self.proc.pid)
        return self

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()
        return self.proc.returncode


@dataclass
class Answer:
    seconds: float
    status: int
    body: bytes
    wire_bytes: int


def fetch(session: requests.Session, url: str, timeout: float,
          scrape_timeout: float | None = None, accept: str = PROMETHEUS_ACCEPT) -> Answer:
    """One GET as Prometheus does it (its Accept, gzip, optional scrape-timeout header), timed end to end."""
    headers = {"Accept": accept, "Accept-Encoding": "gzip"}
    if scrape_timeout is not None:
        headers["X-Prometheus-Scrape-Timeout-Seconds"] = f"{scrape_timeout:g}"
    start = time.perf_counter()
    resp = session.get(url, headers=headers, timeout=timeout)
    body = resp.content
    elapsed = time.perf_counter() - start
    wire = int(resp.headers.get("Content-Length", len(body)))
    return Answer(elapsed, resp.status_code, body, wire)
