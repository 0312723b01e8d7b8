"""
Message handling without a thread or a broker: decoding (with
Hypothesis-generated messages), applying through a real registry over the
in-memory store, and the librdkafka settings.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from apicache.cache.keys import CacheKey
from apicache.cache.registry import CacheRegistry
from apicache.config import KafkaConfig, parse_config
from apicache.events.decoding import MAX_EVENT_BYTES, BadEvent, CacheAction, EventDecoder
from apicache.events.handling import EventHandler
from apicache.events.kafka import consumer_settings, redact
from apicache.store import MemoryStore
from apicache.store.interface import CachedResponse, StoreUnavailable

CONFIG = parse_config(
    {
        "server": {"allow_anonymous": True},
        "upstream": {"base_url": "http://127.0.0.1:1/api"},
        "routes": [
            {"type": "object", "path": "/server/object(<id>)/header", "upstream": "/object({id})/header"},
            {"type": "template", "path": "/server/templates/<id>", "upstream": "/templates/{id}"},
            {"type": "pair", "path": "/a/<x>/b/<y>", "upstream": "/p/{x}/{y}"},
        ],
        "events": [
            {"types": ["object.update", "object.delete"], "route": "object", "id_field": "objectid", "tenant_field": "org_id"},
            {"types": ["object.update"], "route": "template", "id_field": "objectid", "action": "refresh"},
            {"types": ["pair.changed"], "type_field": "kind", "route": "pair", "fields": {"x": "left", "y": "right"}},
        ],
    },
    "test.toml",
    {},
)


def decoder() -> EventDecoder:
    return EventDecoder(CONFIG.events, CONFIG.routes)


ids = st.one_of(
    st.text(min_size=1, max_size=40).filter(lambda s: len(s.encode("utf-8", "surrogatepass")) <= 512),
    st.integers(),
)
tenants = st.from_regex(r"[A-Za-z0-9._:-]{1,128}", fullmatch=True)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


@given(st.binary(max_size=300))
def test_any_bytes_decode_to_actions_or_bad_event(value: bytes) -> None:
    try:
        actions = decoder().decode(value)
    except BadEvent as e:
        assert str(e)
    else:
        assert actions and all(isinstance(a, CacheAction) for a in actions)


@given(st.dictionaries(st.sampled_from(["type", "kind", "objectid", "org_id", "left", "right", "x"]), json_values, max_size=6))
def test_any_json_object_decodes_to_actions_or_bad_event(data: dict[str, Any]) -> None:
    try:
        actions = decoder().decode(json.dumps(data).encode())
    except BadEvent:
        return
    assert actions
    for a in actions:
        assert all(isinstance(p, str) and p for p in a.params)


@given(json_values.filter(lambda v: not isinstance(v, dict)))
def test_a_json_value_that_is_not_an_object_is_bad(value: Any) -> None:
    with pytest.raises(BadEvent, match="not a JSON object"):
        decoder().decode(json.dumps(value).encode())


@given(ids, st.one_of(st.none(), tenants, st.integers(min_value=0)), st.sampled_from(["object.update", "object.delete"]))
def test_an_event_names_its_resource_and_tenant(objectid: str | int, tenant: str | int | None, kind: str) -> None:
    message: dict[str, Any] = {"type": kind, "objectid": objectid, "unrelated": [1, {"x": None}]}
    if tenant is not None:
        message["org_id"] = tenant
    actions = decoder().decode(json.dumps(message).encode())
    expected = [CacheAction("invalidate", None if tenant is None else str(tenant), "object", (str(objectid),))]
    if kind == "object.update":
        # the second [[events]] entry matches too, for every tenant
        expected.append(CacheAction("refresh", None, "template", (str(objectid),)))
    assert actions == expected


@given(ids, ids)
def test_several_fields_fill_several_path_parameters(left: str | int, right: str | int) -> None:
    actions = decoder().decode(json.dumps({"kind": "pair.changed", "left": left, "right": right}).encode())
    assert actions == [CacheAction("invalidate", None, "pair", (str(left), str(right)))]


@pytest.mark.parametrize(
    "value, why",
    [
        (None, "empty"),
        (b"", "empty"),
        (b"\xff{}", "not UTF-8"),
        (b'{"type": "object.update", "objectid": "\xc3"}', "not UTF-8"),
        (b"{nope", "not JSON"),
        (b"[" * 50_000, "not JSON"),
        (b"[]", "not a JSON object"),
        (b'{"objectid": 1}', "no 'kind' or 'type' field"),
        (b'{"type": "other", "objectid": 1}', "no \\[\\[events\\]\\] entry for type other"),
        (b'{"type": 3, "objectid": 1}', "no \\[\\[events\\]\\] entry"),
        (b'{"type": "object.update"}', "lacks field 'objectid'"),
        (b'{"type": "object.update", "objectid": null}', "not a string or an integer"),
        (b'{"type": "object.update", "objectid": true}', "not a string or an integer"),
        (b'{"type": "object.update", "objectid": 1.0}', "not a string or an integer"),
        (b'{"type": "object.update", "objectid": ""}', "is empty"),
        (json.dumps({"type": "object.update", "objectid": "x" * 513}).encode(), "longer than 512 bytes"),
        (b'{"type": "object.delete", "objectid": 1, "org_id": "a b"}', "org_id"),
        (b'{"type": "object.delete", "objectid": 1, "org_id": ""}', "org_id"),
        (b'{"type": "object.delete", "objectid": 1, "org_id": {}}', "org_id"),
        (b"x" * (MAX_EVENT_BYTES + 1), "over 65536"),
    ],
)
def test_bad_messages_say_why(value: bytes | None, why: str) -> None:
    with pytest.raises(BadEvent, match=why):
        decoder().decode(value)


def test_a_null_tenant_means_every_tenant() -> None:
    actions = decoder().decode(b'{"type": "object.delete", "objectid": 7, "org_id": null}')
    assert actions == [CacheAction("invalidate", None, "object", ("7",))]


# --- applying ------------------------------------------------------------------


def _entry() -> CachedResponse:
    return CachedResponse(200, (), b"body", stored_at=0, expires_at=300, stale_until=300)


class _RefusingStore(MemoryStore):
    """A store whose invalidations fail, as Redis does when it is away."""

    def invalidate(self, tenant: str | None, route: str, params: tuple[str, ...]) -> Deferred[int]:
        return fail(StoreUnavailable("away"))


class EventHandlerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1000)
        self.store = MemoryStore(1 << 20)
        self.handler = self._handler(self.store)

    def _handler(self, store: MemoryStore) -> EventHandler:
        registry = CacheRegistry(store, None, self.clock, CONFIG.routes, ())  # type: ignore[arg-type]
        return EventHandler(decoder(), registry, self.clock)

    def _put(self, tenant: str, route: str, *params: str, variant: str = "v") -> CacheKey:
        key = CacheKey(tenant, route, params, variant)
        assert self.store.put_now(key, _entry(), self.store._epoch)
        return key

    def test_invalidate_drops_every_variant_for_every_tenant(self) -> None:
        keys = [self._put("t1", "object", "1"), self._put("t1", "object", "1", variant="w"), self._put("t2", "object", "1")]
        other = self._put("t1", "object", "2")
        applied = self.successResultOf(self.handler.handle(b'{"type": "object.delete", "objectid": 1}', 990.0, "t[0]@0"))
        self.assertTrue(applied)
        self.assertEqual([self.store.lookup(k) for k in keys], [None, None, None])
        self.assertIsNotNone(self.store.lookup(other))
        self.assertEqual(self.handler.info()["applied"], 1)
        self.assertEqual(self.handler.info()["last_applied_at"], 1000.0)
        self.assertEqual(list(self.handler.lags), [10.0])

    def test_invalidate_with_a_tenant_drops_only_that_tenants_entries(self) -> None:
        mine, theirs = self._put("t1", "object", "1"), self._put("t2", "object", "1")
        self.successResultOf(self.handler.handle(b'{"type": "object.delete", "objectid": "1", "org_id": "t1"}'))
        self.assertIsNone(self.store.lookup(mine))
        self.assertIsNotNone(self.store.lookup(theirs))

    def test_refresh_marks_stale_and_keeps_the_entry(self) -> None:
        key = self._put("t9", "template", "4")
        self.successResultOf(self.handler.handle(b'{"type": "object.update", "objectid": 4}'))
        entry = self.store.lookup(key)
        assert entry is not None
        self.assertTrue(entry.stale)

    def test_a_bad_message_is_counted_and_skipped(self) -> None:
        self.assertFalse(self.successResultOf(self.handler.handle(b"nope")))
        self.assertEqual(
            {k: v for k, v in self.handler.info().items() if k != "last_applied_at"},
            {"received": 1, "applied": 0, "skipped": 1, "failed": 0},
        )

    def test_a_batch_stops_at_the_first_event_that_could_not_be_applied(self) -> None:
        handler = self._handler(_RefusingStore(1 << 20))
        batch = [
            (b"junk", None, "t[0]@0"),
            (b'{"type": "object.delete", "objectid": 1}', None, "t[0]@1"),
            (b'{"type": "object.delete", "objectid": 2}', None, "t[0]@2"),
        ]
        self.assertEqual(self.successResultOf(handler.handle_batch(batch)), 1)
        self.assertEqual(handler.info()["failed"], 1)
        self.assertEqual(handler.info()["applied"], 0)
        self.assertEqual(self.successResultOf(self.handler.handle_batch(batch)), 3)


# --- librdkafka settings --------------------------------------------------------


def test_security_settings_map_to_librdkafka_and_extra_wins() -> None:
    kafka = KafkaConfig(
        bootstrap_servers="k1:9093,k2:9093",
        topics=("t",),
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="svc",
        sasl_password="hunter2",
        ssl_ca_location="/etc/ca.pem",
        extra={"fetch.wait.max.ms": 20, "reconnect.backoff.max.ms": 2000, "socket.keepalive.enable": True},
    )
    s = consumer_settings(kafka, "g")
    assert s["bootstrap.servers"] == "k1:9093,k2:9093"
    assert s["group.id"] == "g"
    assert (s["security.protocol"], s["sasl.mechanism"]) == ("SASL_SSL", "SCRAM-SHA-512")
    assert (s["sasl.username"], s["sasl.password"], s["ssl.ca.location"]) == ("svc", "hunter2", "/etc/ca.pem")
    assert s["enable.auto.offset.store"] is False
    assert s["reconnect.backoff.max.ms"] == 2000
    assert s["fetch.wait.max.ms"] == 20
    shown = redact(dict(s, error_cb=print))
    assert shown["sasl.password"] == "***"
    assert "hunter2" not in json.dumps(shown)
    assert "error_cb" not in shown


def test_plaintext_sets_no_sasl_or_ssl_settings() -> None:
    s = consumer_settings(KafkaConfig(bootstrap_servers="k:9092", topics=("t",)), "g")
    assert not any(k.startswith(("sasl.", "ssl.")) for k in s)
