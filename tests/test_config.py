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


# --- version 3 keys ---------------------------------------------------------


def test_v3_defaults_match_the_spec():
    c = load_config(None, {})
    s, a, st, up = c.server, c.auth, c.store, c.upstream
    assert (s.body_timeout, s.max_write_buffer) == (30.0, 1048576)
    assert (a.jwks, a.jwks_refresh, a.issuers, a.audiences, a.leeway) == ("", 300.0, (), (), 30.0)
    assert a.algorithms == ("RS256", "ES256", "EdDSA")
    assert a.enabled is False
    assert (st.fair_share, st.redis_mode, st.redis_sentinel_master) == ("client", "single", "mymaster")
    assert st.redis_hosts == (("127.0.0.1", 6379),)
    assert (up.max_header_bytes, up.targeted_cache_control, up.tenant_max_in_flight) == (
        65536, ("cdn-cache-control",), 64,
    )
    r = parse({"upstream": UP, "routes": [ROUTE]}).route("object")
    assert (r.heuristic, r.max_variants) == (0.1, 16)


def test_every_v3_key_is_read():
    c = parse(
        {
            "server": {"api_keys": ["k"], "body_timeout": 2.5, "max_write_buffer": 4096},
            "auth": {
                "jwks": "https://idp.example/.well-known/jwks.json", "jwks_refresh": 60,
                "issuers": ["https://idp.example/"], "audiences": ["apicache"],
                "algorithms": ["ES256", "PS384"], "leeway": 5,
            },
            "store": {"fair_share": "tenant", "redis_mode": "sentinel", "redis_sentinel_master": "primary",
                      "redis_url": "redis://s1:26380,s2/1"},
            "upstream": dict(UP, max_header_bytes=8192, targeted_cache_control=["Apicache-Cache-Control", "CDN-Cache-Control"],
                             tenant_max_in_flight=0),
            "routes": [dict(ROUTE, freshness="upstream", ttl=0, heuristic=0.2, max_variants=4, negative_ttl=30)],
        }
    )
    assert (c.server.body_timeout, c.server.max_write_buffer) == (2.5, 4096)
    a = c.auth
    assert a.enabled and a.jwks_is_url
    assert (a.jwks_refresh, a.issuers, a.audiences, a.algorithms, a.leeway) == (
        60.0, ("https://idp.example/",), ("apicache",), ("ES256", "PS384"), 5.0,
    )
    assert (c.store.fair_share, c.store.redis_mode, c.store.redis_sentinel_master) == ("tenant", "sentinel", "primary")
    assert c.store.redis_hosts == (("s1", 26380), ("s2", 26379))
    assert c.upstream.max_header_bytes == 8192
    assert c.upstream.targeted_cache_control == ("apicache-cache-control", "cdn-cache-control")
    assert c.upstream.tenant_max_in_flight == 0
    r = c.route("object")
    assert (r.ttl, r.heuristic, r.max_variants, r.negative_ttl) == (0.0, 0.2, 4, 30.0)


def test_a_jwks_file_path_is_not_a_url():
    a = parse({"auth": {"jwks": "/etc/apicache/jwks.json"}}).auth
    assert a.enabled and not a.jwks_is_url


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:8081/jwks", "http://localhost/jwks", "http://[::1]:9/jwks", "http://127.3.4.5/jwks"]
)
def test_a_jwks_over_plain_http_is_allowed_on_loopback(url):
    assert parse({"auth": {"jwks": url}}).auth.jwks == url


def test_targeted_cache_control_may_be_empty():
    assert parse({"upstream": dict(UP, targeted_cache_control=[])}).upstream.targeted_cache_control == ()


def test_a_cluster_takes_several_seed_nodes():
    st = parse({"store": {"redis_mode": "cluster", "redis_url": "redis://:pw@h1:7000, h2:7001,[::1]:7002"}}).store
    assert st.redis_hosts == (("h1", 7000), ("h2", 7001), ("::1", 7002))


@pytest.mark.parametrize("ttl", [0, 0.0])
def test_ttl_zero_is_allowed_with_upstream_freshness(ttl):
    r = parse({"upstream": UP, "routes": [dict(ROUTE, freshness="upstream", ttl=ttl)]}).route("object")
    assert r.ttl == 0.0


@pytest.mark.parametrize(
    "data, key",
    [
        ({"server": {"api_keys": ["k"], "body_timeout": 0}}, "server.body_timeout"),
        ({"server": {"api_keys": ["k"], "body_timeout": "30s"}}, "server.body_timeout"),
        ({"server": {"api_keys": ["k"], "max_write_buffer": 0}}, "server.max_write_buffer"),
        ({"server": {"api_keys": ["k"], "max_write_buffer": 1.5}}, "server.max_write_buffer"),
        ({"auth": {"bogus": 1}}, "auth.bogus"),
        ({"auth": {"jwks": "http://idp.example/jwks"}}, "auth.jwks"),
        ({"auth": {"jwks": "http://10.0.0.1/jwks"}}, "auth.jwks"),
        ({"auth": {"jwks": "ftp://idp.example/jwks"}}, "auth.jwks"),
        ({"auth": {"jwks": "https:///jwks"}}, "auth.jwks"),
        ({"auth": {"jwks": "https://idp.example:99999/jwks"}}, "auth.jwks"),
        ({"auth": {"jwks_refresh": 0}}, "auth.jwks_refresh"),
        ({"auth": {"issuers": "https://idp"}}, "auth.issuers"),
        ({"auth": {"issuers": [""]}}, "auth.issuers[0]"),
        ({"auth": {"audiences": [1]}}, "auth.audiences"),
        ({"auth": {"algorithms": ["RS256", "none"]}}, "auth.algorithms[1]"),
        ({"auth": {"algorithms": ["None"]}}, "auth.algorithms[0]"),
        ({"auth": {"algorithms": ["HS256"]}}, "auth.algorithms[0]"),
        ({"auth": {"algorithms": ["hs512"]}}, "auth.algorithms[0]"),
        ({"auth": {"algorithms": ["RSA1_5"]}}, "auth.algorithms[0]"),
        ({"auth": {"algorithms": []}}, "auth.algorithms"),
        ({"auth": {"leeway": -1}}, "auth.leeway"),
        ({"store": {"fair_share": "equal"}}, "store.fair_share"),
        ({"store": {"redis_mode": "replica"}}, "store.redis_mode"),
        ({"store": {"redis_url": "redis://h1:7000,h2:7001"}}, "store.redis_url"),
        ({"store": {"redis_mode": "cluster", "redis_url": "redis://h1:7000,:7001"}}, "store.redis_url"),
        ({"store": {"redis_mode": "cluster", "redis_url": "redis://h1:port"}}, "store.redis_url"),
        ({"store": {"redis_mode": "cluster", "redis_url": "redis://h1:7000/2"}}, "store.redis_url"),
        ({"store": {"redis_mode": "cluster", "redis_url": "unix:///tmp/redis.sock"}}, "store.redis_url"),
        ({"store": {"redis_mode": "sentinel", "redis_url": "redis://s1,s2/db"}}, "store.redis_url"),
        ({"store": {"redis_mode": "sentinel", "redis_sentinel_master": ""}}, "store.redis_sentinel_master"),
        ({"store": {"redis_sentinel_master": 1}}, "store.redis_sentinel_master"),
        ({"upstream": dict(UP, max_header_bytes=0)}, "upstream.max_header_bytes"),
        ({"upstream": dict(UP, targeted_cache_control="cdn-cache-control")}, "upstream.targeted_cache_control"),
        ({"upstream": dict(UP, targeted_cache_control=["cdn cache control"])}, "upstream.targeted_cache_control[0]"),
        ({"upstream": dict(UP, forward_headers=["accept", "Range"])}, "upstream.forward_headers[1]"),
        ({"upstream": dict(UP, set_headers={"range": "bytes=0-"})}, "upstream.set_headers.range"),
        ({"upstream": UP, "routes": [dict(ROUTE, ttl=0)]}, "routes[0].ttl"),
        ({"upstream": UP, "routes": [dict(ROUTE, freshness="route", ttl=0)]}, "routes[0].ttl"),
        ({"upstream": UP, "routes": [dict(ROUTE, freshness="upstream", ttl=-1)]}, "routes[0].ttl"),
        ({"upstream": UP, "routes": [dict(ROUTE, heuristic=-0.1)]}, "routes[0].heuristic"),
        ({"upstream": UP, "routes": [dict(ROUTE, heuristic="10%")]}, "routes[0].heuristic"),
        ({"upstream": UP, "routes": [dict(ROUTE, max_variants=0)]}, "routes[0].max_variants"),
        ({"upstream": UP, "routes": [dict(ROUTE, max_variants=2.5)]}, "routes[0].max_variants"),
    ],
)
def test_bad_v3_values_name_their_key(data, key):
    e = error(data)
    assert e.key == key, str(e)


def test_redis_url_errors_never_quote_the_url():
    e = error({"store": {"redis_mode": "cluster", "redis_url": "redis://:s3cret@h1:port"}})
    assert "s3cret" not in str(e)


@pytest.mark.parametrize(
    "path", ["/", "/healthz", "/readyz", "/metrics", "/clear", "/healthz/", "/tags", "/tags/<tag>", "/tags/x/<id>"]
)
def test_a_route_on_a_reserved_path_is_an_error_naming_the_route(path):
    route = {"type": "status", "path": path, "upstream": "/status"}
    e = error({"upstream": UP, "routes": [ROUTE, route]})
    assert e.key == "routes[1].path"
    assert "'status'" in str(e) and "reserved" in str(e)


@pytest.mark.parametrize("path", ["/<p>", "/healthz2", "/metrics/<id>", "/x/tags/<id>", "/tagsx"])
def test_a_route_that_merely_could_match_a_reserved_path_is_allowed(path):
    c = parse({"upstream": UP, "routes": [{"type": "any", "path": path, "upstream": "/a"}]})
    assert c.route("any").path == path


def test_the_algorithms_accepted_are_the_verifiers():
    from apicache.auth.tokens import ASYMMETRIC_ALGORITHMS as verifier
    from apicache.config import ASYMMETRIC_ALGORITHMS

    assert set(ASYMMETRIC_ALGORITHMS) == set(verifier)
    assert parse({"auth": {"algorithms": ["Ed25519", "RS256"]}}).auth.algorithms == ("Ed25519", "RS256")


@pytest.mark.parametrize(
    "location",
    [
        "/etc/jwks.json", "jwks.json", "https://idp.example/jwks", "http://127.0.0.1:9/jwks", "http://localhost/jwks",
        "http://[::1]/jwks", "http://idp.example/jwks", "http://10.1.2.3/jwks", "ftp://idp.example/jwks", "https:///jwks",
    ],
)
def test_a_jwks_location_is_accepted_exactly_when_the_key_source_accepts_it(location):
    from apicache.auth.jwks import check_jwks_location

    try:
        check_jwks_location(location)
        source_accepts = True
    except ValueError:
        source_accepts = False
    try:
        parse({"auth": {"jwks": location}})
        config_accepts = True
    except ConfigError as e:
        assert e.key == "auth.jwks"
        config_accepts = False
    assert config_accepts == source_accepts
