"""Command line: parse flags, load config, wire the pieces, run until SIGTERM/SIGINT; SIGHUP reloads."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import queue
import signal
import sys
from collections.abc import Sequence
from dataclasses import replace

from exporter import SUMMARY, __version__
from exporter.config import ConfigError, load_config
from exporter.engine import Engine
from exporter.fdlimit import FdLimitError, fit_open_files
from exporter.httpserver import Limits, parse_listen_address, serve
from exporter.logs import LEVELS, fields, setup_logging
from exporter.reload import Reloader
from exporter.web import make_app
from exporter.webconfig import WebConfig, load_web_config

log = logging.getLogger("exporter")

DEFAULT_PORT = 9894
# --demo serves simulated accounts for a local look: loopback unless told otherwise.
DEMO_LISTEN_ADDRESS = f"127.0.0.1:{DEFAULT_PORT}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="binance-futures-exporter",
        description=SUMMARY + ".",
    )
    parser.add_argument("--config.file", dest="config_file", default="config.yaml",
                        help="YAML config with the accounts (default: %(default)s)")
    parser.add_argument("--web.listen-address", dest="listen_address", default=None,
                        help=f"address to listen on (default: :{DEFAULT_PORT}, all interfaces; "
                             f"with --demo: {DEMO_LISTEN_ADDRESS})")
    parser.add_argument("--web.telemetry-path", dest="telemetry_path", default="/metrics",
                        help="path of all accounts' metrics (default: %(default)s)")
    parser.add_argument("--web.config.file", dest="web_config_file", default=None,
                        help="exporter-toolkit web config: tls_server_config, basic_auth_users")
    parser.add_argument("--web.enable-lifecycle", dest="enable_lifecycle", action="store_true",
                        help="answer POST/PUT /-/reload (reload the config files, like SIGHUP)")
    parser.add_argument("--log.level", dest="log_level", default="info", choices=list(LEVELS),
                        help="(default: %(default)s)")
    parser.add_argument("--log.format", dest="log_format", default="logfmt", choices=["logfmt", "json"],
                        help="(default: %(default)s)")
    parser.add_argument("--config.check", dest="config_check", action="store_true",
                        help="validate the config file and exit (0 = valid)")
    parser.add_argument("--demo", action="store_true",
                        help="serve metrics from a built-in Binance simulator (no keys, no internet)")
    parser.add_argument("--version", action="version", version=f"binance-futures-exporter {__version__}")
    return parser


def default_listen_address(demo: bool) -> str:
    """All interfaces for real accounts (Prometheus scrapes from elsewhere); loopback for a local --demo."""
    return DEMO_LISTEN_ADDRESS if demo else f":{DEFAULT_PORT}"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.listen_address is None:
        args.listen_address = default_listen_address(args.demo)
    setup_logging(args.log_level, args.log_format)
    try:
        parse_listen_address(args.listen_address)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not args.telemetry_path.startswith("/") or args.telemetry_path in ("/", "/probe", "/-/healthy", "/-/ready",
                                                                          "/-/reload"):
        print(f"error: --web.telemetry-path must be a path like /metrics, got {args.telemetry_path!r}", file=sys.stderr)
        return 2

    simulator = None
    try:
        web = load_web_config(args.web_config_file) if args.web_config_file else WebConfig()
        if args.demo:
            from exporter.demo import start_demo

            simulator, config = start_demo()
            log.info("demo mode: simulated Binance API", extra=fields(url=simulator.base_url,
                                                                      configured_accounts=len(config.accounts)))
        else:
            config = load_config(args.config_file)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for warning in config.warnings:
        log.warning("config problem", extra=fields(warning=warning))
    engine = Engine(config)

    def refuse(message: str) -> int:
        print(f"error: {message}", file=sys.stderr)
        engine.close()
        if simulator is not None:
            simulator.stop()
        return 1

    if not args.config_check:  # the limits of the machine it runs on, not of the config
        # In --demo the simulator's end of every pooled connection is in this process too.
        upstream = engine.upstream_sockets() * (2 if simulator is not None else 1)
        try:
            fds = fit_open_files(upstream)
        except FdLimitError as exc:
            return refuse(f"{config.source}: max_concurrency: {exc}")
        log.info("open files", extra=fields(upstream_connections=fds.upstream, http_connections=fds.front,
                                            limit=fds.soft_limit if fds.soft_limit is not None else "unlimited"))
    engine.log_budget()
    if args.config_check:
        engine.close()
        print(f"{config.source}: OK, {len(config.accounts)} account(s)")
        return 0

    # Everything built so far (modules, config, pools) lives as long as the
    # process: move it out of the cyclic GC's way, so the collections that the
    # per-scrape garbage triggers stay cheap (~10 % less CPU per scrape).
    gc.freeze()
    # The handlers only queue what arrived (SimpleQueue.put is safe in a signal handler); the main
    # thread acts on it below, so a reload never runs inside a handler and SIGHUPs reload one by one.
    # Set before the port opens: a SIGHUP as soon as /-/healthy answers must not end the process.
    signals: queue.SimpleQueue[int] = queue.SimpleQueue()

    def on_signal(signum: int, _frame: object) -> None:
        signals.put(signum)

    for handled in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(handled, on_signal)
    sync = engine.start()
    reloader = Reloader(engine, web, None if args.demo else args.config_file, args.web_config_file)
    app = make_app(engine, args.telemetry_path, ready=lambda: all(f.done() for f in sync),
                   web=reloader.current_web, exporter_metrics=reloader.metrics,
                   reload=(lambda: reloader.reload("http")) if args.enable_lifecycle else None)
    try:
        server = serve(app, args.listen_address, web.ssl_context, replace(Limits(), max_connections=fds.front))
    except OSError as exc:
        return refuse(f"cannot listen on {args.listen_address}: {exc.strerror or exc}")
    reloader.server = server

    host, _ = parse_listen_address(args.listen_address)
    everywhere = host in ("", "0.0.0.0", "::")
    shown = "127.0.0.1" if everywhere else host
    if ":" in shown:
        shown = f"[{shown}]"
    scheme = "https" if web.ssl_context else "http"
    url = f"{scheme}://{shown}:{server.server_port}{args.telemetry_path}"
    # Accounts as the landing page lists them: configured ones and the sub-accounts found so
    # far. Masters' discoveries may still be running: "ready" below gives the final count.
    log.info("listening", extra=fields(address=args.listen_address, metrics=url, accounts=len(engine.aliases()),
                                       version=__version__, tls=web.ssl_context is not None,
                                       basic_auth=web.auth is not None))
    where = f" and on every other interface (listening on {args.listen_address})" if everywhere else ""
    print(f"Serving metrics at {url}{where}", flush=True)
    ready_logged = False
    while True:
        if not ready_logged and all(f.done() for f in sync):
            ready_logged = True
            log.info("ready", extra=fields(accounts=len(engine.aliases())))
        try:
            signum = signals.get(timeout=1.0)
        except queue.Empty:
            continue
        if signum != signal.SIGHUP:
            break
        reloader.reload("SIGHUP")
    log.info("shutting down")
    engine.close()  # first: cuts requests in flight, so the scrapes waiting on them end now
    server.shutdown()
    server.server_close()
    if simulator is not None:
        simulator.stop()
    return 0


def run() -> None:
    """The console script: exit without waiting for fetch threads.

    By the time main() returns, every request in flight has been cut, but a
    thread can still sit in a DNS lookup or a connect() that nothing can
    interrupt, and the interpreter would join it at exit (up to a request
    timeout). Output is flushed, then the process ends.
    """
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
