"""
Orderly shutdown: services stop one after another, in reverse order, each
waiting for the one before it (HTTP drains, then events commit, then
connections close).
"""

from __future__ import annotations

import pytest
from twisted.application.service import Service
from twisted.internet.defer import Deferred

from apicache.daemon.service import ApiCacheService


class Recorder(Service):
    def __init__(self, name: str, log: list[str], result: Deferred[None] | None = None) -> None:
        self.name = name
        self.log = log
        self.result = result

    def stopService(self):
        Service.stopService(self)
        self.log.append(f"stop {self.name}")
        return self.result


def test_children_stop_in_reverse_order_each_after_the_last_finished():
    log: list[str] = []
    http_drained: Deferred[None] = Deferred()
    kafka_committed: Deferred[None] = Deferred()
    root = ApiCacheService()
    Recorder("redis", log).setServiceParent(root)
    Recorder("kafka", log, kafka_committed).setServiceParent(root)
    Recorder("http", log, http_drained).setServiceParent(root)
    root.startService()

    stopped = root.stopService()
    assert log == ["stop http"]
    http_drained.callback(None)
    assert log == ["stop http", "stop kafka"]
    assert not stopped.called
    kafka_committed.callback(None)
    assert log == ["stop http", "stop kafka", "stop redis"]
    assert stopped.called


@pytest.mark.integration
def test_request_slower_than_the_grace_does_not_hold_the_exit(make_daemon, upstream):
    import threading
    import time

    from apicache.harness.polling import wait_until

    upstream.set("/api/object(slow)/header", delay=4.0)
    d = make_daemon({"server": {"shutdown_grace": 1.0}, "upstream": {"timeout": 8.0}})
    caller = threading.Thread(target=lambda: _swallow(d.get, "/server/object(slow)/header"))
    caller.start()
    wait_until(lambda: upstream.calls("/api/object(slow)/header"), 5, 0.02, "the slow request to reach the upstream")
    started = time.monotonic()
    status = d.stop()
    took = time.monotonic() - started
    caller.join(10)
    assert status in (0, -15)
    # wall clock: the real daemon's 1 s shutdown grace, seen from outside it
    assert 0.9 < took < 3.0
    assert any("still in flight after the grace period" in ln["message"] for ln in d.log_lines())


def _swallow(f, *args):
    try:
        f(*args)
    except OSError:
        pass


def test_a_port_in_use_is_one_line_and_a_quiet_exit_1():
    """The root service names the endpoint; twistd's clean-up (an Exception) still runs."""
    import io
    import socket

    import pytest
    from twisted.internet import reactor
    from twisted.internet.endpoints import TCP4ServerEndpoint
    from twisted.web.resource import Resource

    from apicache.daemon.service import StartupFailed
    from apicache.http.channel import ApiSite, HTTPService

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        errors = io.StringIO()
        root = ApiCacheService(listen=f"tcp:{port}:interface=127.0.0.1", errors=errors)
        site = ApiSite(Resource(), reactor, access_log=False)
        http = HTTPService(TCP4ServerEndpoint(reactor, port, interface="127.0.0.1"), site, 1.0, reactor)
        http.setServiceParent(root)
        with pytest.raises(StartupFailed) as e:
            root.privilegedStartService()
    assert isinstance(e.value, Exception) and isinstance(e.value, SystemExit)
    assert e.value.code == 1
    assert errors.getvalue() == f"apicache: cannot listen on tcp:{port}:interface=127.0.0.1: Address already in use\n"
