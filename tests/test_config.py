"""
Loading and validating the configuration file (SPEC.md sections 1 and 2).
"""

from pathlib import Path

import pytest

from apicache.config import Config, ConfigError, load_config, parse_config

EXAMPLE = str(Path(__file__).resolve().parent.parent / "apicache.toml")
ROUTE = {"type": "object", "path": "/server/object(<id>)/header", "upstream": "/object({id})/header"}


def parse(data, environ=None):
    base = {"server": {"api_keys": ["k"]}}
    base.update(data)
    return parse_config(base, "apicache.toml", environ or {})


def error(data, environ=None):
    with pytest.raises(ConfigError) as e:
        parse(data, environ)
    text = str(e.value)
    assert "\n" not in text
    assert "apicache.toml" in text
    return e.value


def test_defaults_match_the_spec():
    c = load_config(None, {})
    assert c.routes == ()
    assert c.server.tenant_header == "org_id"
    assert c.server.max_tenants == 10000
    assert c.server.shutdown_grace == 6.0
    assert c.store.backend == "memory"
    assert c.store.max_bytes == 268435456
    assert c.store.max_entry_fraction == 0.1
    assert c.store.key_prefix == "apicache"
    assert c.upstream.timeout == 10.0
    assert c.upstream.max_body_bytes == 10485760
    assert c.upstream.max_connections == 64
    assert c.upstream.max_in_flight == 256
    # v2: the four of SPEC section 2, and the tracing headers always
    assert c.upstream.forward_headers == (
        "authorization", "accept", "accept-language", "x-correlationid", "traceparent", "tracestate",
    )
    assert c.upstream.unkeyed_headers == ("authorization", "x-correlationid")
    assert c.upstream.keyed_headers == ("accept", "accept-language")
    assert c.kafka.enabled is False


def test_route_defaults_and_durations():
    c = parse({"upstream": {"base_url": "http://u"}, "routes": [dict(ROUTE, ttl=1.5)]})
    r = c.route("object")
    assert (r.ttl, r.stale_if_error, r.params) == (1.5, 0.0, ("id",))


def test_fingerprint_changes_with_the_upstream_template():
    a = parse({"upstream": {"base_url": "http://u"}, "routes": [ROUTE]}).route("object")
    b = parse({"upstream": {"base_url": "http://u"}, "routes": [dict(ROUTE, upstream="/v2/object({id})")]}).route(
        "object"
    )
    assert a.fingerprint != b.fingerprint


def test_environment_is_substituted():
    c = parse(
        {"server": {"api_keys": ["${KEY}", "${NONE:-}"]}, "upstream": {"base_url": "${URL:-http://d}"}},
        {"KEY": "secret"},
    )
    assert c.server.api_keys == ("secret",)
    assert c.upstream.base_url == "http://d"


def test_unset_variable_is_an_error_naming_it():
    e = error({"upstream": {"base_url": "${APICACHE_NOPE}"}})
    assert e.key == "upstream.base_url"
    assert "APICACHE_NOPE" in str(e)


@pytest.mark.parametrize(
    "data, key",
    [
        ({"server": {"bogus": 1}}, "server.bogus"),
        ({"nonsense": {}}, "nonsense"),
        ({"server": {"max_tenants": "many"}}, "server.max_tenants"),
        ({"server": {"access_log": 1}}, "server.access_log"),
        ({"upstream": {"timeout": "soon"}}, "upstream.timeout"),
        ({"upstream": {"timeout": 0}}, "upstream.timeout"),
        ({"upstream": {"base_url": "ftp://x"}}, "upstream.base_url"),
        # these started the daemon, or died with a traceback at start-up
        ({"upstream": {"base_url": "http://127.0.0.1:abc/api"}}, "upstream.base_url"),
        ({"upstream": {"base_url": "http://127.0.0.1:70000/api"}}, "upstream.base_url"),
        ({"upstream": {"base_url": "http://h\u00e9.example/api"}}, "upstream.base_url"),
        ({"store": {"backend": "disk"}}, "store.backend"),
        ({"upstream": {"forward_headers": ["host"]}}, "upstream.forward_headers[0]"),
        ({"upstream": {"forward_headers": ["accept", "api-key"]}}, "upstream.forward_headers[1]"),
        ({"upstream": {"forward_headers": ["proxy-authorization"]}}, "upstream.forward_headers[0]"),
        ({"upstream": {"forward_headers": ["org_id"]}}, "upstream.forward_headers[0]"),
        ({"upstream": {"forward_headers": ["transfer-encoding"]}}, "upstream.forward_headers[0]"),
        ({"routes": [ROUTE]}, "upstream.base_url"),
        ({"upstream": {"base_url": "http://u"}, "routes": [dict(ROUTE, upstream="/x/{name}")]}, "routes[0].upstream"),
        ({"upstream": {"base_url": "http://u"}, "routes": [ROUTE, ROUTE]}, "routes[1].type"),
        ({"upstream": {"base_url": "http://u"}, "routes": [{"type": "x", "path": "/x"}]}, "routes[0].upstream"),
        ({"upstream": {"base_url": "http://u"}, "routes": [dict(ROUTE, path="/a/<path:id>")]}, "routes[0].path"),
        ({"upstream": {"base_url": "http://u"}, "routes": [dict(ROUTE, ttl=-1)]}, "routes[0].ttl"),
        ({"server": {"api_keys": []}}, "server.api_keys"),
        ({"server": {"api_keys": [""]}}, "server.api_keys"),
    ],
)
def test_bad_values_name_their_key(data, key):
    assert error(data).key == key


def test_anonymous_access_can_be_allowed():
    assert parse({"server": {"api_keys": [], "allow_anonymous": True}}).server.api_keys == ()


def test_bad_toml_is_one_line_naming_the_file(tmp_path):
    p = tmp_path / "bad.toml"
    p.write_text("[server\napi_keys = 1\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(p), {})
    assert str(p) in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError):
        load_config(str(tmp_path / "none.toml"), {})


def test_shipped_example_loads_with_a_key():
    c = load_config(EXAMPLE, {"APICACHE_API_KEY": "k"})
    assert [r.type for r in c.routes] == ["object", "template"]
    assert c.upstream.base_url == "http://127.0.0.1:9000"
    assert isinstance(c, Config)


def test_shipped_example_needs_a_key():
    with pytest.raises(ConfigError) as e:
        load_config(EXAMPLE, {})
    assert e.value.key == "server.api_keys"


# --- version 2 keys ---------------------------------------------------------

UP = {"base_url": "http://u"}


def test_v2_defaults_match_the_spec():
    c = load_config(None, {})
    s, st, up, k = c.server, c.store, c.upstream, c.kafka
    assert (s.admin_api_keys, s.max_connections, s.header_timeout, s.idle_timeout, s.max_body_bytes) == (
        (), 0, 10.0, 120.0, 1048576,
    )
    assert st.tenant_max_bytes == 0
    # tenant_max_in_flight: 0 in v2, 64 since v3 (see test_v3_defaults_match_the_spec)
    assert (dict(up.set_headers), up.hide_headers, up.tags_header) == ({}, (), "")
    assert k.max_clock_skew == 1.0
    r = parse({"upstream": UP, "routes": [ROUTE]}).route("object")
    assert (r.freshness, r.max_ttl, r.stale_while_revalidate, r.keep, r.negative_ttl) == ("route", 86400.0, 0.0, 3600.0, 0.0)
    assert (r.tags, r.pass_methods, r.max_staleness) == ((), (), 0.0)


def test_every_v2_route_key_is_read():
    route = dict(
        ROUTE, freshness="upstream", max_ttl=60, stale_while_revalidate=5, keep=10, negative_ttl=2,
        tags=["object:{id}", "objects"], pass_methods=["post", "PATCH"], stale_if_error=1,
    )
    r = parse({"upstream": UP, "routes": [route]}).route("object")
    assert (r.freshness, r.max_ttl, r.stale_while_revalidate, r.keep, r.negative_ttl) == ("upstream", 60.0, 5.0, 10.0, 2.0)
    assert r.tags == ("object:{id}", "objects")
    assert r.pass_methods == ("POST", "PATCH")


def test_empty_admin_keys_are_dropped():
    assert parse({"server": {"api_keys": ["k"], "admin_api_keys": ["", "a"]}}).server.admin_api_keys == ("a",)


@pytest.mark.parametrize(
    "data, key",
    [
        ({"server": {"api_keys": ["k"], "max_connections": -1}}, "server.max_connections"),
        ({"server": {"api_keys": ["k"], "header_timeout": 0}}, "server.header_timeout"),
        ({"server": {"api_keys": ["k"], "idle_timeout": "x"}}, "server.idle_timeout"),
        ({"server": {"api_keys": ["k"], "max_body_bytes": 0}}, "server.max_body_bytes"),
        ({"store": {"tenant_max_bytes": -5}}, "store.tenant_max_bytes"),
        ({"upstream": dict(UP, tenant_max_in_flight=-1)}, "upstream.tenant_max_in_flight"),
        ({"upstream": dict(UP, forward_headers=["via"])}, "upstream.forward_headers[0]"),
        ({"upstream": dict(UP, forward_headers=["If-None-Match"])}, "upstream.forward_headers[0]"),
        ({"upstream": dict(UP, unkeyed_headers=["x-other"])}, "upstream.unkeyed_headers[0]"),
        ({"upstream": dict(UP, set_headers={"host": "x"})}, "upstream.set_headers.host"),
        ({"upstream": dict(UP, set_headers={"x-a": "a\r\nb"})}, "upstream.set_headers.x-a"),
        ({"upstream": dict(UP, set_headers={"x-a": 1})}, "upstream.set_headers"),
        ({"upstream": dict(UP, tags_header="bad header")}, "upstream.tags_header"),
        ({"upstream": UP, "routes": [dict(ROUTE, freshness="cdn")]}, "routes[0].freshness"),
        ({"upstream": UP, "routes": [dict(ROUTE, max_ttl=0)]}, "routes[0].max_ttl"),
        ({"upstream": UP, "routes": [dict(ROUTE, keep=-1)]}, "routes[0].keep"),
        ({"upstream": UP, "routes": [dict(ROUTE, negative_ttl=-1)]}, "routes[0].negative_ttl"),
        ({"upstream": UP, "routes": [dict(ROUTE, tags=["object:{other}"])]}, "routes[0].tags[0]"),
        ({"upstream": UP, "routes": [dict(ROUTE, tags=["a b"])]}, "routes[0].tags[0]"),
        ({"upstream": UP, "routes": [dict(ROUTE, pass_methods=["GET"])]}, "routes[0].pass_methods[0]"),
        ({"upstream": UP, "routes": [dict(ROUTE, path="/tags/<id>")]}, "routes[0].path"),
        ({"upstream": UP, "routes": [dict(ROUTE, max_staleness=5)]}, "routes[0].max_staleness"),
        ({"kafka": {"max_clock_skew": -1}}, "kafka.max_clock_skew"),
    ],
)
def test_bad_v2_values_name_their_key(data, key):
    e = error(data)
    assert e.key == key, str(e)


def test_set_header_values_are_never_quoted_in_errors():
    e = error({"upstream": dict(UP, set_headers={"x-api-key": "s3cret\n"})})
    assert "s3cret" not in str(e)


def test_set_headers_change_the_route_fingerprint():
    a = parse({"upstream": dict(UP, set_headers={"x-api-key": "one"}), "routes": [ROUTE]}).route("object")
    b = parse({"upstream": dict(UP, set_headers={"x-api-key": "two"}), "routes": [ROUTE]}).route("object")
    assert a.fingerprint != b.fingerprint
    assert "one" not in repr(parse({"upstream": dict(UP, set_headers={"x-api-key": "one"})}).upstream)


def test_accept_encoding_in_forward_headers_is_dropped_with_a_warning():
    c = parse({"upstream": dict(UP, forward_headers=["accept", "Accept-Encoding"])})
    assert "accept-encoding" not in c.upstream.forward_headers
    assert len(c.warnings) == 1 and "accept-encoding" in c.warnings[0]


def test_tracing_headers_are_always_forwarded_and_never_keyed():
    c = parse({"upstream": dict(UP, forward_headers=["accept"])})
    assert c.upstream.forward_headers == ("accept", "traceparent", "tracestate")
    assert c.upstream.keyed_headers == ("accept",)
    listed = parse({"upstream": dict(UP, forward_headers=["traceparent", "accept"])})
    assert listed.upstream.forward_headers == ("traceparent", "accept", "tracestate")
    assert listed.upstream.keyed_headers == ("accept",)


def test_explicit_unkeyed_headers_leave_the_key():
    c = parse({"upstream": dict(UP, forward_headers=["accept", "x-user"], unkeyed_headers=["x-user"])})
    assert c.upstream.keyed_headers == ("accept",)
    # the default list names headers that need not be forwarded
    d = parse({"upstream": dict(UP, forward_headers=["accept"])})
    assert d.upstream.keyed_headers == ("accept",)


KAFKA = {"bootstrap_servers": "127.0.0.1:9092", "topics": ["t"]}


def test_max_staleness_needs_an_event_targeting_the_route():
    route = dict(ROUTE, max_staleness=5, tags=["object:{id}"])
    e = error({"upstream": UP, "kafka": KAFKA, "routes": [route]})
    assert e.key == "routes[0].max_staleness"
    by_route = {"types": ["u"], "route": "object", "id_field": "objectid"}
    assert parse({"upstream": UP, "kafka": KAFKA, "routes": [route], "events": [by_route]}).route("object").max_staleness == 5
    by_tag = {"types": ["u"], "tags": ["object:{objectid}"]}
    assert parse({"upstream": UP, "kafka": KAFKA, "routes": [route], "events": [by_tag]}).events[0].route == ""
    other_tag = {"types": ["u"], "tags": ["user:{uid}:x"]}
    assert error({"upstream": UP, "kafka": KAFKA, "routes": [route], "events": [other_tag]}).key == "routes[0].max_staleness"


def test_events_with_tags_need_no_route():
    rule = parse(
        {"upstream": UP, "routes": [ROUTE], "events": [{"types": ["u"], "tags": ["object:{objectid}"], "action": "refresh"}]}
    ).events[0]
    assert (rule.route, rule.tags, rule.action, dict(rule.fields)) == ("", ("object:{objectid}",), "refresh", {})
    assert error({"upstream": UP, "routes": [ROUTE], "events": [{"types": ["u"]}]}).key == "events[0].route"


def test_tenant_max_bytes_defaults_to_no_cap_and_is_read():
    assert load_config(None, {}).store.tenant_max_bytes == 0
    assert parse({"store": {"tenant_max_bytes": 1048576}}).store.tenant_max_bytes == 1048576


@pytest.mark.parametrize("bad", [-1, 1.5, "1MiB", True])
def test_a_bad_tenant_max_bytes_is_one_line_naming_the_key(bad):
    e = error({"store": {"tenant_max_bytes": bad}})
    assert "store.tenant_max_bytes" in str(e)


def test_v3_keys_bounds_needs_are_read():
    """The v3 keys the issue-19 request-side limits read (infra's full v3 set supersedes this)."""
    c = load_config(None, {})
    assert (c.server.body_timeout, c.server.max_write_buffer) == (30.0, 1048576)
    assert (c.upstream.max_header_bytes, c.upstream.tenant_max_in_flight) == (65536, 64)
    c = parse({"server": {"api_keys": ["k"], "body_timeout": 2, "max_write_buffer": 4096}, "upstream": {**UP, "max_header_bytes": 1024}})
    assert (c.server.body_timeout, c.server.max_write_buffer, c.upstream.max_header_bytes) == (2, 4096, 1024)
