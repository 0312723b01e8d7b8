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
    assert c.upstream.forward_headers == (
        "authorization", "accept", "accept-language", "traceparent", "tracestate", "x-correlationid",
    )
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


def test_tenant_max_bytes_defaults_to_no_cap_and_is_read():
    assert load_config(None, {}).store.tenant_max_bytes == 0
    assert parse({"store": {"tenant_max_bytes": 1048576}}).store.tenant_max_bytes == 1048576


@pytest.mark.parametrize("bad", [-1, 1.5, "1MiB", True])
def test_a_bad_tenant_max_bytes_is_one_line_naming_the_key(bad):
    e = error({"store": {"tenant_max_bytes": bad}})
    assert "store.tenant_max_bytes" in str(e)
