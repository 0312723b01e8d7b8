"""
The daemon as a whole: the root service that starts its parts in order and
stops them in reverse, turns a port that can't be listened on into one line
and exit status 1, tunes the garbage collector once started, and says what
the daemon runs with.

It knows none of the parts it holds: the wiring (L{apicache.tap}) adds them.
"""

from __future__ import annotations

import gc
from typing import IO

from twisted.application.service import IServiceCollection, MultiService, Service
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.logger import ILogObserver, Logger
from twisted.python.components import Componentized

from apicache.config import Config

__all__ = ["ApiCacheService", "StartupFailed", "GarbageCollectorTuning", "StartupNotes"]


class StartupFailed(SystemExit, Exception):
    """
    The daemon can't start; the reason is already written.

    An L{Exception} so that twistd's start-up runs its own clean-up (it
    removes the pid file and tells a daemonising parent), and a
    L{SystemExit} so that the process then ends with status 1, without a
    traceback.  Its text is the reason: what a daemonising twistd's parent
    prints.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(1)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


class ApiCacheService(MultiService):
    """
    The daemon: child services start in the order added and stop one after
    another in reverse (HTTP drains first, then events, then connections).

    When attached to a twistd application it installs the JSON log
    observer, so that twistd's own lines are JSON too.

    @param listen: the endpoint description the daemon listens on, named
        when it can't.
    @param errors: where the one line goes when the daemon can't listen
        (stderr as it was before twistd redirected it into the log).
    """

    def __init__(
        self, log_observer: ILogObserver | None = None, listen: str = "", errors: IO[str] | None = None
    ) -> None:
        super().__init__()
        self.log_observer = log_observer
        self.listen = listen
        self.errors = errors

    def setServiceParent(self, parent: IServiceCollection) -> None:
        if self.log_observer is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.log_observer)
        super().setServiceParent(parent)

    def privilegedStartService(self) -> None:
        """
        Listen (the children do).

        @raise StartupFailed: a port can't be listened on (in use, or
            privileged): one line naming the endpoint is written to
            C{errors}, and the process ends with status 1.
        """
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            if self.errors is None:
                raise
            why = e.socketError.strerror if isinstance(e.socketError, OSError) else e.socketError
            reason = f"cannot listen on {self.listen or f'{e.interface}:{e.port}'}: {why}"
            self.errors.write(f"apicache: {reason}\n")
            self.errors.flush()
            raise StartupFailed(reason) from None

    def stopService(self) -> Deferred[None]:
        """
        @return: fires once every child has stopped, each after the one
            added after it.
        """
        Service.stopService(self)
        children = list(reversed(list(self)))

        async def stop_in_order() -> None:
            for child in children:
                await maybeDeferred(child.stopService)

        return Deferred.fromCoroutine(stop_in_order())


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


class StartupNotes(Service):
    """
    Logs, once started, what the daemon serves on and runs with.

    @param serving: what listens, in plain words, e.g. ``HTTP on
        tcp:8080:interface=127.0.0.1`` or ``HTTP on tcp:8080 (worker 1 of
        2)``.
    @param bound: the configuration keys filled from ``VCAP_SERVICES``.
    """

    log = Logger()

    def __init__(self, config: Config, serving: str, bound: list[str] | None = None) -> None:
        self.config = config
        self.serving = serving
        self.bound = bound or []

    def startService(self) -> None:
        super().startService()
        c = self.config
        self.log.info(
            "apicache serving {serving}: config {source}, {store} store, {n} routes",
            serving=self.serving,
            source=c.source,
            store=c.store.backend,
            n=len(c.routes),
        )
        if self.bound:
            # the keys only: the values are secrets
            self.log.info("from VCAP_SERVICES: {keys}", keys=", ".join(self.bound))
        if not c.routes:
            self.log.warn("no routes are configured: only /healthz, /readyz, / and /metrics answer")
        for warning in c.warnings:
            # the file is used; these say what was left out of it
            self.log.warn("{warning}", warning=warning)
