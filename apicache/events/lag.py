"""
The reactor's side of the event watermark (SPEC.md section 5, bounded
staleness): sharing partition watermarks between the instances of a group,
and the log lines when the lag crosses a route's ``max_staleness``.

The consumer thread advances W_p (:mod:`apicache.events.kafka`); this runs
on the reactor, on a timer.
"""

from __future__ import annotations

from collections.abc import Mapping

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from apicache.events.watermark import Watermark, WatermarkExchange

__all__ = ["LagMonitor"]

#: seconds between two looks at the lag (and two exchanges)
TICK_SECONDS = 0.5


class LagMonitor:
    """
    Every L{TICK_SECONDS}: logs when now − W crosses a route's
    ``max_staleness`` and when it comes back within, and, given an
    exchange, publishes this instance's W_p and takes the others'.

    @param bounds: route type → ``max_staleness``, for the routes that set
        one.
    """

    log = Logger()

    def __init__(
        self,
        watermark: Watermark,
        clock: IReactorTime,
        bounds: Mapping[str, float],
        exchange: WatermarkExchange | None = None,
        interval: float = TICK_SECONDS,
    ) -> None:
        self.watermark = watermark
        self.clock = clock
        self.exchange = exchange
        if exchange is not None:
            watermark.remote_live = exchange.is_live
        self.interval = interval
        #: bound → the routes that have it
        self.bounds: dict[float, list[str]] = {}
        for route, bound in sorted(bounds.items()):
            if bound > 0:
                self.bounds.setdefault(bound, []).append(route)
        #: bound → whether the lag is beyond it
        self.behind: dict[float, bool] = dict.fromkeys(self.bounds, False)
        self.started = clock.seconds()
        self._loop = LoopingCall(self.tick)
        self._loop.clock = clock
        self._exchanging = False

    def start(self) -> None:
        """
        Start looking, now and every L{TICK_SECONDS}.
        """
        self.started = self.clock.seconds()
        if not self._loop.running:
            self._loop.start(self.interval, now=True)

    def stop(self) -> None:
        """
        Stop looking.
        """
        if self._loop.running:
            self._loop.stop()

    def tick(self) -> None:
        """
        Log the bounds crossed either way, and start an exchange unless one
        is still running.
        """
        self.check_bounds()
        if self.exchange is not None and not self._exchanging:
            self._exchanging = True
            self._exchange(self.exchange).addBoth(self._exchanged)

    def check_bounds(self) -> None:
        """
        Log each route bound the lag crossed since the last look, either
        way.  Before the first W the lag counts as infinite, but only once
        the listener has run for longer than the bound (start-up is not an
        outage).
        """
        if not self.bounds:
            return
        lag = self.watermark.lag()
        since_start = self.clock.seconds() - self.started
        for bound, routes in self.bounds.items():
            behind = since_start > bound if lag is None else lag > bound
            if behind == self.behind[bound]:
                continue
            self.behind[bound] = behind
            which = ",".join(routes)
            if behind:
                self.log.warn(
                    "events are behind by {lag} s, over max_staleness {bound} s of routes {routes}: "
                    "their entries are served only within {bound} s of their fetch",
                    lag="unknown (no end offset confirmed yet)" if lag is None else round(lag, 3),
                    bound=bound,
                    routes=which,
                )
            else:
                self.log.info(
                    "events caught up: behind by {lag} s, within max_staleness {bound} s of routes {routes}",
                    lag=round(lag or 0.0, 3),
                    bound=bound,
                    routes=which,
                )

    def _exchange(self, exchange: WatermarkExchange) -> Deferred[None]:
        async def run() -> None:
            self.watermark.merge_remote(await exchange.fetch())
            mine = dict(self.watermark.local)
            if mine:
                await exchange.publish(mine)

        return Deferred.fromCoroutine(run())

    def _exchanged(self, result: None | Failure) -> None:
        self._exchanging = False
        if isinstance(result, Failure):
            # the store's own readiness check reports an unreachable Redis
            self.log.debug("could not exchange event watermarks: {error}", error=result.getErrorMessage())
