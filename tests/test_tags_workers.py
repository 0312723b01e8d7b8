"""
Tag purges with ``--workers``: the relay carries them to every sibling
(in-process, over a control link in memory), and with the real daemon a
``DELETE /tags/<tag>`` that one worker receives drops the entries of both.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from daemon_support import fill_both
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from zope.interface.verify import verifyObject

from apicache.cache.invalidator import IInvalidator
from apicache.daemon.workers import Invalidation, SiblingRelay, WorkerLink
from apicache.testing import RecordingInvalidator as Recorder
from apicache.testing import linked_control_links as linked

# starts real processes (make test-fast leaves it out)
pytestmark = pytest.mark.integration


class TagRecorder(Recorder):
    """A recorder that also takes tag purges, noting their source."""

    def __init__(self, n: int = 1) -> None:
        super().__init__(n)
        self.sources: list[str] = []

    def invalidate_tags(self, tenant: str | None, tags: Sequence[str], source: str = "") -> Deferred[int]:
        self.calls.append(Invalidation("invalidate_tags", tenant, "", tuple(tags)))
        self.sources.append(source)
        return succeed(self.n)

    def refresh_tags(self, tenant: str | None, tags: Sequence[str], source: str = "") -> Deferred[int]:
        self.calls.append(Invalidation("refresh_tags", tenant, "", tuple(tags)))
        self.sources.append(source)
        return succeed(self.n)


def test_the_relay_carries_tag_purges_to_the_siblings_counted_once_by_source() -> None:
    clock = Clock()
    here, siblings = TagRecorder(n=1), TagRecorder(n=2)
    ours, _, pump = linked(clock, answer_b=lambda i: i.apply(siblings))
    link = WorkerLink(MemoryReactorClock(), clock, -1, here, lambda: None)
    link.control = ours
    relay = SiblingRelay(here, link, shared=False)
    assert verifyObject(IInvalidator, relay)

    d = relay.invalidate_tags("t1", ["object:7", "list:1"], "http")
    pump.flush()
    assert d.result == 3
    d = relay.refresh_tags(None, ["list:1"], "event")
    pump.flush()
    assert d.result == 3
    expected = [
        Invalidation("invalidate_tags", "t1", "", ("object:7", "list:1")),
        Invalidation("refresh_tags", None, "", ("list:1",)),
    ]
    assert here.calls == siblings.calls == expected
    # counted where the purge began, not again on the siblings
    assert here.sources == ["http", "event"]
    assert siblings.sources == ["", ""]


def test_a_tag_purge_reaches_both_workers(make_daemon, upstream) -> None:  # type: ignore[no-untyped-def]
    path, up = "/server/object(7)/header", "/api/object(7)/header"
    # the echo body counts the upstream's answers: "n" says which fetch it was
    upstream.default.headers = {"Content-Type": "application/json", "Surrogate-Key": "list:1"}
    d = make_daemon({"upstream": {"tags_header": "surrogate-key"}}, extra_args=["--workers", "2"])
    fill_both(d, upstream, path, up)
    r = d.delete("/tags/list:1", tenant="t1")
    assert (r.status, r.json()) == (200, {"invalidated": 2})
    for _ in range(20):
        reply = d.get(path)
        assert reply.json()["n"] > 2, "a worker served an entry the tag purge dropped"
