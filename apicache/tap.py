"""
The twistd plugin's options and service: ``twistd -n apicache --config
apicache.toml``.

This is the wiring: the only module that touches the global reactor or the
environment, and the only one that knows every part.
"""

from __future__ import annotations

import gc
import json
import os
import sys
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IReactorTime, IStreamServerEndpoint
from twisted.logger import ILogObserver, Logger
from twisted.python import usage
from twisted.python.components import Componentized
from twisted.web.client import Agent

from apicache.cache import CacheRegistry
from apicache.config import Config, ConfigError, load_config
from apicache.events import EventDecoder, EventHandler, EventListenerService, check_consumer_settings
from apicache.health import Readiness
from apicache.http import ApiSite, CacheAPI
from apicache.instrument import TimedUpstream
from apicache.logs import capture_stdlib_logging, json_log_observer
from apicache.metrics import Metrics
from apicache.oauth import TokenProvider
from apicache.routes import Router
from apicache.store import IStore, MemoryStore
from apicache.store.redis import RedisStore
from apicache.tracing import Tracer, tracer_from_environ
from apicache.upstream import UpstreamClient
from apicache.vcap import BindingFiller, bindings_from_environ
from apicache.workers import (
    WORKER_ENV,
    AdoptedPortEndpoint,
    SiblingRelay,
    WorkerLink,
    WorkersUnsupported,
    WorkerSupervisor,
    worker_argv,
)

__all__ = ["Options", "makeService", "DEFAULT_LISTEN"]

DEFAULT_LISTEN = "tcp:8080:interface=127.0.0.1"
DEFAULT_CONFIG = "apicache.toml"


def _check_endpoint(option: str, value: str) -> str:
    try:
        # parsing needs no reactor; the endpoint is built again in makeService
        serverFromString(None, value)  # type: ignore[arg-type]
    except (ValueError, TypeError, KeyError, IndexError, OSError) as e:
        # OSError: an ssl: endpoint's certificate or key file can't be read
        raise usage.UsageError(f"{option}: not a server endpoint description ({value!r}): {e}") from None
    return value


class Options(usage.Options):
    """
    Command-line options of ``twistd apicache``.
    """

    synopsis = "[--config PATH] [--listen ENDPOINT] [--workers N]"
    longdesc = "A caching proxy for external API calls, per tenant, kept fresh by events."

    optParameters = [
        ["config", "c", None, "TOML configuration file (default: ./apicache.toml if it exists, else built-in defaults)."],
        ["listen", "l", None, "Server endpoint to listen on, e.g. tcp:8080 (default: server.listen, then tcp:$PORT, then tcp:8080:interface=127.0.0.1)."],
        ["workers", "w", "1", "Worker processes sharing the listening socket."],
    ]

    def opt_listen(self, value: str) -> None:
        self["listen"] = _check_endpoint("--listen", value)

    def opt_workers(self, value: str) -> None:
        try:
            n = int(value)
        except ValueError:
            n = 0
        if n < 1:
            raise usage.UsageError(f"--workers: expected an integer of 1 or more, got {value!r}")
        self["workers"] = n

    opt_l = opt_listen
    opt_w = opt_workers

    def postOptions(self) -> None:
        self["workers"] = int(self["workers"])


class ApiCacheService(MultiService):
    """
    The daemon: child services start in the order added and stop one after
    another in reverse (HTTP drains first, then events, then connections).

    When attached to a twistd application it installs the JSON log
    observer, so that twistd's own lines are JSON too.
    """

    def __init__(self, log_observer: ILogObserver | None = None) -> None:
        super().__init__()
        self.log_observer = log_observer

    def setServiceParent(self, parent: Any) -> None:
        if self.log_observer is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.log_observer)
        super().setServiceParent(parent)

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        children = list(reversed(list(self)))

        async def stop_in_order() -> None:
            for child in children:
                await maybeDeferred(child.stopService)

        return Deferred.fromCoroutine(stop_in_order())


class HTTPService(StreamServerEndpointService):
    """
    Listens for HTTP; on stop, stops accepting and lets requests in flight
    finish for up to ``grace`` seconds.
    """

    log = Logger()
    _raiseSynchronously = True

    def __init__(self, endpoint: IStreamServerEndpoint, site: ApiSite, grace: float, clock: IReactorTime) -> None:
        super().__init__(endpoint, site)
        self.site = site
        self.grace = grace
        self.clock = clock

    def stopService(self) -> Deferred[None]:
        async def drain() -> None:
            started = self.clock.seconds()
            await super(HTTPService, self).stopService()
            if self.site.active:
                self.log.info("waiting up to {grace} s for {n} requests in flight", grace=self.grace, n=self.site.active)
                try:
                    await self.site.when_idle().addTimeout(self.grace, self.clock)
                except DeferredTimeout:
                    self.log.warn("{n} requests still in flight after the grace period", n=self.site.active)
            # let the last answers reach their callers before the reactor
            # drops every connection
            left = max(self.grace - (self.clock.seconds() - started), 0.5)
            try:
                await self.site.close_connections().addTimeout(left, self.clock)
            except DeferredTimeout:
                pass

        return Deferred.fromCoroutine(drain())


class UpstreamService(Service):
    """
    Closes the upstream client's pooled connections on stop.
    """

    def __init__(self, upstream: UpstreamClient) -> None:
        self.upstream = upstream

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return self.upstream.close()


def choose_listen(options_listen: str | None, config: Config, environ: Mapping[str, str]) -> str:
    """
    Return the endpoint to listen on: ``--listen``, ``server.listen``,
    ``tcp:$PORT``, then loopback port 8080.
    """
    if options_listen:
        return options_listen
    if config.server.listen:
        return config.server.listen
    if environ.get("PORT"):
        return f"tcp:{environ['PORT']}"
    return DEFAULT_LISTEN


class RedisStoreService(Service):
    """
    Connects a L{RedisStore} on start (reconnecting in the background) and
    closes its connections on stop.
    """

    def __init__(self, store: RedisStore) -> None:
        self.store = store

    def startService(self) -> None:
        super().startService()
        self.store.start()

    def stopService(self) -> Deferred[None]:
        Service.stopService(self)
        return self.store.close()


def _store(config: Config, reactor: Any = None) -> IStore:
    s = config.store
    if s.backend == "redis":
        try:
            return RedisStore.from_config(s, reactor)
        except ValueError as e:
            # the message names the bad part, never the URL (it may hold a password)
            raise ConfigError(
                config.source, "store.redis_url", f"expected redis://[[user]:password@]host[:port][/db]: {e}"
            ) from None
    return MemoryStore(s.max_bytes, int(s.max_bytes * s.max_entry_fraction))


def _wire_redis(store: IStore, root: MultiService, readiness: Readiness, metrics: Metrics) -> None:
    if isinstance(store, RedisStore):
        readiness.add("redis", store.is_ready)
        metrics.add_source(store.metrics)
        RedisStoreService(store).setServiceParent(root)


def _register_metrics(metrics: Metrics, registry: CacheRegistry, store: IStore, upstream: UpstreamClient) -> None:
    def source() -> Iterator[Metric]:
        stats = store.stats()
        yield GaugeMetricFamily("apicache_store_entries", "Entries held in this process.", value=stats["entries"])
        yield GaugeMetricFamily("apicache_store_bytes", "Bytes charged to the store's budget.", value=stats["bytes"])
        yield CounterMetricFamily("apicache_store_evictions", "Entries evicted to stay within the budget.", value=stats["evictions"])
        c = registry.counters
        yield CounterMetricFamily("apicache_upstream_fetches", "Upstream fetches started.", value=c["fetches"])
        yield CounterMetricFamily("apicache_coalesced_waiters", "Misses that waited for another caller's fetch.", value=c["coalesced"])
        yield CounterMetricFamily("apicache_store_errors", "Answers that could not be stored.", value=c["store_errors"])
        yield GaugeMetricFamily("apicache_upstream_in_flight", "Upstream fetches running now.", value=upstream.in_flight)
        yield GaugeMetricFamily("apicache_tenant_caches", "(tenant, route type) caches held.", value=len(registry))

    metrics.add_source(source)


def _events(
    config: Config,
    registry: CacheRegistry,
    reactor: Any,
    api: CacheAPI,
    readiness: Readiness,
    metrics: Metrics,
    credentials: TokenProvider | None,
) -> EventListenerService:
    handler = EventHandler(EventDecoder(config.events, config.routes), registry, reactor)
    listener = EventListenerService(
        config.kafka,
        handler,
        reactor,
        instance=api.node,
        credentials=credentials,
        shared_store=bool(getattr(registry.store, "shared", False)),
        bounds={r.type: r.max_staleness for r in config.routes if r.max_staleness > 0},
    )
    try:
        # with token credentials the password comes later: check with a stand-in
        check_consumer_settings({"sasl.password": "-"} | listener.settings if credentials else listener.settings)
    except ValueError as e:
        raise ConfigError(config.source, "kafka", f"librdkafka refuses the settings: {e}") from None
    readiness.add("kafka", listener.is_ready)
    api.info_sources.append(listener.info)
    metrics.add_source(listener.metrics)
    return listener


class TracerService(Service):
    """
    Flushes exported spans on stop (after HTTP has drained).
    """

    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer

    def stopService(self) -> None:
        Service.stopService(self)
        self.tracer.close()


def build(
    config: Config,
    reactor: Any,
    endpoint: IStreamServerEndpoint,
    log_observer: ILogObserver | None = None,
    tracer: Tracer | None = None,
    kafka_credentials: TokenProvider | None = None,
) -> ApiCacheService:
    """
    Compose the daemon's services from a validated configuration.

    @param kafka_credentials: when the Kafka SASL password is an OAuth token
        (Cloud Foundry binding): started first, stopped last.
    """
    router = Router(config.routes, config.source)
    metrics = Metrics()
    readiness = Readiness()
    store = _store(config, reactor)
    up = config.upstream
    upstream = UpstreamClient(
        reactor,
        up.base_url,
        timeout=up.timeout,
        max_body_bytes=up.max_body_bytes,
        max_connections=up.max_connections,
        max_in_flight=up.max_in_flight,
    )
    timed = TimedUpstream(upstream, metrics, reactor)
    registry = CacheRegistry(store, timed, reactor, config.routes, up.keyed_headers, config.server.max_tenants)
    api = CacheAPI(config, registry, router, reactor, readiness, metrics)
    _register_metrics(metrics, registry, store, upstream)
    tenant_entries = getattr(store, "tenant_entries", None)
    if tenant_entries is not None:
        metrics.tenant_entries(tenant_entries)
    tracer = tracer or Tracer()
    site = ApiSite(api.resource(), reactor, metrics, config.server.access_log, tracer)

    root = ApiCacheService(log_observer)
    # first child: stopped last, after HTTP has drained
    _wire_redis(store, root, readiness, metrics)
    if kafka_credentials is not None:
        kafka_credentials.setServiceParent(root)
    TracerService(tracer).setServiceParent(root)
    UpstreamService(upstream).setServiceParent(root)
    if config.kafka.enabled:
        # after the upstream, before HTTP: stopped after HTTP drains
        _events(config, registry, reactor, api, readiness, metrics, kafka_credentials).setServiceParent(root)
    HTTPService(endpoint, site, config.server.shutdown_grace, reactor).setServiceParent(root)
    root.api = api  # type: ignore[attr-defined]
    root.kafka_credentials = kafka_credentials  # type: ignore[attr-defined]
    return root


class GarbageCollectorTuning(Service):
    """
    Once the daemon runs: everything built at start-up moves to the
    garbage collector's permanent generation (never scanned again), and the
    young generation is collected less often.  The hit path makes little
    cyclic garbage, but a full collection scans every cached entry: the
    p99 pauses of issue 5.
    """

    def __init__(self, threshold: tuple[int, int, int] = (50_000, 20, 100)) -> None:
        self.threshold = threshold

    def startService(self) -> None:
        super().startService()
        gc.collect()
        gc.freeze()
        gc.set_threshold(*self.threshold)


class _StartupNotes(Service):
    """Logs what the daemon runs with, once started."""

    log = Logger()

    def __init__(self, config: Config, listen: str, bound: list[str] | None = None) -> None:
        self.config = config
        self.listen = listen
        self.bound = bound or []

    def startService(self) -> None:
        super().startService()
        c = self.config
        self.log.info(
            "apicache starting: config {source}, listen {listen}, store {store}, {n} routes",
            source=c.source,
            listen=self.listen,
            store=c.store.backend,
            n=len(c.routes),
        )
        if self.bound:
            # the keys only: the values are secrets
            self.log.info("from VCAP_SERVICES: {keys}", keys=", ".join(self.bound))
        if not c.routes:
            self.log.warn("no routes are configured: only /healthz, /readyz, / and /metrics answer")


def makeService(options: Options) -> IService:
    """
    Build the daemon from the command line.  A bad configuration file writes
    one line on stderr and exits with status 1.
    """
    from twisted.internet import reactor

    environ = os.environ
    path = options["config"]
    if path is None and os.path.exists(DEFAULT_CONFIG):
        path = DEFAULT_CONFIG
    worker = json.loads(environ[WORKER_ENV]) if environ.get(WORKER_ENV) else None
    try:
        bindings = bindings_from_environ(environ)
        filler = BindingFiller(bindings) if bindings is not None else None
        config = load_config(path, environ, filler) if filler is not None else load_config(path, environ)
        listen = choose_listen(options["listen"], config, environ)
        try:
            endpoint = serverFromString(reactor, listen)
        except (ValueError, TypeError, KeyError, IndexError, OSError) as e:
            raise ConfigError(config.source, "server.listen", f"not a server endpoint description ({listen!r}): {e}") from None
        observer = json_log_observer(config.server.log_level)
        if worker is None and options["workers"] > 1:
            if config.kafka.enabled and config.kafka.mode == "group" and config.store.backend == "memory":
                # each worker has its own memory store: each must see every event
                raise ConfigError(
                    config.source,
                    "kafka.mode",
                    'with --workers above 1 and the memory store every worker needs every event: use "broadcast"',
                )
            try:
                return supervise(config, reactor, endpoint, options["workers"], path, environ, observer, listen)
            except WorkersUnsupported as e:
                raise ConfigError(config.source, "server.listen", f"{e}, not {listen!r}") from None
        if worker is not None:
            endpoint = AdoptedPortEndpoint(reactor, worker["listen_fd"], worker["family"])
            listen = f"{worker.get('listen', listen)} (worker {worker['index']} of {worker['count']})"
        credentials = None
        if filler is not None and filler.kafka_token_url and config.kafka.enabled:
            client_id, secret = filler.kafka_client
            credentials = TokenProvider(filler.kafka_token_url, client_id, secret, reactor, Agent(reactor))
        root = build(
            config,
            reactor,
            endpoint,
            observer,
            tracer=tracer_from_environ(environ),
            kafka_credentials=credentials,
        )
    except ConfigError as e:
        sys.stderr.write(f"{e}\n")
        sys.stderr.flush()
        raise SystemExit(1) from None
    if worker is not None:
        _join_supervisor(root, reactor, worker)
    capture_stdlib_logging(config.server.log_level)
    notes = _StartupNotes(config, listen, filler.filled if filler is not None else None)
    notes.setServiceParent(root)
    GarbageCollectorTuning().setServiceParent(root)
    return root


def supervise(
    config: Config,
    reactor: Any,
    endpoint: IStreamServerEndpoint,
    count: int,
    config_path: str | None,
    environ: Mapping[str, str],
    observer: ILogObserver,
    listen: str,
) -> IService:
    """
    Return the supervisor of ``count`` workers sharing ``endpoint``.

    @raise WorkersUnsupported: ``endpoint`` can't be shared.
    """
    root = ApiCacheService(observer)
    env = {k: v for k, v in environ.items() if k != WORKER_ENV}
    supervisor = WorkerSupervisor(
        reactor, endpoint, count, worker_argv(config_path), env, config.server.shutdown_grace, listen
    )
    supervisor.setServiceParent(root)
    root.supervisor = supervisor  # type: ignore[attr-defined]
    return root


def _join_supervisor(root: ApiCacheService, reactor: Any, worker: dict[str, Any]) -> None:
    api: CacheAPI = root.api  # type: ignore[attr-defined]

    def orphaned() -> None:
        if reactor.running:
            reactor.stop()

    link = WorkerLink(reactor, worker["control_fd"], api.registry, orphaned)
    link.setServiceParent(root)
    api.invalidator = SiblingRelay(api.registry, link)
    pid = os.getpid()
    api.info_sources.append(lambda: {"worker": worker["index"], "workers": worker["count"], "pid": pid})
