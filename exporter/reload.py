"""Reload without restart: SIGHUP and `POST /-/reload` re-read `--config.file` and `--web.config.file`.

A restart re-spends a round of weight and blanks every account's data; a
reload keeps what did not change (see `Engine.apply`). Both files are read
and validated before anything changes, so a bad one changes nothing: the last
good config keeps running, the error is logged in the one line the CLI prints
at start, and `POST /-/reload` answers it with a 400. The outcome is exported
as Prometheus does for itself (`prometheus_config_last_reload_*`).

Reloads run one after the other, and requests coalesce: one asked for while
a reload runs joins the single run queued after it, and gets that run's
answer. A storm of `POST /-/reload` is then a few runs, not one per request;
the HTTP front serves /-/reload from threads of its own, so the requests that
wait never hold a thread a scrape needs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client.core import Metric

from exporter.config import ConfigError, load_config
from exporter.engine import Engine
from exporter.fdlimit import FdLimitError, fit_open_files
from exporter.files import FileRead, recording_reads
from exporter.httpserver import MAX_CONNECTIONS, HTTPServer
from exporter.logs import fields
from exporter.render import reload_families
from exporter.webconfig import WebConfig, carry_over, load_web_config

log = logging.getLogger("exporter.reload")


@dataclass(frozen=True)
class ReloadStatus:
    """The latest reload's outcome; at start, a success at start time (as Prometheus does)."""

    successful: bool
    success_at: float  # Unix seconds of the latest successful load


@dataclass
class _Run:
    """One reload run and the requests that wait for its answer."""

    causes: set[str] = field(default_factory=set)
    joined: int = 0
    finished: bool = False
    error: str | None = None


class Reloader:
    """Owns the config files' paths, the web config in force and the reload outcome."""

    def __init__(self, engine: Engine, web: WebConfig, config_file: str | None,
                 web_config_file: str | None) -> None:
        self.engine = engine
        self.web = web  # read once per request by the web layer; replaced whole
        self.config_file = config_file  # None: --demo, whose accounts come from the simulator
        self.web_config_file = web_config_file
        self.server: HTTPServer | None = None  # set once it listens: its TLS context follows the web config
        self.status = ReloadStatus(True, time.time())
        self._cond = threading.Condition()
        self._queued: _Run | None = None  # the run the next requests join
        self._running: _Run | None = None
        self._config_reads: list[FileRead] = []  # what the config in force was read from (at start: unknown)

    def current_web(self) -> WebConfig:
        return self.web

    def metrics(self) -> Iterator[Metric]:
        status = self.status
        return reload_families(status.successful, status.success_at)

    def reload(self, cause: str) -> str | None:
        """Re-read both files and apply them, or neither; None, or the error line (also logged).

        Coalesced: a reload asked for while one runs joins the one run queued after it (there is
        at most one), and every request that joined gets that run's answer: 150 POSTs at once
        are a few runs, not 150 in a row (and a run whose files read as before does no work).
        """
        with self._cond:
            run = self._queued
            if run is None:
                run = self._queued = _Run()
            run.causes.add(cause)
            run.joined += 1
            while not run.finished and (self._running is not None or self._queued is not run):
                self._cond.wait()
            if run.finished:
                return run.error
            self._queued, self._running = None, run  # nothing runs and this run is next: run it here
        error: str | None = "internal error: the reload did not finish"
        try:
            error = self._reload_once(",".join(sorted(run.causes)), run.joined)
        finally:
            with self._cond:
                run.error, run.finished, self._running = error, True, None
                self._cond.notify_all()
        return error

    def _reload_once(self, cause: str, requests: int) -> str | None:
        """One run of a reload, for `requests` callers that asked while the run before it went on."""
        config, reads, same = None, list[FileRead](), self._reads_as_before()
        try:
            if self.config_file is not None and not same:
                self._config_reads = []  # until this run succeeds
                with recording_reads() as reads:
                    config = load_config(self.config_file)
            web = load_web_config(self.web_config_file) if self.web_config_file is not None else None
            if web is not None:
                self._same_tls(web)
        except ConfigError as exc:
            return self._failed(cause, str(exc))
        try:
            if config is not None:
                for warning in config.warnings:
                    log.warning("config problem", extra=fields(warning=warning))
                done = self.engine.apply(config)
                log.info("config reloaded", extra=fields(
                    cause=cause, file=config.source, accounts=len(config.accounts),
                    added=",".join(done.added), removed=",".join(done.removed),
                    changed=",".join(done.changed), unchanged=len(done.kept), requests=requests))
                self.engine.log_budget()
                self._fit_open_files(cause)
            if web is not None:
                self._apply_web(cause, web)
            if same:
                log.info("config reloaded", extra=fields(cause=cause, file=self.config_file, requests=requests,
                                                         files="as before, nothing to apply"))
            if self.config_file is None and web is None:
                log.info("config reloaded: nothing to re-read (--demo has no config file)",
                         extra=fields(cause=cause))
        except Exception as exc:  # a bug: say so in one line, keep serving
            log.error("config reload failed with an internal error", exc_info=True)
            return self._failed(cause, f"internal error applying the config: {type(exc).__name__}")
        if config is not None:
            self._config_reads = reads
        self.status = ReloadStatus(True, time.time())
        return None

    def _reads_as_before(self) -> bool:
        """Whether every file the config in force was built from (the config file, the secret and key
        files it names) reads the same now: then this run would build the same config, and applying
        an equal config changes nothing, so the run skips parsing and applying (a storm of reloads)."""
        return bool(self._config_reads) and all(read.unchanged() for read in self._config_reads)

    def _fit_open_files(self, cause: str) -> None:
        """Accounts a reload added may need more pooled connections and streams: raise the soft limit
        again, and re-plan the HTTP front's connection cap with it, as a start with this config would.
        The new config is in force either way; a hard limit too low for it is worth a warning."""
        upstream = self.engine.upstream_sockets()
        try:
            plan = fit_open_files(upstream)
            front, limit = plan.front, "unlimited" if plan.soft_limit is None else str(plan.soft_limit)
        except FdLimitError as exc:
            log.warning("open files: the hard limit is too low for the reloaded config", extra=fields(
                file=self.config_file, error=str(exc)))
            front, limit = exc.front, "too low"
        server = self.server
        if server is None:
            return
        # At least 16 (as HTTPServer starts with): the front must still answer /-/healthy and a scrape.
        cap = max(16, min(front, MAX_CONNECTIONS))
        if cap != server.max_connections:
            server.max_connections = cap  # read by the poller per accept; an int is replaced atomically
            log.info("open files", extra=fields(cause=cause, upstream_connections=upstream, http_connections=cap,
                                                limit=limit))

    def _same_tls(self, web: WebConfig) -> None:
        """TLS is decided once, at start (as the exporter-toolkit does): a reload that would switch
        it off would serve the same port in plain HTTP, and basic-auth scrapes would then send
        their passwords in clear. A certificate may be rotated; TLS on or off needs a restart."""
        now, then = web.ssl_context is not None, self.web.ssl_context is not None
        if now != then:
            change = "is gone, and a reload cannot switch TLS off" if then else \
                "is new, and a reload cannot switch TLS on"
            raise ConfigError(f"{self.web_config_file}: tls_server_config: {change}; the last good web config "
                              "keeps running (restart the exporter to change it)")

    def _apply_web(self, cause: str, web: WebConfig) -> None:
        web = carry_over(self.web, web)
        if self.server is not None:
            self.server.set_ssl_context(web.ssl_context)  # new connections; open ones keep theirs
        self.web = web
        log.info("web config reloaded", extra=fields(cause=cause, file=self.web_config_file,
                                                     tls=web.ssl_context is not None,
                                                     basic_auth=web.auth is not None))

    def _failed(self, cause: str, error: str) -> str:
        self.status = ReloadStatus(False, self.status.success_at)
        log.error("config reload failed; the last good config keeps running",
                  extra=fields(cause=cause, error=error))
        return error
