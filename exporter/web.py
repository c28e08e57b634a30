"""The HTTP front: a small WSGI app with a route map.

/metrics and /probe each build a fresh registry bound to that request's
deadline (Prometheus' X-Prometheus-Scrape-Timeout-Seconds), rendered by
prometheus_client's encoders (`exposition` below picks the format and gzips).
The server under it (connections, threads, timeouts, TLS) is the
exporter.httpserver package.
"""

from __future__ import annotations

import gzip
import html
import threading
from collections.abc import Callable, Hashable, Iterable, Iterator
from urllib.parse import parse_qs, quote

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import Metric
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.registry import Collector

from exporter import __version__
from exporter.engine import Engine
from exporter.exposition import encode_text
from exporter.httpserver import Environ, StartResponse, WsgiApp
from exporter.render import Fragments, families
from exporter.webconfig import BasicAuth, WebConfig

Rendered = tuple[list[tuple[str, str]], bytes]  # headers and body of one exposition
SCRAPE_TIMEOUT_HEADER = "HTTP_X_PROMETHEUS_SCRAPE_TIMEOUT_SECONDS"


def scrape_budget(environ: Environ) -> float | None:
    """Time this scrape may spend fetching, leaving Prometheus a margin to receive it."""
    raw = environ.get(SCRAPE_TIMEOUT_HEADER)
    try:
        timeout = float(raw) if raw else None
    except ValueError:
        return None
    if timeout is None or not 0 < timeout < 86400:
        return None
    margin = max(0.1, min(0.5, timeout * 0.1))
    return max(0.05, timeout - margin)


class ScrapeCollector(Collector):
    """The metrics of one HTTP request: `/metrics` (all accounts) or `/probe` (one account)."""

    def __init__(self, engine: Engine, aliases: list[str], budget: float | None, include_exporter: bool,
                 fragments: Fragments | None = None) -> None:
        self.engine = engine
        self.aliases = aliases
        self.budget = budget
        self.include_exporter = include_exporter
        self.fragments = fragments  # each target's encoded families, reused until its data changes

    def collect(self) -> Iterator[Metric]:
        result = self.engine.scrape(self.aliases, self.budget)
        if self.fragments is not None and self.include_exporter:  # /metrics covers every target: forget the rest
            self.fragments.prune({view.target.key for view in result.targets})
        yield from families(result, self.engine.config.skip_zero_balances, self.include_exporter, self.fragments)


def _text(start_response: StartResponse, status: str, body: str,
          ctype: str = "text/plain; charset=utf-8", extra: list[tuple[str, str]] | None = None) -> list[bytes]:
    data = body.encode("utf-8")
    start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(data))), *(extra or [])])
    return [data]


def landing_page(engine: Engine, telemetry_path: str) -> str:
    probes = "\n".join(
        f'<li><a href="/probe?target={quote(alias)}">{html.escape(alias)}</a></li>'
        for alias in engine.aliases()
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>Binance Futures Exporter</title></head>
<body>
<h1>Binance Futures Exporter</h1>
<p>Version {html.escape(__version__)}</p>
<ul>
<li><a href="{html.escape(telemetry_path)}">{html.escape(telemetry_path)}</a>: all accounts and exporter metrics</li>
<li><a href="/-/healthy">/-/healthy</a>, <a href="/-/ready">/-/ready</a></li>
</ul>
<h2>Accounts (/probe?target=&lt;alias&gt;)</h2>
<ul>
{probes}
</ul>
</body></html>
"""


# prometheus_client's make_wsgi_app gzips at level 9. The exposition repeats itself so
# much that level 1 already takes it to 5 %: for 500 sub-accounts (2.95 MB of text)
# level 1 takes 5.8 ms for 144 KB, level 6 24 ms for 135 KB, level 9 more still.
GZIP_LEVEL = 1


def _wants_text(accept: str) -> bool:
    """Serve the classic text format whenever the client accepts it.

    Prometheus lists OpenMetrics first but accepts text/plain too; rendering
    OpenMetrics costs ~45 % more CPU in prometheus_client and adds nothing for
    gauges and counters without exemplars. Go exporters behave the same by
    default. A client that accepts only OpenMetrics still gets it.
    """
    return not accept or any(part.split(";")[0].strip() in ("text/plain", "*/*", "text/*")
                             for part in accept.split(","))


def scrape_registry(collector: ScrapeCollector) -> CollectorRegistry:
    """A registry for one request; `support_collectors_without_names` lets `?name[]=`
    filtering (restricted_registry) see our collector, which has no describe()."""
    registry = CollectorRegistry(auto_describe=False, support_collectors_without_names=True)
    registry.register(collector)
    return registry


class SharedRenders:
    """Concurrent requests for the same exposition share one rendering and one body.

    Rendering 500 sub-accounts takes ~3 MB of text plus several times that in
    transient objects; 70 clients asking at once used to render 70 copies
    (and hold them while they trickled out). A request that arrives while the
    same rendering (same route, target, format, encoding and `name[]`
    filter) is under way waits for it and takes its bytes, like a cache
    that lives only as long as one rendering.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[Hashable, tuple[threading.Event, list[Rendered]]] = {}

    def get(self, key: Hashable, render: Callable[[], Rendered], wait: float | None) -> Rendered:
        with self._lock:
            flight = self._flights.get(key)
            if flight is None:
                flight = self._flights[key] = (threading.Event(), [])
                leader = True
            else:
                leader = False
        done, result = flight
        if not leader:
            # The leader is bound by its own scrape deadline; we wait at most for ours.
            if done.wait(wait) and result:
                return result[0]
            return render()  # the leader failed, or takes longer than we may wait
        try:
            result.append(render())
            return result[0]
        finally:
            with self._lock:
                del self._flights[key]
            done.set()


def exposition(make_registry: Callable[[], CollectorRegistry], key: tuple[Hashable, ...], shared: SharedRenders,
               environ: Environ, start_response: StartResponse) -> list[bytes]:
    accept = environ.get("HTTP_ACCEPT", "")
    encoder: Callable[[CollectorRegistry], bytes]
    if _wants_text(accept):
        encoder, content_type = encode_text, CONTENT_TYPE_PLAIN_0_0_4
    else:
        encoder, content_type = choose_encoder(accept)
    names = parse_qs(environ.get("QUERY_STRING", "")).get("name[]")
    compress = gzip_accepted(environ.get("HTTP_ACCEPT_ENCODING", ""))

    def render() -> tuple[list[tuple[str, str]], bytes]:
        registry = make_registry()
        output = encoder(registry.restricted_registry(names) if names else registry)
        headers = [("Content-Type", content_type)]
        if compress:
            output = gzip.compress(output, compresslevel=GZIP_LEVEL)
            headers.append(("Content-Encoding", "gzip"))
        return headers, output

    budget = scrape_budget(environ)
    headers, output = shared.get((*key, content_type, compress, tuple(names or ())), render,
                                 None if budget is None else budget + 1.0)
    start_response("200 OK", [*headers, ("Content-Length", str(len(output)))])
    return [] if environ.get("REQUEST_METHOD") == "HEAD" else [output]


class _Families(Collector):
    def __init__(self, produce: Callable[[], Iterable[Metric]]) -> None:
        self.produce = produce

    def collect(self) -> Iterable[Metric]:
        return self.produce()


# Orchestrators' liveness and readiness probes (Kubernetes, Docker's HEALTHCHECK) carry no
# credentials; both answers say nothing but "running" and "clock measured".
PROBE_PATHS = ("/-/healthy", "/-/ready")


def make_app(engine: Engine, telemetry_path: str = "/metrics", auth: BasicAuth | None = None,
             ready: Callable[[], bool] = lambda: True,
             headers: tuple[tuple[str, str], ...] = (), *,
             web: Callable[[], WebConfig] | None = None,
             reload: Callable[[], str | None] | None = None,
             exporter_metrics: Callable[[], Iterable[Metric]] | None = None,
             ) -> WsgiApp:
    """The routes; `headers` (http_server_config.headers of the web config) go on every answer.

    `web`: where auth and headers come from instead, read once per request, so a reload swaps
    them. `reload`: `--web.enable-lifecycle`'s `POST /-/reload` (None or an error line).
    `exporter_metrics`: more exporter families for /metrics (the config reload status).
    """

    shared = SharedRenders()
    fragments = Fragments()

    def metrics(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        def make_registry() -> CollectorRegistry:
            registry = scrape_registry(ScrapeCollector(engine, engine.aliases(), scrape_budget(environ),
                                                       include_exporter=True, fragments=fragments))
            if exporter_metrics is not None:
                registry.register(_Families(exporter_metrics))
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
            return registry
        return exposition(make_registry, ("metrics",), shared, environ, start_response)

    def probe(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        targets = parse_qs(environ.get("QUERY_STRING", "")).get("target", [])
        if len(targets) != 1 or not targets[0]:
            return _text(start_response, "400 Bad Request",
                         "exactly one 'target' parameter (an account alias) is required\n")
        target = targets[0]
        if not engine.has_alias(target):
            return _text(start_response, "400 Bad Request",
                         f"unknown target {target[:64]!r}: not an account alias\n")
        return exposition(lambda: scrape_registry(ScrapeCollector(engine, [target], scrape_budget(environ),
                                                                  include_exporter=False, fragments=fragments)),
                          ("probe", target), shared, environ, start_response)

    def lifecycle_reload(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        """As Prometheus answers /-/reload, except a failed reload: 400 with the error line (Prometheus: 500)."""
        if environ.get("REQUEST_METHOD") not in ("POST", "PUT"):
            return _text(start_response, "405 Method Not Allowed", "Only POST or PUT requests allowed\n",
                         extra=[("Allow", "POST, PUT")])
        if reload is None:
            return _text(start_response, "403 Forbidden", "Lifecycle API is not enabled.\n")
        error = reload()
        if error is not None:
            return _text(start_response, "400 Bad Request", error + "\n")
        return _text(start_response, "200 OK", "Reloaded\n")

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        current = web() if web is not None else None
        extra_headers = current.headers if current is not None else headers
        if extra_headers:
            plain_start = start_response

            def start_response(status: str, response_headers: list[tuple[str, str]], *exc: object) -> object:
                return plain_start(status, [*response_headers, *extra_headers], *exc)
        path = environ.get("PATH_INFO", "/")
        checker = current.auth if current is not None else auth
        if checker is not None and path not in PROBE_PATHS and not checker.check(environ.get("HTTP_AUTHORIZATION")):
            return _text(start_response, "401 Unauthorized", "Unauthorized\n",
                         extra=[("WWW-Authenticate", 'Basic realm="binance-futures-exporter"')])
        if path == "/-/reload":
            return lifecycle_reload(environ, start_response)
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            return _text(start_response, "405 Method Not Allowed", "use GET\n", extra=[("Allow", "GET, HEAD")])
        if path == telemetry_path:
            return metrics(environ, start_response)
        if path == "/probe":
            return probe(environ, start_response)
        if path == "/":
            return _text(start_response, "200 OK", landing_page(engine, telemetry_path), "text/html; charset=utf-8")
        if path == "/-/healthy":
            return _text(start_response, "200 OK", "Healthy\n")
        if path == "/-/ready":
            if ready():
                return _text(start_response, "200 OK", "Ready\n")
            return _text(start_response, "503 Service Unavailable", "Not ready\n")
        return _text(start_response, "404 Not Found", "not found; see / for the endpoints\n")

    return app
