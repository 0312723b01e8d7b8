"""
Worker processes (``--workers N``): one supervisor process owns the
listening socket and N worker processes accept on it (Twisted's
``adoptStreamPort`` pattern); each worker is a whole daemon with its own
store, tenant caches and event listener.

The supervisor restarts a worker that dies and, on SIGTERM, stops every
worker (each drains its requests) before it exits itself.

Each worker keeps a control connection (a Unix socket pair,
:class:`ControlLink` at both ends) to the supervisor.  With the memory store every worker holds its own entries, so an
HTTP ``DELETE`` or ``/clear`` that one worker receives must reach the
others: the worker applies it, then the supervisor relays it to every
sibling and the answer counts what all of them dropped.  Events need no
relay: every worker runs its own listener (broadcast mode).  Coalescing is
per worker: N workers make at most N upstream calls for one cold key.

A worker whose supervisor is gone (its control connection closed) stops.

``GET /`` and ``/metrics`` answer for every worker, whichever takes the
request: that worker asks the supervisor for its siblings' figures over the
same control connection (a "report" query), and the supervisor asks each of
them and hands back what they answered within L{REPORT_TIMEOUT}.  The
figures are read when asked, so every worker's answer gives the same totals.

This module imports nothing of the HTTP layer or the cache: the worker side
wraps the registry as an :class:`~apicache.cache.invalidator.IInvalidator`
(:class:`SiblingRelay`, an IInvalidator itself), which the wiring hands to
the HTTP API.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, DeferredList, fail, maybeDeferred, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint, UNIXServerEndpoint
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IProtocolFactory,
    IReactorProcess,
    IReactorSocket,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import ProcessProtocol, Protocol, ServerFactory
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from apicache._twisted import adopt_fair_port
from apicache.cache.invalidator import IInvalidator
from apicache.store.interface import StoreUnavailable

__all__ = [
    "WORKER_ENV",
    "Inheritance",
    "WorkerSupervisor",
    "WorkerLink",
    "SiblingRelay",
    "ControlLink",
    "ControlLost",
    "Invalidation",
    "AdoptedPortEndpoint",
    "address_family",
    "WorkersUnsupported",
]

#: The environment variable that makes a twistd process a worker: JSON with
#: the inherited descriptors, the worker's index and the number of workers.
WORKER_ENV = "APICACHE_WORKER"
_LISTEN_FD = 3
_CONTROL_FD = 4
#: How long a relayed invalidation may take on the siblings.
RELAY_TIMEOUT = 5.0
#: How long a sibling may take to report its figures (``GET /``,
#: ``/metrics``); one that does not is left out of the answer.
REPORT_TIMEOUT = 2.0
#: The prefix of a worker's query asking the supervisor for its siblings'
#: reports: ``siblings:metrics`` gathers every other worker's ``metrics``.
_SIBLINGS = "siblings:"
#: A worker that dies sooner than this after its start is restarted with a
#: growing delay (up to MAX_RESTART_DELAY) instead of at once.
_STABLE_AFTER = 5.0
MAX_RESTART_DELAY = 30.0


class Inheritance(TypedDict):
    """
    What a worker inherits from its supervisor, as L{WORKER_ENV}'s JSON.

    @ivar listen: the endpoint description the supervisor listens on.
    @ivar family: the listening socket's address family.
    """

    listen_fd: int
    family: int
    listen: str
    control_fd: int
    index: int
    count: int


class WorkersUnsupported(Exception):
    """The listen endpoint can't be shared by worker processes."""


def address_family(endpoint: IStreamServerEndpoint) -> int:
    """
    Return the address family of a listening endpoint workers can share.

    @raise WorkersUnsupported: not a ``tcp:``/``tcp6:``/``unix:`` endpoint
        (a TLS endpoint would need each worker to wrap its connections).
    """
    if isinstance(endpoint, TCP6ServerEndpoint):
        return socket.AF_INET6
    if isinstance(endpoint, TCP4ServerEndpoint):
        return socket.AF_INET
    if isinstance(endpoint, UNIXServerEndpoint):
        return socket.AF_UNIX
    raise WorkersUnsupported("--workers above 1 needs a tcp:, tcp6: or unix: listen endpoint")


# -- the control link ----------------------------------------------------------


@dataclass(frozen=True)
class Invalidation:
    """
    One invalidation carried between processes: an L{IInvalidator} call.

    @ivar action: ``"invalidate"``, ``"refresh"``, ``"clear"``,
        ``"invalidate_tags"`` or ``"refresh_tags"``.
    @ivar route: the route type (empty for ``clear`` and the tag actions).
    @ivar params: the path parameters (empty for ``clear``), or the tags
        of a tag action.
    """

    action: str
    tenant: str | None
    route: str = ""
    params: tuple[str, ...] = ()

    def apply(self, invalidator: IInvalidator) -> Deferred[int]:
        """
        Make this call on ``invalidator``.

        @return: what the call fires with: the number of entries touched.
        """
        if self.action == "clear":
            return invalidator.clear(self.tenant)
        # relayed tag purges carry no source: counted where they began
        if self.action == "invalidate_tags":
            return invalidator.invalidate_tags(self.tenant, self.params)
        if self.action == "refresh_tags":
            return invalidator.refresh_tags(self.tenant, self.params)
        if self.action == "refresh":
            return invalidator.refresh(self.tenant, self.route, self.params)
        return invalidator.invalidate(self.tenant, self.route, self.params)


class ControlLost(StoreUnavailable):
    """The other end of the control link went away before it answered."""


class ControlLink(LineReceiver):
    """
    One end of the control connection between the supervisor and a worker
    (a Unix socket pair): each end asks the other to apply an
    L{Invalidation} and gets the number of entries it touched back, or
    queries it for a report (figures as JSON).

    The worker asks the supervisor to apply an invalidation on its siblings;
    the supervisor asks a sibling to apply it on its own registry.  On the
    wire each message is one JSON line: ``{"op": "ask", "id": N, "action":
    ..., "tenant": ..., "route": ..., "params": [...]}``, answered by
    ``{"op": "answer", "id": N, "n": COUNT}`` or ``{"op": "answer", "id": N,
    "error": TEXT}``.  A query is ``{"op": "ask", "id": N, "query": WHAT}``,
    answered by ``{"op": "answer", "id": N, "value": JSON}`` or an error.

    @param answer: applies an invalidation the other end asked for; fires
        with the count to send back, errbacks with the error to send back.
    @param lost: called once the connection is gone.
    @param report: answers a query: fires with the JSON value to send back.
    """

    delimiter = b"\n"
    # a report holds every sibling's metric families
    MAX_LENGTH = 64 << 20

    def __init__(
        self,
        clock: IReactorTime,
        answer: Callable[[Invalidation], Deferred[int]],
        lost: Callable[[], None] = lambda: None,
        report: Callable[[str], Deferred[Any]] | None = None,
    ) -> None:
        self._clock = clock
        self._answer = answer
        self._lost = lost
        self._report = report
        self._asked = 0
        self._waiting: dict[int, Deferred[Any]] = {}
        #: connected, and not lost yet
        self.is_open = False

    def ask(self, invalidation: Invalidation, timeout: float) -> Deferred[int]:
        """
        Have the other end apply ``invalidation``.

        @return: fires with the number of entries the other end touched;
            errbacks with L{StoreUnavailable} when it reports an error,
            L{ControlLost} when the link goes away first, and
            L{twisted.internet.defer.TimeoutError} after ``timeout``
            seconds.
        """
        return self._asking(
            {
                "action": invalidation.action,
                "tenant": invalidation.tenant,
                "route": invalidation.route,
                "params": list(invalidation.params),
            },
            timeout,
        )

    def query(self, what: str, timeout: float) -> Deferred[Any]:
        """
        Ask the other end for a report.

        @return: fires with the value it answered; errbacks as L{ask}.
        """
        return self._asking({"query": what}, timeout)

    def _asking(self, question: dict[str, object], timeout: float) -> Deferred[Any]:
        if not self.is_open:
            return fail(ControlLost("the control link is closed"))
        self._asked += 1
        id_ = self._asked

        def forget(d: Deferred[Any]) -> None:
            self._waiting.pop(id_, None)

        d: Deferred[Any] = Deferred(forget)
        self._waiting[id_] = d
        self._send({"op": "ask", "id": id_, **question})
        return d.addTimeout(timeout, self._clock)

    def connectionMade(self) -> None:
        self.is_open = True

    def lineReceived(self, line: bytes) -> None:
        message = json.loads(line)
        if message["op"] == "ask":
            id_ = message["id"]
            try:
                if "query" in message:
                    if self._report is None:
                        raise StoreUnavailable(f"nothing here answers {message['query']!r}")
                    d: Deferred[Any] = self._report(message["query"])
                else:
                    invalidation = Invalidation(
                        message["action"], message["tenant"], message["route"], tuple(message["params"])
                    )
                    d = self._answer(invalidation)
            except Exception:  # noqa: BLE001 - sent back as the answer's error
                d = fail()
            d.addCallbacks(lambda value: self._answered(id_, value), lambda f: self._failed(id_, f))
        elif message["op"] == "answer":
            waiting = self._waiting.pop(message["id"], None)
            if waiting is None or waiting.called:
                return
            if "error" in message:
                waiting.errback(StoreUnavailable(message["error"]))
            elif "value" in message:
                waiting.callback(message["value"])
            else:
                waiting.callback(int(message["n"]))

    def _answered(self, id_: int, value: Any) -> None:
        if isinstance(value, int):
            self._send({"op": "answer", "id": id_, "n": value})
        else:
            self._send({"op": "answer", "id": id_, "value": value})

    def _failed(self, id_: int, failure: Failure) -> None:
        self._send({"op": "answer", "id": id_, "error": failure.getErrorMessage()})

    def _send(self, message: dict[str, object]) -> None:
        if self.is_open:
            self.sendLine(json.dumps(message).encode())

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.is_open = False
        waiting = list(self._waiting.values())
        self._waiting.clear()
        for d in waiting:
            if not d.called:
                d.errback(ControlLost("the other end of the control link is gone"))
        self._lost()


class _SharedSocket(ServerFactory):
    """
    The supervisor's factory: it listens, its workers accept.  Named in
    Twisted's "... starting on PORT" line, in plain words.
    """

    noisy = False

    def __init__(self, workers: int) -> None:
        self.workers = workers

    def logPrefix(self) -> str:
        return f"HTTP socket for {self.workers} workers"


class _OneProtocol(ServerFactory):
    """Hands the one protocol of an adopted connection to the reactor."""

    def __init__(self, protocol: Protocol) -> None:
        self.protocol_ = protocol

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        return self.protocol_


def _adopt_connection(reactor: IReactorSocket, fd: int, protocol: Protocol) -> None:
    reactor.adoptStreamConnection(fd, socket.AF_UNIX, _OneProtocol(protocol))
    os.close(fd)  # adopted as a duplicate


# -- the supervisor ----------------------------------------------------------


class _Worker(ProcessProtocol):
    """One worker process as the supervisor sees it."""

    def __init__(self, supervisor: WorkerSupervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.control: ControlLink | None = None
        self.started = 0.0
        self.ended: Deferred[None] = Deferred()

    def processEnded(self, reason: Failure) -> None:
        self.supervisor._ended(self, reason)
        self.ended.callback(None)


class WorkerSupervisor(Service):
    """
    Owns the listening socket, runs ``count`` workers on it, restarts the
    ones that die, relays invalidations between them, and stops them all
    (each draining its requests) when stopped.

    @param reactor: spawns the workers; also their clock and the adopter of
        their control connections (L{IReactorTime}, L{IReactorSocket}).
    @param argv: the worker command line (a twistd invocation).
    @param environ: the workers' environment, without L{WORKER_ENV}.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorProcess,
        endpoint: IStreamServerEndpoint,
        count: int,
        argv: list[str],
        environ: dict[str, str],
        grace: float,
        listen: str = "",
    ) -> None:
        self.reactor = reactor
        self.clock = IReactorTime(reactor)
        self.sockets = IReactorSocket(reactor)
        self.listen = listen
        self.endpoint = endpoint
        self.family = address_family(endpoint)
        self.count = count
        self.argv = argv
        self.environ = environ
        self.grace = grace
        self.workers: dict[int, _Worker] = {}
        self.port: IListeningPort | None = None
        self._stopping = False
        self._delays: dict[int, float] = {}

    def privilegedStartService(self) -> None:
        """
        Listen, before privileges are shed.

        @raise twisted.internet.error.CannotListenError: the address is in
            use, or privileged.
        """
        d = self.endpoint.listen(_SharedSocket(self.count))
        result: list[IListeningPort | Failure] = []
        d.addBoth(result.append)
        port = result[0]
        if isinstance(port, Failure):
            port.raiseException()
        assert not isinstance(port, Failure)
        self.port = port
        # the workers accept; this process never does
        port.stopReading()  # type: ignore[attr-defined]
        super().privilegedStartService()

    def startService(self) -> None:
        super().startService()
        if self.port is None:
            self.privilegedStartService()
        self.log.info("supervising {n} workers serving HTTP on {listen}", n=self.count, listen=self.listen)
        for i in range(self.count):
            self._spawn(i)

    def _spawn(self, index: int) -> None:
        if self._stopping:
            return
        assert self.port is not None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        worker = _Worker(self, index)
        env = dict(self.environ)
        inheritance = Inheritance(listen_fd=_LISTEN_FD, family=int(self.family), listen=self.listen,
                                  control_fd=_CONTROL_FD, index=index, count=self.count)
        env[WORKER_ENV] = json.dumps(inheritance)
        fds = {0: 0, 1: 1, 2: 2, _LISTEN_FD: self.port.fileno(), _CONTROL_FD: theirs.fileno()}  # type: ignore[attr-defined]
        worker.started = self.clock.seconds()
        self.reactor.spawnProcess(worker, self.argv[0], self.argv, env=env, childFDs=fds)
        theirs.close()
        control = ControlLink(
            self.clock,
            lambda invalidation: self._relay(worker, invalidation),
            report=lambda what: self._gather(worker, what),
        )
        worker.control = control
        _adopt_connection(self.sockets, os.dup(ours.fileno()), control)
        ours.close()
        self.workers[index] = worker
        self.log.info("worker {index} started (pid {pid})", index=index, pid=worker.transport.pid)  # type: ignore[union-attr]

    def _ended(self, worker: _Worker, reason: Failure) -> None:
        if self.workers.get(worker.index) is worker:
            del self.workers[worker.index]
        status = reason.value.exitCode if isinstance(reason.value, (ProcessDone, ProcessTerminated)) else None
        sig = getattr(reason.value, "signal", None)
        if self._stopping:
            self.log.info("worker {index} stopped", index=worker.index)
            return
        lived = self.clock.seconds() - worker.started
        delay = 0.0 if lived >= _STABLE_AFTER else min(MAX_RESTART_DELAY, max(0.5, 2 * self._delays.get(worker.index, 0.25)))
        self._delays[worker.index] = delay
        self.log.warn(
            "worker {index} died (status {status}, signal {signal}) after {lived:.1f} s; restarting in {delay} s",
            index=worker.index, status=status, signal=sig, lived=lived, delay=delay,
        )
        self.clock.callLater(delay, self._spawn, worker.index)

    # -- relaying ------------------------------------------------------------

    def _relay(self, origin: _Worker, invalidation: Invalidation) -> Deferred[int]:
        """
        Apply an invalidation ``origin`` received on every other worker.

        @return: fires with the entries they touched together; errbacks
            with L{StoreUnavailable} when one did not confirm.
        """

        def gone(f: Failure) -> int:
            f.trap(ControlLost)
            return 0  # a worker that is gone holds nothing any more

        calls = [
            worker.control.ask(invalidation, RELAY_TIMEOUT).addErrback(gone)
            for worker in list(self.workers.values())
            if worker is not origin and worker.control is not None and worker.control.is_open
        ]

        def total(results: list[tuple[bool, int]]) -> int:
            # consumeErrors: a failed call is (False, Failure)
            failed = [r for ok, r in results if not ok]
            if failed:
                raise StoreUnavailable(f"{len(failed)} workers did not confirm")
            return sum(r for _, r in results)

        return DeferredList(calls, consumeErrors=True).addCallback(total)

    def _gather(self, origin: _Worker, query: str) -> Deferred[Any]:
        """
        Answer a worker's ``siblings:WHAT`` query: ask every other worker
        for its ``WHAT`` report.

        @return: fires with ``[[index, report], ...]`` of the workers that
            answered within L{REPORT_TIMEOUT} (one restarting, or stuck, is
            left out rather than holding up the scrape).
        """
        if not query.startswith(_SIBLINGS):
            return fail(StoreUnavailable(f"the supervisor does not answer {query!r}"))
        what = query[len(_SIBLINGS) :]
        asked = [
            (worker.index, worker.control.query(what, REPORT_TIMEOUT))
            for worker in list(self.workers.values())
            if worker is not origin and worker.control is not None and worker.control.is_open
        ]

        def answered(results: list[tuple[bool, Any]]) -> list[list[Any]]:
            return [[index, value] for (index, _), (ok, value) in zip(asked, results, strict=True) if ok]

        return DeferredList([d for _, d in asked], consumeErrors=True).addCallback(answered)

    # -- stopping ------------------------------------------------------------

    def stopService(self) -> Deferred[None]:
        """
        @return: fires once every worker has ended (killed if one outlives
            the grace period by 5 s) and the socket is closed.
        """
        super().stopService()
        self._stopping = True
        workers = list(self.workers.values())
        for w in workers:
            self._signal(w, "TERM")

        def kill(_: object) -> None:
            for w in workers:
                if not w.ended.called:
                    self.log.warn("worker {index} still running: killing it", index=w.index)
                    self._signal(w, "KILL")

        def close(_: object) -> Deferred[None] | None:
            if self.port is not None:
                return self.port.stopListening()  # type: ignore[no-any-return]
            return None

        ended = DeferredList([w.ended for w in workers])
        timer = self.clock.callLater(self.grace + 5.0, kill, None)

        def done(result: object) -> object:
            if timer.active():
                timer.cancel()
            return result

        return ended.addBoth(done).addBoth(close)  # type: ignore[return-value]

    @staticmethod
    def _signal(worker: _Worker, name: str) -> None:
        try:
            worker.transport.signalProcess(name)  # type: ignore[union-attr]
        except Exception:  # noqa: BLE001 - gone already
            pass


# -- the worker side ---------------------------------------------------------


@implementer(IStreamServerEndpoint)
class AdoptedPortEndpoint:
    """
    A server endpoint listening on an inherited listening socket.
    """

    def __init__(self, reactor: IReactorSocket, fd: int, family: int) -> None:
        self.reactor = reactor
        self.fd = fd
        self.family = family

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        """
        @return: fires with the port, listening already.
        """
        port: IListeningPort
        if self.family in (socket.AF_INET, socket.AF_INET6):
            # what reactor.adoptStreamPort does, with a port that accepts
            # one connection per wake-up: workers take their share of a burst
            port = adopt_fair_port(self.reactor, self.fd, self.family, factory)
        else:
            # Twisted annotates the factory as a ServerFactory; any IProtocolFactory works
            port = self.reactor.adoptStreamPort(self.fd, socket.AddressFamily(self.family), factory)  # type: ignore[arg-type]
        os.close(self.fd)  # adopted as a duplicate
        return succeed(port)


class WorkerLink(Service):
    """
    A worker's control connection to its supervisor: applies the
    invalidations its siblings received (on this worker's registry, never
    relayed again), sends this worker's to them with :meth:`relay`, reports
    this worker's figures when a sibling asks (``report``), gathers the
    siblings' with :meth:`siblings`, and calls ``orphaned`` when the
    supervisor is gone.

    @param report: returns this worker's report of a kind (``"info"``,
        ``"metrics"``), as JSON-able values.
    """

    log = Logger()

    def __init__(
        self,
        reactor: IReactorSocket,
        clock: IReactorTime,
        fd: int,
        registry: IInvalidator,
        orphaned: Callable[[], None],
        report: Callable[[str], Any] | None = None,
    ) -> None:
        self.reactor = reactor
        self.clock = clock
        self.fd = fd
        self.registry = registry
        self.orphaned = orphaned
        self.report = report
        self.control: ControlLink | None = None
        self._stopped = False

    def startService(self) -> None:
        super().startService()
        self.control = ControlLink(
            self.clock, lambda invalidation: invalidation.apply(self.registry), self._lost, self._reporting
        )
        _adopt_connection(self.reactor, self.fd, self.control)

    def stopService(self) -> None:
        self._stopped = True
        super().stopService()

    def _reporting(self, what: str) -> Deferred[Any]:
        if self.report is None:
            return fail(StoreUnavailable("this worker has no reports"))
        return maybeDeferred(self.report, what)

    def siblings(self, what: str) -> Deferred[list[tuple[int, Any]]]:
        """
        Gather every other worker's ``what`` report through the supervisor.

        @return: fires with (worker index, report) pairs of the siblings
            that answered in time; with none when the supervisor is gone.
        """
        if self.control is None:
            return succeed([])

        def pairs(answered: list[list[Any]]) -> list[tuple[int, Any]]:
            return [(int(index), value) for index, value in answered]

        def alone(f: Failure) -> list[tuple[int, Any]]:
            self.log.warn("the siblings' figures are missing: {why}", why=f.getErrorMessage())
            return []

        # the supervisor answers within its own REPORT_TIMEOUT
        return self.control.query(_SIBLINGS + what, REPORT_TIMEOUT + 1.0).addCallbacks(pairs, alone)

    def _lost(self) -> None:
        if self.running and not self._stopped:
            self.log.warn("the supervisor is gone: stopping")
            self.orphaned()

    def relay(self, invalidation: Invalidation) -> Deferred[int]:
        """
        Have the supervisor apply ``invalidation`` on every sibling.

        @return: fires with the number of entries they touched; errbacks
            with L{StoreUnavailable} if one did not confirm (or the
            supervisor is gone), or a timeout.
        """
        if self.control is None:
            return succeed(0)
        # the supervisor answers within its own RELAY_TIMEOUT
        return self.control.ask(invalidation, RELAY_TIMEOUT + 1.0)


@implementer(IInvalidator)
class SiblingRelay:
    """
    What the HTTP API calls to invalidate in a worker: the registry here,
    then every sibling through the supervisor.  Fires with the entries
    touched by all workers (with a shared store, by this one: the siblings
    counted the same entries); errbacks with L{StoreUnavailable}.

    @param shared: the store is shared by every worker (Redis).
    """

    def __init__(self, registry: IInvalidator, link: WorkerLink, shared: bool) -> None:
        self.registry = registry
        self.link = link
        self.shared = shared

    def invalidate(self, tenant: str | None, route_type: str, params: tuple[str, ...]) -> Deferred[int]:
        return self._everywhere(Invalidation("invalidate", tenant, route_type, tuple(params)))

    def refresh(self, tenant: str | None, route_type: str, params: tuple[str, ...]) -> Deferred[int]:
        return self._everywhere(Invalidation("refresh", tenant, route_type, tuple(params)))

    def clear(self, tenant: str | None) -> Deferred[int]:
        return self._everywhere(Invalidation("clear", tenant))

    def invalidate_tags(self, tenant: str | None, tags: Sequence[str], source: str = "") -> Deferred[int]:
        return self._everywhere(
            Invalidation("invalidate_tags", tenant, "", tuple(tags)),
            self.registry.invalidate_tags(tenant, tags, source),
        )

    def refresh_tags(self, tenant: str | None, tags: Sequence[str], source: str = "") -> Deferred[int]:
        return self._everywhere(
            Invalidation("refresh_tags", tenant, "", tuple(tags)),
            self.registry.refresh_tags(tenant, tags, source),
        )

    def _everywhere(self, invalidation: Invalidation, local: Deferred[int] | None = None) -> Deferred[int]:
        if local is None:
            local = invalidation.apply(self.registry)

        async def then_siblings() -> int:
            here = await local
            try:
                there = await self.link.relay(invalidation)
            except StoreUnavailable:
                raise
            except (CancelledError, Exception) as e:  # a timeout
                raise StoreUnavailable(f"not every worker confirmed: {e}") from None
            return here if self.shared else here + there

        return Deferred.fromCoroutine(then_siblings())


def worker_argv(config_path: str | None) -> list[str]:
    """
    Return the command line of a worker: twistd with this Python, in the
    foreground, without a pid file, logging to the inherited stdout.
    """
    argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "apicache"]
    if config_path is not None:
        argv += ["--config", config_path]
    return argv
