"""
Tags with the real daemon (``twistd -n apicache``): an upstream that sends
``Surrogate-Key``, ``DELETE /tags/<tag>``, and two instances sharing a
private redis-server (purges and the race rule across them).  Events that
purge by tag, with the real broker, are in tests/test_events.py.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from daemon_support import ready

from apicache.harness.demo import UpstreamStub
from apicache.harness.launchers import Daemon, Reply
from apicache.harness.polling import wait_until

# starts real processes (make test-fast leaves it out)
pytestmark = pytest.mark.integration

OBJ = "/server/object({})/header"
UP_OBJ = "/api/object({})/header"
LIST = "/server/templates/{}"
UP_LIST = "/api/templates/{}"
JSON = {"Content-Type": "application/json"}

TAGGED = {
    "upstream": {"tags_header": "surrogate-key"},
    "routes": [
        {"type": "object", "path": "/server/object(<id>)/header", "upstream": "/object({id})/header", "ttl": 300,
         "tags": ["object:{id}"]},
        {"type": "template", "path": "/server/templates/<id>", "upstream": "/templates/{id}", "ttl": 300},
    ],
}


def metric_lines(d: Daemon, name: str) -> list[str]:
    return [line for line in d.request("GET", "/metrics").body.decode().splitlines() if line.startswith(name)]


def list_page(upstream: UpstreamStub, page: str, *object_ids: int, delay: float = 0.0) -> None:
    """The list page ``page`` holds these objects: its answer is tagged with them."""
    keys = " ".join(f"object:{i}" for i in object_ids)
    upstream.set(UP_LIST.format(page), headers={**JSON, "Surrogate-Key": keys}, body=b'{"items": []}', delay=delay)


def purge(d: Daemon, tag: str, tenant: str | None = None) -> Reply:
    return d.delete(f"/tags/{tag}", tenant=tenant)


def test_surrogate_key_tags_an_entry_and_delete_tags_purges_it(make_daemon: Callable[..., Daemon], upstream: UpstreamStub) -> None:
    d = make_daemon(TAGGED)
    list_page(upstream, "p1", 42, 43)
    list_page(upstream, "p2", 44)
    first = d.get(LIST.format("p1"))
    assert first.cache == "MISS"
    assert "surrogate-key" not in first.headers, "the tags header is never replayed"
    hit = d.get(LIST.format("p1"))
    assert hit.cache == "HIT" and "surrogate-key" not in hit.headers
    d.get(OBJ.format(42))
    d.get(LIST.format("p2"))
    d.get(LIST.format("p1"), tenant="t2")

    # one tag drops the object and the list that holds it, for one tenant
    r = purge(d, "object%3A42", tenant="t1")
    assert (r.status, r.json()) == (200, {"invalidated": 2})
    assert d.get(LIST.format("p1")).cache == "MISS"
    assert d.get(OBJ.format(42)).cache == "MISS"
    assert d.get(LIST.format("p2")).cache == "HIT"
    assert d.get(LIST.format("p1"), tenant="t2").cache == "HIT"

    # without the tenant header: every tenant
    r = purge(d, "object:43")
    assert (r.status, r.json()) == (200, {"invalidated": 2})
    assert d.get(LIST.format("p1"), tenant="t2").cache == "MISS"

    assert purge(d, "a%20b").status == 400
    assert any('source="http"} 2.0' in line for line in metric_lines(d, "apicache_tag_purges"))
    assert metric_lines(d, "apicache_tag_index_pairs")


def test_an_answer_with_too_many_tags_is_served_but_not_stored(make_daemon: Callable[..., Daemon], upstream: UpstreamStub) -> None:
    d = make_daemon(TAGGED)
    upstream.set(UP_LIST.format("big"), headers={**JSON, "Surrogate-Key": ",".join(f"t{i}" for i in range(65))})
    assert d.get(LIST.format("big")).status == 200
    assert d.get(LIST.format("big")).cache == "MISS"
    assert upstream.calls(UP_LIST.format("big")) == 2


# -- two instances, one Redis ----------------------------------------------------


@pytest.fixture
def pair(make_daemon: Callable[..., Daemon], redis_url: str) -> tuple[Daemon, Daemon]:
    cfg = {**TAGGED, "store": {"backend": "redis", "redis_url": redis_url, "key_prefix": f"tags-{uuid.uuid4().hex[:8]}"}}
    a, b = make_daemon(cfg), make_daemon(cfg)
    return ready(a, 20.0), ready(b, 20.0)


def test_a_purge_on_one_instance_is_a_miss_on_the_other(pair: tuple[Daemon, Daemon], upstream: UpstreamStub) -> None:
    a, b = pair
    list_page(upstream, "p1", 42)
    a.get(LIST.format("p1"))
    assert b.get(LIST.format("p1")).cache == "HIT"
    assert b.get(LIST.format("p1")).cache == "HIT"  # now in b's in-process tier too
    r = purge(a, "object:42", tenant="t1")
    assert (r.status, r.json()) == (200, {"invalidated": 1})
    # wall clock: through a real redis-server's pub/sub to another real daemon
    wait_until(lambda: b.get(LIST.format("p1")).cache == "MISS", 1.0, 0.01, "the purge to reach b")
    assert a.get(LIST.format("p1")).cache == "HIT"  # b stored it again


def test_race_rule_for_tags_across_instances(pair: tuple[Daemon, Daemon], upstream: UpstreamStub) -> None:
    """
    A fetch running on B when A purges a tag its answer turns out to carry:
    B's caller gets the answer, nobody stores it, the next request fetches.
    """
    a, b = pair
    list_page(upstream, "slow", 42, delay=1.0)
    got: list[Reply] = []
    t = threading.Thread(target=lambda: got.append(b.get(LIST.format("slow"))))
    t.start()
    wait_until(lambda: upstream.calls(UP_LIST.format("slow")) == 1, 2.0, 0.01, "b's fetch to reach the upstream")
    assert purge(a, "object:42").status == 200
    t.join()
    assert got[0].cache == "MISS"
    list_page(upstream, "slow", 42)
    assert a.get(LIST.format("slow")).cache == "MISS"
    assert b.get(LIST.format("slow")).cache == "HIT"
    assert upstream.calls(UP_LIST.format("slow")) == 2


def test_a_tag_purge_without_redis_is_a_503(make_daemon: Callable[..., Daemon], redis_server: Any) -> None:
    d = ready(make_daemon({**TAGGED, "store": {"backend": "redis", "redis_url": redis_server.url}}), 20.0)
    redis_server.stop()
    r = wait_until(lambda: (lambda r: r if r.status == 503 else None)(purge(d, "object:1")), 5.0, 0.01, "a purge to answer 503")
    assert r.json()["error"] == "store_unavailable"

# the [[events]] tags case, with the real broker: tests/test_events.py -k tag
