"""
Worker processes (``--workers N``): one supervisor process owns the
listening socket and N worker processes accept on it (Twisted's
``adoptStreamPort`` pattern); each worker is a whole daemon with its own
store, tenant caches and event listener.

The supervisor restarts a worker that dies and, on SIGTERM, stops every
worker (each drains its requests) before it exits itself.

Each worker keeps a control connection (a Unix socket pair) to the
supervisor.  With the memory store every worker holds its own entries, so an
HTTP ``DELETE`` or ``/clear`` that one worker receives must reach the
others: the worker applies it, then the supervisor relays it to every
sibling and the answer counts what all of them dropped.  Events need no
relay: every worker runs its own listener (broadcast mode).  Coalescing is
per worker: N workers make at most N upstream calls for one cold key.

A worker whose supervisor is gone (its control connection closed) stops.

This module imports nothing of the HTTP layer: the worker side wraps the
cache registry's invalidation calls (:class:`SiblingRelay`), which the
wiring hands to the HTTP API.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet import tcp
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint, UNIXServerEndpoint
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol, ServerFactory
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from apicache.store.interface import StoreUnavailable

__all__ = [
    "WORKER_ENV",
    "WorkerSupervisor",
    "WorkerLink",
    "SiblingRelay",
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
#: A worker that dies sooner than this after its start is restarted with a
#: growing delay (up to MAX_RESTART_DELAY) instead of at once.
_STABLE_AFTER = 5.0
MAX_RESTART_DELAY = 30.0


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


class _Control(LineReceiver):
    """
    One end of a control connection: JSON objects, one a line.
    """

    delimiter = b"\n"
    MAX_LENGTH = 1 << 20

    def __init__(self, on_message: Callable[[_Control, dict[str, Any]], None], on_lost: Callable[[_Control], None]) -> None:
        self.on_message = on_message
        self.on_lost = on_lost

    def send(self, message: dict[str, Any]) -> None:
        self.sendLine(json.dumps(message).encode())

    def lineReceived(self, line: bytes) -> None:
        self.on_message(self, json.loads(line))

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.on_lost(self)


class _NeverAccepts(ServerFactory):
    """The supervisor's factory: it listens, its workers accept."""

    noisy = False


class _OneProtocol(Factory):
    def __init__(self, protocol: Protocol) -> None:
        self.protocol_ = protocol

    def buildProtocol(self, addr: Any) -> Protocol:
        return self.protocol_


def _adopt_connection(reactor: Any, fd: int, protocol: Protocol) -> None:
    reactor.adoptStreamConnection(fd, socket.AF_UNIX, _OneProtocol(protocol))
    os.close(fd)  # adopted as a duplicate


# -- the supervisor ----------------------------------------------------------


class _Worker(ProcessProtocol):
    """One worker process as the supervisor sees it."""

    def __init__(self, supervisor: WorkerSupervisor, index: int) -> None:
        self.supervisor = supervisor
        self.index = index
        self.control: _Control | None = None
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

    @param argv: the worker command line (a twistd invocation).
    @param environ: the workers' environment, without L{WORKER_ENV}.
    """

    log = Logger()
    _raiseSynchronously = True

    def __init__(
        self,
        reactor: Any,
        endpoint: IStreamServerEndpoint,
        count: int,
        argv: list[str],
        environ: dict[str, str],
        grace: float,
        listen: str = "",
    ) -> None:
        self.reactor = reactor
        self.listen = listen
        self.endpoint = endpoint
        self.family = address_family(endpoint)
        self.count = count
        self.argv = argv
        self.environ = environ
        self.grace = grace
        self.workers: dict[int, _Worker] = {}
        self.port: Any = None
        self._stopping = False
        self._delays: dict[int, float] = {}
        self._relays = 0
        self._pending: dict[int, Deferred[int]] = {}

    def privilegedStartService(self) -> None:
        # listen first (a privileged port, an address in use: fail at once)
        d = self.endpoint.listen(_NeverAccepts())  # type: ignore[call-arg]
        result: list[Any] = []
        d.addBoth(result.append)
        if isinstance(result[0], Failure):
            result[0].raiseException()
        self.port = result[0]
        # the workers accept; this process never does
        self.port.stopReading()  # type: ignore[attr-defined]
        super().privilegedStartService()

    def startService(self) -> None:
        super().startService()
        if self.port is None:
            self.privilegedStartService()
        self.log.info("supervising {n} workers", n=self.count)
        for i in range(self.count):
            self._spawn(i)

    def _spawn(self, index: int) -> None:
        if self._stopping:
            return
        assert self.port is not None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        worker = _Worker(self, index)
        env = dict(self.environ)
        env[WORKER_ENV] = json.dumps({"listen_fd": _LISTEN_FD, "family": int(self.family), "listen": self.listen,
                                      "control_fd": _CONTROL_FD, "index": index, "count": self.count})
        fds = {0: 0, 1: 1, 2: 2, _LISTEN_FD: self.port.fileno(), _CONTROL_FD: theirs.fileno()}  # type: ignore[attr-defined]
        worker.started = self.reactor.seconds()
        self.reactor.spawnProcess(worker, self.argv[0], self.argv, env=env, childFDs=fds)
        theirs.close()
        control = _Control(self._received, self._lost)
        control.worker = worker  # type: ignore[attr-defined]
        worker.control = control
        _adopt_connection(self.reactor, os.dup(ours.fileno()), control)
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
        lived = self.reactor.seconds() - worker.started
        delay = 0.0 if lived >= _STABLE_AFTER else min(MAX_RESTART_DELAY, max(0.5, 2 * self._delays.get(worker.index, 0.25)))
        self._delays[worker.index] = delay
        self.log.warn(
            "worker {index} died (status {status}, signal {signal}) after {lived:.1f} s; restarting in {delay} s",
            index=worker.index, status=status, signal=sig, lived=lived, delay=delay,
        )
        self.reactor.callLater(delay, self._spawn, worker.index)

    # -- relaying ------------------------------------------------------------

    def _lost(self, control: _Control) -> None:
        control.lost = True  # type: ignore[attr-defined]
        for d in getattr(control, "waiting", {}).values():
            if not d.called:
                d.callback(0)  # a worker that is gone holds nothing any more

    def _received(self, control: _Control, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "relay":
            origin: _Worker = control.worker  # type: ignore[attr-defined]
            self._relay(origin, message).addCallback(control.send)
        elif op == "applied":
            waiting = getattr(control, "waiting", {})
            d = waiting.pop(message["id"], None)
            if d is not None and not d.called:
                if "error" in message:
                    d.errback(StoreUnavailable(message["error"]))
                else:
                    d.callback(int(message["n"]))

    def _relay(self, origin: _Worker, message: dict[str, Any]) -> Deferred[dict[str, Any]]:
        calls = []
        for worker in list(self.workers.values()):
            control = worker.control
            if worker is origin or control is None or getattr(control, "lost", False):
                continue
            self._relays += 1
            d: Deferred[int] = Deferred()
            control.waiting = getattr(control, "waiting", {})  # type: ignore[attr-defined]
            control.waiting[self._relays] = d  # type: ignore[attr-defined]
            control.send({**message, "op": "apply", "id": self._relays})
            d.addTimeout(RELAY_TIMEOUT, self.reactor)
            calls.append(d)

        def answer(results: list[tuple[bool, Any]]) -> dict[str, Any]:
            failed = [r for ok, r in results if not ok]
            if failed:
                return {"op": "relayed", "id": message["id"], "error": f"{len(failed)} workers did not confirm"}
            return {"op": "relayed", "id": message["id"], "n": sum(r for _, r in results)}

        return DeferredList(calls, consumeErrors=True).addCallback(answer)

    # -- stopping ------------------------------------------------------------

    def stopService(self) -> Deferred[None]:
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
                return self.port.stopListening()  # type: ignore[no-any-return, misc]
            return None

        ended = DeferredList([w.ended for w in workers])
        timer = self.reactor.callLater(self.grace + 5.0, kill, None)

        def done(result: object) -> object:
            if timer.active():
                timer.cancel()
            return result

        return ended.addBoth(done).addBoth(close)

    @staticmethod
    def _signal(worker: _Worker, name: str) -> None:
        try:
            worker.transport.signalProcess(name)  # type: ignore[union-attr, call-arg, misc]
        except Exception:  # noqa: BLE001 - gone already
            pass


# -- the worker side ---------------------------------------------------------


@implementer(IStreamServerEndpoint)
class AdoptedPortEndpoint:
    """
    A server endpoint listening on an inherited listening socket.
    """

    def __init__(self, reactor: Any, fd: int, family: int) -> None:
        self.reactor = reactor
        self.fd = fd
        self.family = family

    def listen(self, factory: Any) -> Deferred[IListeningPort]:
        if self.family in (socket.AF_INET, socket.AF_INET6):
            # what reactor.adoptStreamPort does, with a fair port
            port: Any = _FairPort._fromListeningDescriptor(self.reactor, self.fd, self.family, factory)
            port.startListening()
        else:
            port = self.reactor.adoptStreamPort(self.fd, self.family, factory)
        os.close(self.fd)  # adopted as a duplicate
        return succeed(port)


class _FairPort(tcp.Port):
    """
    A TCP port that accepts one connection each time the socket is
    readable.  Twisted's port accepts as many as are queued (up to 100,
    growing): with several workers on one socket, a burst of connections
    (a client pool opening 50 at once) would all go to whichever worker
    woke first.  One at a time, every woken worker takes its share.
    """

    @property  # type: ignore[override]
    def numberAccepts(self) -> int:
        return 1

    @numberAccepts.setter
    def numberAccepts(self, value: int) -> None:
        pass


class WorkerLink(Service):
    """
    A worker's control connection to its supervisor: answers relayed
    invalidations with ``apply`` (the registry's own calls, never relayed
    again), sends this worker's with :meth:`relay`, and calls
    ``orphaned`` when the supervisor is gone.
    """

    log = Logger()

    def __init__(self, reactor: Any, fd: int, registry: Any, orphaned: Callable[[], None]) -> None:
        self.reactor = reactor
        self.fd = fd
        self.registry = registry
        self.orphaned = orphaned
        self.control: _Control | None = None
        self._ids = 0
        self._pending: dict[int, Deferred[int]] = {}

    def startService(self) -> None:
        super().startService()
        self.control = _Control(self._received, self._lost)
        _adopt_connection(self.reactor, self.fd, self.control)

    def stopService(self) -> None:
        self._stopped = True
        super().stopService()

    def _lost(self, control: _Control) -> None:
        for d in self._pending.values():
            if not d.called:
                d.errback(StoreUnavailable("the supervisor is gone"))
        self._pending.clear()
        if self.running and not getattr(self, "_stopped", False):
            self.log.warn("the supervisor is gone: stopping")
            self.orphaned()

    def relay(self, message: dict[str, Any]) -> Deferred[int]:
        """
        Have the supervisor apply ``message`` on every sibling.  Fires with
        the number of entries they dropped; errbacks with
        L{StoreUnavailable} if one did not confirm.
        """
        if self.control is None:
            return succeed(0)
        self._ids += 1
        d: Deferred[int] = Deferred()
        self._pending[self._ids] = d
        self.control.send({**message, "op": "relay", "id": self._ids})
        # the supervisor answers within its own RELAY_TIMEOUT
        return d.addTimeout(RELAY_TIMEOUT + 1.0, self.reactor)

    def _received(self, control: _Control, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "relayed":
            d = self._pending.pop(message["id"], None)
            if d is not None and not d.called:
                if "error" in message:
                    d.errback(StoreUnavailable(message["error"]))
                else:
                    d.callback(int(message["n"]))
        elif op == "apply":
            self._apply(message).addBoth(lambda result: self._applied(control, message["id"], result))

    def _apply(self, message: dict[str, Any]) -> Deferred[int]:
        try:
            if message["action"] == "clear":
                return self.registry.clear(message["tenant"])  # type: ignore[no-any-return]
            return self.registry.invalidate(message["tenant"], message["route"], tuple(message["params"]))  # type: ignore[no-any-return]
        except Exception:  # noqa: BLE001 - answered as an error
            from twisted.internet.defer import fail

            return fail()

    @staticmethod
    def _applied(control: _Control, id_: int, result: Any) -> None:
        if isinstance(result, Failure):
            control.send({"op": "applied", "id": id_, "error": result.getErrorMessage()})
        else:
            control.send({"op": "applied", "id": id_, "n": result})


class SiblingRelay:
    """
    What the HTTP API calls to invalidate in a worker: the registry here,
    then every sibling through the supervisor.  Fires with the entries
    dropped by all workers (with a shared store, by this one: the siblings
    counted the same entries); errbacks with L{StoreUnavailable}.
    """

    def __init__(self, registry: Any, link: WorkerLink) -> None:
        self.registry = registry
        self.link = link

    def invalidate(self, tenant: str | None, route: str, params: tuple[str, ...]) -> Deferred[int]:
        local = self.registry.invalidate(tenant, route, params)
        return Deferred.fromCoroutine(
            self._everywhere(local, {"action": "invalidate", "tenant": tenant, "route": route, "params": list(params)})
        )

    def clear(self, tenant: str | None) -> Deferred[int]:
        return Deferred.fromCoroutine(self._everywhere(self.registry.clear(tenant), {"action": "clear", "tenant": tenant}))

    async def _everywhere(self, local: Deferred[int], message: dict[str, Any]) -> int:
        here = await local
        try:
            there = await self.link.relay(message)
        except StoreUnavailable:
            raise
        except Exception as e:  # a timeout
            raise StoreUnavailable(f"not every worker confirmed: {e}") from None
        return here if self.registry.store.shared else here + there


def worker_argv(config_path: str | None) -> list[str]:
    """
    Return the command line of a worker: twistd with this Python, in the
    foreground, without a pid file, logging to the inherited stdout.
    """
    argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "apicache"]
    if config_path is not None:
        argv += ["--config", config_path]
    return argv
