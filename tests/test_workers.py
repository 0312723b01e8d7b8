"""
``--workers 2``: two processes share the listening socket; a DELETE or
/clear that one of them receives reaches the other's store; a dead worker is
restarted; SIGTERM to the supervisor stops everything cleanly.
"""

from __future__ import annotations

import os
import signal
import subprocess

import pytest
from daemon_support import PATH, fill_both, own, workers_info
from twisted.internet.defer import Deferred, fail
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from zope.interface.verify import verifyObject

from apicache.cache.invalidator import IInvalidator
from apicache.daemon.workers import (
    ControlLost,
    Invalidation,
    SiblingRelay,
    WorkerLink,
    WorkerSupervisor,
    _Worker,
)
from apicache.harness.polling import wait_until
from apicache.store.interface import StoreUnavailable
from apicache.testing import RecordingInvalidator as Recorder
from apicache.testing import linked_control_links as linked


def both_hold(d, path, timeout=30.0):
    """GET ``path`` until each worker holds it (which one answers is the kernel's choice)."""
    holding = set()

    def both_holding():
        d.get(path)
        info = d.get("/").json()
        if own(info)["entries"] == 1:
            holding.add(info["worker"])
        return len(holding) == 2

    wait_until(both_holding, timeout, 0, lambda: f"both workers to hold {path}: {holding}")
    assert holding == {0, 1}


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.integration
def test_two_workers_share_the_socket_and_relay_invalidations(make_daemon, upstream):
    d = make_daemon(extra_args=["--workers", "2"])
    pids = {i: info["pid"] for i, info in workers_info(d).items()}
    assert len(set(pids.values())) == 2

    fill_both(d, upstream)
    served = {d.get(PATH).json()["n"] for _ in range(10)}
    assert served <= {1, 2}

    r = d.delete(PATH)
    assert (r.status, r.json()) == (200, {"invalidated": 2})
    workers_info(d, lambda info: own(info)["entries"] == 0)
    for _ in range(20):
        reply = d.get(PATH)
        assert reply.status == 200
        assert reply.json()["n"] > 2, "a worker served an entry dropped by the DELETE"

    both_hold(d, PATH)
    r = d.delete("/clear", tenant="t1")
    assert (r.status, r.json()) == (200, {"invalidated": 2})
    workers_info(d, lambda info: own(info)["entries"] == 0)

    # a dead worker is restarted
    os.kill(pids[0], signal.SIGKILL)
    now = workers_info(d, lambda info: info["pid"] != pids[0])
    assert now[1]["pid"] == pids[1]
    everyone = [info["pid"] for info in now.values()]

    assert d.stop() in (0, -15)
    wait_until(lambda: not any(alive(p) for p in everyone), 10, 0.05, "every worker to exit")
    lines = d.log_lines()
    assert any("worker 0 died" in line["message"] for line in lines)
    # start-up says what listens in plain words, not Twisted's class names
    messages = [line["message"] for line in lines]
    assert any(m.startswith("HTTP socket for 2 workers starting on ") for m in messages)
    assert any(" as worker 1 of 2" in m and m.startswith("apicache serving HTTP on tcp:") for m in messages)
    assert not any("_NeverAccepts" in m or "_SharedSocket" in m for m in messages)


@pytest.mark.integration
def test_workers_need_a_shareable_endpoint(make_daemon):
    """A TLS endpoint would need every worker to wrap its connections: refused."""
    import twisted.test

    pem = os.path.join(os.path.dirname(twisted.test.__file__), "server.pem")
    d = make_daemon(start=False, extra_args=["--workers", "2", "--listen", f"ssl:0:interface=127.0.0.1:privateKey={pem}"])

    out = subprocess.run(d.argv, capture_output=True, text=True, cwd=d.cwd, env=d.env, timeout=30)
    assert out.returncode == 1
    assert "--workers" in out.stderr and "tcp:" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


@pytest.mark.integration
def test_workers_with_memory_stores_refuse_kafka_group_mode(make_daemon):
    """Each worker's memory store needs every event: group mode would split them."""
    d = make_daemon(
        {"kafka": {"bootstrap_servers": "127.0.0.1:9", "topics": ["t"], "mode": "group"}},
        start=False,
        extra_args=["--workers", "2"],
    )

    out = subprocess.run(d.argv, capture_output=True, text=True, cwd=d.cwd, env=d.env, timeout=30)
    assert out.returncode == 1
    assert "kafka.mode" in out.stderr and "broadcast" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


# -- in-process: the control link, the relay, the supervisor's fan-out --------

OBJECT_7 = Invalidation("invalidate", "t1", "object", ("7",))


def test_an_asked_invalidation_is_applied_by_the_other_end_and_counted():
    there = Recorder(n=3)
    a, b, pump = linked(Clock(), answer_b=lambda i: i.apply(there))
    for inv in (OBJECT_7, Invalidation("refresh", None, "object", ("7", "x")), Invalidation("clear", "t2")):
        d = a.ask(inv, 5.0)
        pump.flush()
        assert d.result == 3
    assert there.calls == [OBJECT_7, Invalidation("refresh", None, "object", ("7", "x")), Invalidation("clear", "t2")]


def test_an_error_at_the_other_end_is_store_unavailable():
    a, b, pump = linked(Clock(), answer_b=lambda i: fail(StoreUnavailable("redis is down")))
    d = a.ask(OBJECT_7, 5.0)
    pump.flush()
    failure = []
    d.addErrback(failure.append)
    assert failure[0].check(StoreUnavailable) and failure[0].getErrorMessage() == "redis is down"


def test_a_lost_link_fails_what_waits_and_says_so():
    gone = []
    a, b, pump = linked(Clock(), answer_b=lambda i: Deferred(), lost_b=lambda: gone.append(1))
    d = a.ask(OBJECT_7, 5.0)
    a.transport.loseConnection()
    pump.flush()
    failure = []
    d.addErrback(failure.append)
    assert failure[0].check(ControlLost)
    assert gone == [1]
    later = []
    a.ask(OBJECT_7, 5.0).addErrback(later.append)
    assert later[0].check(ControlLost)


def test_an_unanswered_ask_times_out_on_the_clock():
    clock = Clock()
    never = []
    a, b, pump = linked(clock, answer_b=lambda i: never.append(i) or Deferred())
    d = a.ask(OBJECT_7, 5.0)
    pump.flush()
    assert never == [OBJECT_7]
    clock.advance(4.9)
    assert not d.called
    clock.advance(0.2)
    failure = []
    d.addErrback(failure.append)
    assert failure[0].check(DeferredTimeout)
    assert a._waiting == {}


def test_sibling_relay_is_an_invalidator_counting_every_worker():
    clock = Clock()
    here, siblings = Recorder(n=1), Recorder(n=2)
    ours, supervisor_end, pump = linked(clock, answer_b=lambda i: i.apply(siblings))
    link = WorkerLink(MemoryReactorClock(), clock, -1, here, lambda: None)
    link.control = ours
    relay = SiblingRelay(here, link, shared=False)
    assert verifyObject(IInvalidator, relay)

    d = relay.invalidate("t1", "object", ("7",))
    pump.flush()
    assert d.result == 3
    assert here.calls == siblings.calls == [OBJECT_7]

    shared = SiblingRelay(here, link, shared=True)
    d = shared.clear(None)
    pump.flush()
    assert d.result == 1, "with a shared store the siblings counted the same entries"


def test_sibling_relay_errbacks_when_the_supervisor_is_gone():
    clock = Clock()
    ours, supervisor_end, pump = linked(clock)
    link = WorkerLink(MemoryReactorClock(), clock, -1, Recorder(), lambda: None)
    link.control = ours
    supervisor_end.transport.loseConnection()
    pump.flush()
    failure = []
    SiblingRelay(Recorder(), link, shared=False).refresh("t1", "object", ("7",)).addErrback(failure.append)
    assert failure[0].check(StoreUnavailable)


def test_the_supervisor_relays_to_every_other_worker_and_a_gone_one_counts_zero():
    from twisted.internet.endpoints import TCP4ServerEndpoint

    reactor = MemoryReactorClock()
    supervisor = WorkerSupervisor(reactor, TCP4ServerEndpoint(reactor, 0), 3, ["twistd"], {}, 1.0)
    origin, alive_w, gone_w = _Worker(supervisor, 0), _Worker(supervisor, 1), _Worker(supervisor, 2)
    origin_rec, alive_rec = Recorder(n=100), Recorder(n=4)
    pumps = []
    for w, rec in ((origin, origin_rec), (alive_w, alive_rec), (gone_w, None)):
        sup_end, worker_end, pump = linked(reactor, answer_b=lambda i, rec=rec: i.apply(rec) if rec else Deferred())
        w.control = sup_end
        pumps.append(pump)
        supervisor.workers[w.index] = w
    d = supervisor._relay(origin, OBJECT_7)
    # the third worker dies before it answers
    gone_w.control.transport.loseConnection()
    for pump in pumps:
        pump.flush()
    assert d.result == 4
    assert origin_rec.calls == [], "the worker that received it applied it already"
    assert alive_rec.calls == [OBJECT_7]
