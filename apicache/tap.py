"""
The twistd plugin's options and service: ``twistd -n apicache --config
apicache.toml``.

This is the wiring: the only module that touches the global reactor or the
environment, and the only one that knows every part.  A process runs one of
three ways: a single daemon (L{single}), the supervisor of ``--workers N``
(L{supervisor}), or one of its workers (L{worker}).
"""

from __future__ import annotations

import json
import os
import resource
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from twisted.application.service import IService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import (
    IReactorCore,
    IReactorFromThreads,
    IReactorProcess,
    IReactorSocket,
    IReactorTCP,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.python import usage
from twisted.web.client import Agent

from apicache import __version__
from apicache.auth.jwks import JWKSSource
from apicache.auth.tokens import TokenVerifier
from apicache.cache.links import LinkTargets
from apicache.cache.registry import CacheRegistry
from apicache.cache.routes import Router
from apicache.config import Config, ConfigError, load_config
from apicache.daemon.service import ApiCacheService, GarbageCollectorTuning, StartupNotes
from apicache.daemon.vcap import BindingFiller, bindings_from_environ
from apicache.daemon.workers import (
    WORKER_ENV,
    AdoptedPortEndpoint,
    Inheritance,
    SiblingRelay,
    WorkerLink,
    WorkersUnsupported,
    WorkerSupervisor,
    worker_argv,
)
from apicache.events.decoding import EventDecoder
from apicache.events.handling import EventHandler
from apicache.events.kafka import EventListenerService, check_consumer_settings
from apicache.events.oauth import TokenProvider
from apicache.events.watermark import Watermark
from apicache.http.api import CacheAPI
from apicache.http.channel import ApiSite, ConnectionLimits, HTTPService, connection_limit
from apicache.ops.health import Readiness
from apicache.ops.instrument import TimedUpstream
from apicache.ops.logs import AccessLog, capture_stdlib_logging, json_log_observer
from apicache.ops.metrics import (
    Metrics,
    auth_families,
    cache_families,
    client_families,
    store_families,
    tag_families,
)
from apicache.ops.tracing import Tracer, TracerService, tracer_from_environ
from apicache.store import IStore, MemoryStore
from apicache.store.redis import RedisStore, RedisStoreService
from apicache.upstream.client import UpstreamClient, UpstreamService
from apicache.upstream.intermediary import IntermediaryUpstream

__all__ = ["Options", "makeService", "build", "Daemon", "DEFAULT_LISTEN"]

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

    def opt_version(self) -> None:
        """
        Print apicache's version and exit.
        """
        # usage.Options' own --version prints Twisted's
        print(f"apicache {__version__}")
        sys.exit(0)

    opt_l = opt_listen
    opt_w = opt_workers

    def postOptions(self) -> None:
        self["workers"] = int(self["workers"])


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


@dataclass
class Daemon:
    """
    What L{build} wires: the root service, and the parts the worker path
    and tests reach into.

    @ivar kafka_credentials: the OAuth token provider of a Kafka binding
        (Cloud Foundry), or C{None}.
    """

    service: ApiCacheService
    api: CacheAPI
    registry: CacheRegistry
    kafka_credentials: TokenProvider | None = None


def _store(config: Config, reactor: IReactorTime) -> IStore:
    s = config.store
    if s.backend == "redis":
        try:
            return RedisStore.from_config(s, IReactorTCP(reactor))
        except ValueError as e:
            # the message names the bad part, never the URL (it may hold a password)
            raise ConfigError(
                config.source, "store.redis_url", f"expected redis://[[user]:password@]host[:port][/db]: {e}"
            ) from None
    return MemoryStore(
        s.max_bytes,
        int(s.max_bytes * s.max_entry_fraction),
        tenant_max_bytes=s.tenant_max_bytes,
        clock=reactor,
        fair_share=s.fair_share,
    )


def _auth(config: Config, reactor: IReactorTime, readiness: Readiness, metrics: Metrics) -> tuple[JWKSSource, TokenVerifier]:
    """
    Return the key set's source (a service) and the verifier of bearer
    tokens, for C{[auth]}; C{/readyz} names C{jwks} until a key set loads.
    """
    auth = config.auth
    try:
        source = JWKSSource(
            auth.jwks,
            reactor,
            agent=Agent(reactor) if auth.jwks_is_url else None,  # type: ignore[arg-type]
            refresh_interval=auth.jwks_refresh,
        )
        verifier = TokenVerifier(
            source, reactor, algorithms=auth.algorithms, issuers=auth.issuers, audiences=auth.audiences, leeway=auth.leeway
        )
    except ValueError as e:
        raise ConfigError(config.source, "auth", str(e)) from None
    readiness.add("jwks", source.is_ready)
    metrics.add_source(lambda: auth_families(verifier.failures, source.key_count, source.refresh_failures))
    return source, verifier


def _events(
    config: Config,
    registry: CacheRegistry,
    reactor: IReactorTime,
    api: CacheAPI,
    readiness: Readiness,
    metrics: Metrics,
    credentials: TokenProvider | None,
    watermark: Watermark | None,
) -> EventListenerService:
    handler = EventHandler(EventDecoder(config.events, config.routes), registry, reactor)
    listener = EventListenerService(
        config.kafka,
        handler,
        IReactorFromThreads(reactor),
        instance=api.node,
        credentials=credentials,
        watermark=watermark,
        bounds={r.type: r.max_staleness for r in config.routes if r.max_staleness > 0},
        # group mode: the other instances' partitions count through Redis
        exchange=(
            registry.store.watermarks(config.kafka.group_id)
            if config.kafka.mode == "group" and isinstance(registry.store, RedisStore)
            else None
        ),
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


def _open_file_limit() -> int:
    """
    Return this process's soft limit on open files (a large number when
    there is none).
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 20 if soft == resource.RLIM_INFINITY else soft


def build(
    config: Config,
    reactor: IReactorTime,
    endpoint: IStreamServerEndpoint,
    root: ApiCacheService | None = None,
    tracer: Tracer | None = None,
    kafka_credentials: TokenProvider | None = None,
    worker: int | None = None,
) -> Daemon:
    """
    Compose the daemon's services from a validated configuration.

    @param root: the root service to add them to (a new one by default).
    @param worker: the worker number with ``--workers``, for the access log.
    @param kafka_credentials: when the Kafka SASL password is an OAuth token
        (Cloud Foundry binding): started first, stopped last.
    @return: the daemon, its services added to C{root} in start order.
    @raise ConfigError: a part refuses the configuration (Redis URL, Kafka
        settings).
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
        tenant_max_in_flight=up.tenant_max_in_flight,
        max_header_bytes=up.max_header_bytes,
    )
    intermediary = IntermediaryUpstream(upstream, up.set_headers, LinkTargets(up.base_url, config.routes, router))
    timed = TimedUpstream(intermediary, metrics, reactor)
    # the event listener advances it, routes with max_staleness read it
    watermark = (
        Watermark(
            reactor,
            group=config.kafka.mode == "group",
            shared=store.shared,
            max_clock_skew=config.kafka.max_clock_skew,
        )
        if config.kafka.enabled
        else None
    )
    registry = CacheRegistry(
        store,
        timed,
        reactor,
        config.routes,
        up.keyed_headers,
        config.server.max_tenants,
        upstream_config=up,
        watermark=watermark,
    )
    jwks, verifier = _auth(config, reactor, readiness, metrics) if config.auth.enabled else (None, None)
    api = CacheAPI(config, registry, router, reactor, readiness, metrics, verifier=verifier)
    metrics.add_source(lambda: cache_families(store.stats(), registry.counters, upstream.in_flight, len(registry)))
    if isinstance(store, (MemoryStore, RedisStore)):
        metrics.add_source(lambda: store_families(store.detailed_stats(), store.top_tenants(10)))
        if config.store.fair_share == "client":
            metrics.add_source(lambda: client_families(store.client_sizes(), api.keys.client_name))
    metrics.add_source(lambda: tag_families(registry.tag_purges, registry.tag_dropped, store.tag_stats()))
    tenant_entries = getattr(store, "tenant_entries", None)
    if tenant_entries is not None:
        metrics.tenant_entries(tenant_entries)
    tracer = tracer or Tracer()
    server = config.server
    limits = ConnectionLimits(
        max_connections=connection_limit(server.max_connections, _open_file_limit()),
        header_timeout=server.header_timeout,
        idle_timeout=server.idle_timeout,
        max_body_bytes=server.max_body_bytes,
        body_timeout=server.body_timeout,
        max_write_buffer=server.max_write_buffer,
    )
    # access lines are info lines: a log_level above info leaves them out too
    access_log = AccessLog(reactor) if server.access_log and server.log_level in ("debug", "info") else None
    site = ApiSite(
        api.resource(),
        reactor,
        metrics,
        access_log,
        tracer,
        worker,
        keys=api.keys,
        limits=limits,
        tenant_header=api.resolver.tenant_header,
        verifier=verifier,
    )
    metrics.add_source(site.metrics_families)

    root = root if root is not None else ApiCacheService()
    # first child: stopped last, after HTTP has drained
    if isinstance(store, RedisStore):
        readiness.add("redis", store.is_ready)
        metrics.add_source(store.metrics)
        RedisStoreService(store).setServiceParent(root)
    if kafka_credentials is not None:
        kafka_credentials.setServiceParent(root)
    TracerService(tracer).setServiceParent(root)
    if access_log is not None:
        # before HTTP: stopped after it drains, with the last lines
        access_log.setServiceParent(root)
    UpstreamService(upstream).setServiceParent(root)
    if jwks is not None:
        # before HTTP: the key set is read before the first request comes
        jwks.setServiceParent(root)
    if config.kafka.enabled:
        # after the upstream, before HTTP: stopped after HTTP drains
        _events(config, registry, reactor, api, readiness, metrics, kafka_credentials, watermark).setServiceParent(root)
    HTTPService(endpoint, site, config.server.shutdown_grace, reactor).setServiceParent(root)
    return Daemon(root, api, registry, kafka_credentials)


# -- the three ways a process runs -------------------------------------------


@dataclass
class _Start:
    """What every path starts from: the configuration and where it came from."""

    config: Config
    config_path: str | None
    listen: str
    filler: BindingFiller | None
    environ: Mapping[str, str]

    def root(self) -> ApiCacheService:
        # stderr now: once twistd runs, sys.stderr is redirected into the log
        return ApiCacheService(json_log_observer(self.config.server.log_level), self.listen, sys.stderr)

    def credentials(self, reactor: IReactorTime) -> TokenProvider | None:
        f = self.filler
        if f is None or not f.kafka_token_url or not self.config.kafka.enabled:
            return None
        client_id, secret = f.kafka_client
        return TokenProvider(f.kafka_token_url, client_id, secret, reactor, Agent(reactor))

    def finish(self, root: ApiCacheService, serving: str) -> ApiCacheService:
        capture_stdlib_logging(self.config.server.log_level)
        StartupNotes(self.config, serving, self.filler.filled if self.filler is not None else None).setServiceParent(root)
        GarbageCollectorTuning().setServiceParent(root)
        return root


def single(start: _Start, reactor: IReactorTime, endpoint: IStreamServerEndpoint) -> ApiCacheService:
    """
    Return the daemon of one process, listening on ``endpoint``.

    @raise ConfigError: a part refuses the configuration.
    """
    daemon = build(
        start.config,
        reactor,
        endpoint,
        start.root(),
        tracer=tracer_from_environ(start.environ),
        kafka_credentials=start.credentials(reactor),
    )
    return start.finish(daemon.service, f"HTTP on {start.listen}")


def supervisor(start: _Start, reactor: IReactorProcess, endpoint: IStreamServerEndpoint, count: int) -> ApiCacheService:
    """
    Return the supervisor of ``count`` workers sharing ``endpoint``.

    @raise ConfigError: the endpoint can't be shared, or the workers would
        miss events.
    """
    config = start.config
    if config.kafka.enabled and config.kafka.mode == "group" and config.store.backend == "memory":
        # each worker has its own memory store: each must see every event
        raise ConfigError(
            config.source,
            "kafka.mode",
            'with --workers above 1 and the memory store every worker needs every event: use "broadcast"',
        )
    root = start.root()
    env = {k: v for k, v in start.environ.items() if k != WORKER_ENV}
    try:
        workers = WorkerSupervisor(
            reactor, endpoint, count, worker_argv(start.config_path), env, config.server.shutdown_grace, start.listen
        )
    except WorkersUnsupported as e:
        raise ConfigError(config.source, "server.listen", f"{e}, not {start.listen!r}") from None
    workers.setServiceParent(root)
    return root


def worker(start: _Start, reactor: IReactorCore, inherited: Inheritance) -> ApiCacheService:
    """
    Return one worker of a supervisor: a whole daemon accepting on the
    inherited socket, relaying its invalidations to its siblings, stopping
    when the supervisor is gone.

    @param inherited: what the supervisor handed down in L{WORKER_ENV}.
    @raise ConfigError: a part refuses the configuration.
    """
    clock = IReactorTime(reactor)
    sockets = IReactorSocket(reactor)
    endpoint = AdoptedPortEndpoint(sockets, inherited["listen_fd"], inherited["family"])
    daemon = build(
        start.config,
        clock,
        endpoint,
        start.root(),
        tracer=tracer_from_environ(start.environ),
        kafka_credentials=start.credentials(clock),
        worker=inherited["index"],
    )

    def orphaned() -> None:
        if reactor.running:
            reactor.stop()

    registry, api = daemon.registry, daemon.api
    index, count, pid = inherited["index"], inherited["count"], os.getpid()

    def report(what: str) -> Any:
        # what a sibling's GET / and /metrics ask this worker for
        if what == "info":
            return {"worker": index, "pid": pid, **api.figures()}
        if what == "metrics":
            return api.metrics.snapshot()
        raise ValueError(f"no report {what!r}")

    link = WorkerLink(sockets, clock, inherited["control_fd"], registry, orphaned, report)
    link.setServiceParent(daemon.service)
    api.invalidator = SiblingRelay(registry, link, shared=daemon.registry.store.shared)
    api.info_sources.append(lambda: {"worker": index, "workers": count, "pid": pid})

    def every_worker() -> Deferred[list[dict[str, Any]]]:
        mine = report("info")
        return link.siblings("info").addCallback(
            lambda others: sorted([mine, *(figures for _, figures in others)], key=lambda f: f["worker"])
        )

    # GET / and /metrics answer for every worker, whichever takes the request
    api.workers_figures = every_worker
    api.metrics.worker = index
    api.metrics.siblings = lambda: link.siblings("metrics")
    serving = f"HTTP on {inherited['listen']} as worker {index} of {count}, on the supervisor's socket"
    return start.finish(daemon.service, serving)


def makeService(options: Options) -> IService:
    """
    Build the daemon from the command line: one process, the supervisor of
    ``--workers N``, or (with L{WORKER_ENV} set) one of its workers.  A bad
    configuration file writes one line on stderr and exits with status 1.
    """
    from twisted.internet import reactor as installed

    reactor = IReactorCore(installed)
    environ = os.environ
    path = options["config"]
    if path is None and os.path.exists(DEFAULT_CONFIG):
        path = DEFAULT_CONFIG
    inherited: Inheritance | None = json.loads(environ[WORKER_ENV]) if environ.get(WORKER_ENV) else None
    try:
        bindings = bindings_from_environ(environ)
        filler = BindingFiller(bindings) if bindings is not None else None
        config = load_config(path, environ, filler) if filler is not None else load_config(path, environ)
        listen = choose_listen(options["listen"], config, environ)
        try:
            endpoint = serverFromString(reactor, listen)
        except (ValueError, TypeError, KeyError, IndexError, OSError) as e:
            raise ConfigError(config.source, "server.listen", f"not a server endpoint description ({listen!r}): {e}") from None
        start = _Start(config, path, listen, filler, environ)
        if inherited is not None:
            return worker(start, reactor, inherited)
        if options["workers"] > 1:
            return supervisor(start, IReactorProcess(reactor), endpoint, options["workers"])
        return single(start, IReactorTime(reactor), endpoint)
    except ConfigError as e:
        sys.stderr.write(f"{e}\n")
        sys.stderr.flush()
        raise SystemExit(1) from None
