"""
Cloud Foundry bindings: VCAP_SERVICES fills what the configuration leaves out.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from apicache.config import ConfigError, parse_config
from apicache.daemon.vcap import BindingFiller, bindings_from_environ, fetch_ca_cert, parse_vcap_services
from apicache.testing import vcap_services

ROUTES = [{"type": "object", "path": "/o/<id>", "upstream": "/o/{id}"}]


def config(data, environ=None, filler=None, fetch_ca=lambda url: "/etc/kafka-ca.pem"):
    filler = filler or BindingFiller(parse_vcap_services(vcap_services()), fetch_ca=fetch_ca)
    return parse_config(data, "apicache.toml", environ or {}, filler), filler


def test_bindings_are_read_from_the_sample():
    b = parse_vcap_services(vcap_services(redis={"uri": "redis://:pw@redis.example:6379/0"}))
    assert b.api_key == "vcap-api-key"
    assert b.kafka is not None
    assert b.kafka.brokers == "broker-0.kafka.example:9093,broker-1.kafka.example:9093"
    assert (b.kafka.username, b.kafka.password) == ("apicache-client", "kafka-client-secret")
    assert b.kafka.token_url == "https://token.example/oauth/token"
    assert b.kafka.ca_cert == "https://certs.example/kafka-ca.pem"
    assert b.redis_url == "redis://:pw@redis.example:6379/0"


def test_repr_shows_no_secret():
    b = parse_vcap_services(vcap_services(redis={"uri": "redis://:pw@redis.example:6379/0"}))
    text = repr(b)
    assert "vcap-api-key" not in text and "kafka-client-secret" not in text and ":pw@" not in text


def test_no_vcap_services_means_no_bindings():
    assert bindings_from_environ({}) is None
    assert bindings_from_environ({"VCAP_SERVICES": " "}) is None


def test_bad_vcap_services_is_a_config_error():
    with pytest.raises(ConfigError) as e:
        bindings_from_environ({"VCAP_SERVICES": "{not json"})
    assert "VCAP_SERVICES" in str(e.value)


def test_api_key_fills_an_empty_list_and_satisfies_the_requirement():
    """Without the binding, no api key is a start-up error; with it, the key is used."""
    data = {"server": {"api_keys": ["${APICACHE_API_KEY:-}"]}, "upstream": {"base_url": "http://u"}, "routes": ROUTES}
    with pytest.raises(ConfigError):
        parse_config(data, "apicache.toml", {})
    c, filler = config(data)
    assert c.server.api_keys == ("vcap-api-key",)
    assert "server.api_keys" in filler.filled


def test_given_api_key_wins():
    c, _ = config({"server": {"api_keys": ["mine"]}})
    assert c.server.api_keys == ("mine",)


def test_kafka_fills_what_is_left_out_and_uses_the_token():
    data = {"kafka": {"bootstrap_servers": "${BROKERS:-}", "topics": ["events"]}}
    c, filler = config(data)
    k = c.kafka
    assert k.bootstrap_servers == "broker-0.kafka.example:9093,broker-1.kafka.example:9093"
    assert (k.security_protocol, k.sasl_mechanism, k.sasl_username) == ("SASL_SSL", "PLAIN", "apicache-client")
    assert k.sasl_password == ""  # the OAuth token is the password
    assert filler.kafka_token_url == "https://token.example/oauth/token"
    assert filler.kafka_client == ("apicache-client", "kafka-client-secret")
    assert k.ssl_ca_location == "/etc/kafka-ca.pem"


def test_kafka_password_without_token_url():
    filler = BindingFiller(parse_vcap_services(vcap_services(token_url="")), fetch_ca=lambda u: u)
    c, _ = config({"kafka": {"topics": ["events"]}}, filler=filler)
    assert c.kafka.sasl_password == "kafka-client-secret"
    assert filler.kafka_token_url == ""


def test_kafka_values_given_in_the_file_win():
    data = {
        "kafka": {
            "bootstrap_servers": "mine:9092",
            "topics": ["events"],
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_password": "given",
            "ssl_ca_location": "/mine.pem",
        }
    }
    c, filler = config(data)
    assert c.kafka.bootstrap_servers == "mine:9092"
    assert c.kafka.security_protocol == "SASL_PLAINTEXT"
    assert c.kafka.sasl_password == "given"
    assert c.kafka.ssl_ca_location == "/mine.pem"
    assert filler.kafka_token_url == ""


def test_kafka_without_topics_is_not_enabled():
    c, _ = config({})
    assert not c.kafka.enabled


def test_ca_fetch_failure_leaves_the_system_cas():
    def fail(url):
        raise OSError("refused")

    c, _ = config({"kafka": {"topics": ["events"]}}, fetch_ca=fail)
    assert c.kafka.enabled and c.kafka.ssl_ca_location == ""


def test_redis_from_host_port_password():
    b = parse_vcap_services(vcap_services(redis={"host": "r.example", "port": 6380, "password": "p@ss/word"}))
    filler = BindingFiller(b, fetch_ca=lambda u: u)
    c, _ = config({}, filler=filler)
    assert c.store.backend == "redis"
    assert c.store.redis_url == "redis://:p%40ss%2Fword@r.example:6380/0"


def test_redis_backend_given_in_the_file_wins():
    b = parse_vcap_services(vcap_services(redis={"uri": "rediss://:pw@r.example:6380/0"}))
    c, _ = config({"store": {"backend": "memory"}}, filler=BindingFiller(b, fetch_ca=lambda u: u))
    assert c.store.backend == "memory"
    assert c.store.redis_url == "rediss://:pw@r.example:6380/0"


def test_ca_cert_path_is_used_as_it_is():
    assert fetch_ca_cert("/etc/ssl/kafka.pem") == "/etc/ssl/kafka.pem"


def test_ca_cert_url_is_fetched_into_a_file():
    pem = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(pem)))
            self.end_headers()
            self.wfile.write(pem)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        path = fetch_ca_cert(f"http://127.0.0.1:{server.server_address[1]}/ca.pem")
    finally:
        server.shutdown()
        server.server_close()
    with open(path, "rb") as f:
        assert f.read() == pem


def test_first_kafka_service_is_used():
    data = json.loads(vcap_services())
    data["kafka"].append({"name": "second", "label": "kafka", "credentials": {"cluster": {"brokers": "other:1"}}})
    b = parse_vcap_services(json.dumps(data))
    assert b.kafka is not None and b.kafka.brokers.startswith("broker-0")


@pytest.mark.integration
def test_daemon_with_bad_vcap_services_exits_with_one_line(tmp_path):
    import subprocess

    from apicache.harness.launchers import twistd_path

    (tmp_path / "apicache.toml").write_text('[server]\nallow_anonymous = true\n')
    p = subprocess.run(
        [twistd_path(), "-n", "--pidfile=", "apicache", "--config", "apicache.toml", "--listen", "tcp:0:interface=127.0.0.1"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "VCAP_SERVICES": "{not json"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert p.returncode == 1
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "VCAP_SERVICES" in lines[0]


def test_kafka_with_a_ca_but_no_user_uses_ssl():
    data = json.loads(vcap_services())
    creds = data["kafka"][0]["credentials"]
    del creds["username"], creds["password"], creds["urls"]["token"]
    filler = BindingFiller(parse_vcap_services(json.dumps(data)), fetch_ca=lambda u: "/ca.pem")
    c, _ = config({"kafka": {"topics": ["events"]}}, filler=filler)
    assert (c.kafka.security_protocol, c.kafka.sasl_mechanism, c.kafka.ssl_ca_location) == ("SSL", "", "/ca.pem")
