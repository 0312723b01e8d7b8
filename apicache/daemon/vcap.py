"""
Cloud Foundry service bindings: when ``VCAP_SERVICES`` is set, the bound
services fill what the configuration file leaves out (a key it does not
give, or a ``${NAME:-}`` that came out empty).

- the api key: the user-provided service named ``cache-key``
  (``credentials.key``);
- Kafka: the first service under the label ``kafka``
  (``credentials.cluster.brokers``, ``username``, ``password``,
  ``urls.ca_cert``, ``urls.token``);
- Redis: the first service labelled ``redis`` or ``redis-cache`` (SAP
  BTP), else the first whose label or tags name Redis; a binding that
  describes a Redis Cluster or sentinels also sets ``store.redis_mode``
  (and ``redis_sentinel_master``).  The credential forms read are listed
  in L{_redis} and in docs/configuration.md ("Cloud Foundry bindings").

A leaf module: the configuration loader calls :class:`BindingFiller` for each
section; nothing here touches the reactor.  Secrets are never logged and never
shown by ``repr``.
"""

from __future__ import annotations

import json
import os
import tempfile
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlsplit

from twisted.logger import Logger

from apicache.config import ConfigError

__all__ = [
    "Bindings",
    "KafkaBinding",
    "BindingFiller",
    "parse_vcap_services",
    "bindings_from_environ",
    "fetch_ca_cert",
    "API_KEY_SERVICE",
]

#: The name of the user-provided service holding the api key.
API_KEY_SERVICE = "cache-key"
_SOURCE = "VCAP_SERVICES"

log = Logger(namespace="apicache.daemon.vcap")


@dataclass(frozen=True)
class KafkaBinding:
    """
    A bound Kafka service.

    @ivar brokers: ``host:port`` list, comma-separated.
    @ivar ca_cert: a URL to fetch at start-up or a file path; ``""``: none.
    @ivar token_url: an OAuth client-credentials token URL: the token (got
        with ``username``/``password`` as client id/secret) is the SASL
        PLAIN password; ``""``: ``password`` is.
    """

    brokers: str
    username: str = ""
    password: str = field(default="", repr=False)
    ca_cert: str = ""
    token_url: str = ""


@dataclass(frozen=True)
class Bindings:
    """
    What ``VCAP_SERVICES`` offers apicache; empty strings/``None``: not bound.
    """

    api_key: str = field(default="", repr=False)
    kafka: KafkaBinding | None = None
    redis_url: str = field(default="", repr=False)
    #: "single", "cluster" or "sentinel" as the Redis binding describes it
    redis_mode: str = ""
    redis_sentinel_master: str = ""


def _services(data: Any) -> list[tuple[str, dict[str, Any]]]:
    if not isinstance(data, dict):
        raise ConfigError(_SOURCE, "-", "expected a JSON object of service labels")
    out: list[tuple[str, dict[str, Any]]] = []
    for label, instances in data.items():
        if not isinstance(instances, list):
            raise ConfigError(_SOURCE, label, "expected a list of service instances")
        for inst in instances:
            if isinstance(inst, dict):
                out.append((label, inst))
    return out


def _credentials(label: str, inst: Mapping[str, Any]) -> dict[str, Any]:
    creds = inst.get("credentials", {})
    if not isinstance(creds, dict):
        raise ConfigError(_SOURCE, f"{label}.credentials", "expected a JSON object")
    return creds


def _text(where: str, v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return str(v)
    if not isinstance(v, str):
        raise ConfigError(_SOURCE, where, "expected a string")
    return v


def _kafka(creds: Mapping[str, Any]) -> KafkaBinding | None:
    cluster = creds.get("cluster") or {}
    urls = creds.get("urls") or {}
    if not isinstance(cluster, dict) or not isinstance(urls, dict):
        raise ConfigError(_SOURCE, "kafka.credentials", "expected cluster and urls to be JSON objects")
    brokers = cluster.get("brokers", "")
    if isinstance(brokers, list):
        brokers = ",".join(_text("kafka.credentials.cluster.brokers", b) for b in brokers)
    brokers = ",".join(b.strip() for b in _text("kafka.credentials.cluster.brokers", brokers).split(",") if b.strip())
    if not brokers:
        return None
    return KafkaBinding(
        brokers=brokers,
        username=_text("kafka.credentials.username", creds.get("username")),
        password=_text("kafka.credentials.password", creds.get("password")),
        ca_cert=_text("kafka.credentials.urls.ca_cert", urls.get("ca_cert")),
        token_url=_text("kafka.credentials.urls.token", urls.get("token")),
    )


#: The user name SAP BTP's Redis writes into ``uri`` where there is none
#: (the password is an AUTH token); sent to Redis, it would fail the AUTH.
_NO_USER = "no-user-name-for-redis"
#: Labels of Redis services, before any label or tag that names Redis.
REDIS_LABELS = ("redis", "redis-cache")


def _truthy(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("1", "true", "yes", "on")
    return bool(v)


def _get(creds: Mapping[str, Any], dotted: str) -> Any:
    """
    Return ``creds[dotted]``, or the nested ``creds[a][b]`` for ``"a.b"``.
    """
    if dotted in creds:
        return creds[dotted]
    head, _, rest = dotted.partition(".")
    inner = creds.get(head)
    if rest and isinstance(inner, dict):
        return inner.get(rest)
    return None


def _host_list(where: str, value: Any, default_port: int) -> list[str]:
    """
    Return ``host:port`` items of a comma- or space-separated string, or of
    a list of strings or of ``{"host"/"hostname"/"ip", "port"}`` objects.
    """
    if value is None or value == "":
        return []
    items: list[Any] = value if isinstance(value, list) else _text(where, value).replace(" ", ",").split(",")
    hosts = []
    for item in items:
        if isinstance(item, dict):
            host = _text(where, item.get("host") or item.get("hostname") or item.get("ip"))
            port = _text(where, item.get("port")) or str(default_port)
            text = f"{host}:{port}" if host else ""
        else:
            text = _text(where, item).strip()
            if text and ":" not in text.rpartition("]")[2]:
                text = f"{text}:{default_port}"
        if text:
            hosts.append(text)
    return hosts


def _redis_url(creds: Mapping[str, Any], hosts: list[str], db: str = "0") -> str:
    password = _text("redis.credentials.password", creds.get("password"))
    tls = any(_truthy(creds.get(k)) for k in ("tls", "tls_enabled", "ssl"))
    auth = f":{quote(password, safe='')}@" if password else ""
    query = ""
    sentinel_password = _text("redis.credentials.sentinel.password", _get(creds, "sentinel.password"))
    if sentinel_password:
        query = f"?sentinel_password={quote(sentinel_password, safe='')}"
    return f"{'rediss' if tls else 'redis'}://{auth}{','.join(hosts)}/{db}{query}"


def _without_placeholder_user(uri: str) -> str:
    u = urlsplit(uri)
    if u.username != _NO_USER:
        return uri
    return uri.replace(f"{_NO_USER}:", ":", 1)


def _redis(creds: Mapping[str, Any]) -> tuple[str, str, str]:
    """
    Return ``(redis_url, redis_mode, sentinel master)`` of a Redis binding's
    credentials (``("", "", "")``: none), in this order:

    - sentinels: ``sentinel.nodes`` and ``sentinel.master`` (flat, as
      Spring Cloud Bindings spells them, or nested), or ``sentinels`` (a
      list) and ``master_name``; ``sentinel.password`` when the sentinels
      have their own;
    - a cluster: ``cluster.nodes`` (flat or nested), or SAP BTP's form with
      ``cluster_mode`` true: ``hostname`` and ``port`` (the cluster's
      configuration endpoint), ``password``, ``tls``;
    - one Redis: ``uri`` (or ``url``), else ``host``/``hostname``, ``port``
      and ``password`` (SAP BTP's form with ``cluster_mode`` false).

    ``tls`` (or ``tls_enabled``, ``ssl``) true gives ``rediss://``; SAP's
    placeholder user name in ``uri`` is left out.
    """
    sentinels = _host_list(
        "redis.credentials.sentinel.nodes", _get(creds, "sentinel.nodes") or creds.get("sentinels"), 26379
    )
    if sentinels:
        master = _text(
            "redis.credentials.sentinel.master",
            _get(creds, "sentinel.master") or creds.get("master_name") or creds.get("sentinel_master"),
        )
        db = _text("redis.credentials.database", creds.get("database")) or "0"
        return _redis_url(creds, sentinels, db), "sentinel", master
    nodes = _host_list("redis.credentials.cluster.nodes", _get(creds, "cluster.nodes"), 6379)
    if not nodes and _truthy(creds.get("cluster_mode")):
        nodes = _host_list(
            "redis.credentials.hostname",
            [{"host": creds.get("hostname") or creds.get("host"), "port": creds.get("port")}],
            6379,
        )
        if not nodes and (creds.get("uri") or creds.get("url")):
            u = urlsplit(_text("redis.credentials.uri", creds.get("uri") or creds.get("url")))
            return _without_placeholder_user(u.geturl()), "cluster", ""
    if nodes:
        return _redis_url(creds, nodes), "cluster", ""
    uri = _text("redis.credentials.uri", creds.get("uri") or creds.get("url"))
    if uri:
        return _without_placeholder_user(uri), "single", ""
    host = _text("redis.credentials.host", creds.get("host") or creds.get("hostname"))
    if not host:
        return "", "", ""
    port = _text("redis.credentials.port", creds.get("port")) or "6379"
    return _redis_url(creds, [f"{host}:{port}"]), "single", ""


def _is_redis(label: str, inst: Mapping[str, Any]) -> bool:
    tags = inst.get("tags")
    named = [label, *(t for t in tags if isinstance(t, str))] if isinstance(tags, list) else [label]
    return any("redis" in n.lower() for n in named)


def parse_vcap_services(text: str) -> Bindings:
    """
    Return what the ``VCAP_SERVICES`` JSON ``text`` binds for apicache.

    @raise ConfigError: ``text`` is not the JSON Cloud Foundry writes.
    """
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ConfigError(_SOURCE, "-", f"not valid JSON: {e}") from None
    api_key = ""
    kafka: KafkaBinding | None = None
    services = _services(data)
    for label, inst in services:
        if inst.get("name") == API_KEY_SERVICE and not api_key:
            api_key = _text(f"{API_KEY_SERVICE}.credentials.key", _credentials(label, inst).get("key"))
        elif label == "kafka" and kafka is None:
            kafka = _kafka(_credentials(label, inst))
    # a service of a Redis label first, then one whose label or tags name Redis
    redis = next((i for i in services if i[0] in REDIS_LABELS), None) or next(
        (i for i in services if i[1].get("name") != API_KEY_SERVICE and _is_redis(*i)), None
    )
    url, mode, master = _redis(_credentials(*redis)) if redis is not None else ("", "", "")
    return Bindings(api_key=api_key, kafka=kafka, redis_url=url, redis_mode=mode if url else "",
                    redis_sentinel_master=master)


def bindings_from_environ(environ: Mapping[str, str]) -> Bindings | None:
    """
    Return the bindings of ``VCAP_SERVICES``, or ``None`` when it is unset
    or empty.

    @raise ConfigError: it is set but not valid.
    """
    text = environ.get("VCAP_SERVICES", "").strip()
    if not text:
        return None
    return parse_vcap_services(text)


def fetch_ca_cert(location: str, timeout: float = 10.0) -> str:
    """
    Return a file path holding the CA certificate at ``location``: a path is
    returned as it is; an ``http(s)://`` URL is fetched (blocking: this runs
    once, at start-up, before the reactor) into a temporary file.

    @raise OSError: the certificate could not be fetched or written.
    """
    if urlsplit(location).scheme not in ("http", "https"):
        return location
    with urllib.request.urlopen(location, timeout=timeout) as r:  # noqa: S310 - http(s) only
        pem = r.read(1024 * 1024)
    fd, path = tempfile.mkstemp(prefix="apicache-kafka-ca-", suffix=".pem")
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return path


def _left_out(values: Mapping[str, Any], key: str) -> bool:
    v = values.get(key)
    return v is None or v == "" or v == () or v == []


class BindingFiller:
    """
    A L{apicache.config.SectionFiller}: fills from L{Bindings} what the file
    leaves out.

    @ivar filled: dotted keys filled, for a start-up log line (no values).
    @ivar kafka_token_url: set when the Kafka SASL password is to come from
        an OAuth token (see L{apicache.events.oauth.TokenProvider}).
    @ivar kafka_client: ``(client id, client secret)`` for that token.
    """

    def __init__(
        self,
        bindings: Bindings,
        fetch_ca: Callable[[str], str] = fetch_ca_cert,
    ) -> None:
        self.bindings = bindings
        self._fetch_ca = fetch_ca
        self.filled: list[str] = []
        self.kafka_token_url = ""
        self.kafka_client: tuple[str, str] = ("", "")

    def __call__(self, section: str, values: dict[str, Any]) -> None:
        getattr(self, f"_fill_{section}", lambda v: None)(values)

    def _set(self, section: str, values: dict[str, Any], key: str, value: Any) -> None:
        values[key] = value
        self.filled.append(f"{section}.{key}")

    def _fill_server(self, values: dict[str, Any]) -> None:
        if self.bindings.api_key and _left_out(values, "api_keys"):
            self._set("server", values, "api_keys", (self.bindings.api_key,))

    def _fill_store(self, values: dict[str, Any]) -> None:
        b = self.bindings
        if not b.redis_url:
            return
        if _left_out(values, "redis_url"):
            self._set("store", values, "redis_url", b.redis_url)
            # the mode goes with the URL it describes, never with the file's
            if b.redis_mode and _left_out(values, "redis_mode"):
                self._set("store", values, "redis_mode", b.redis_mode)
            if b.redis_sentinel_master and _left_out(values, "redis_sentinel_master"):
                self._set("store", values, "redis_sentinel_master", b.redis_sentinel_master)
        if _left_out(values, "backend"):
            self._set("store", values, "backend", "redis")

    def _fill_kafka(self, values: dict[str, Any]) -> None:
        k = self.bindings.kafka
        if k is None:
            return
        if _left_out(values, "bootstrap_servers"):
            if _left_out(values, "topics"):
                log.warn("a kafka service is bound but kafka.topics is empty: no event listener")
                return
            self._set("kafka", values, "bootstrap_servers", k.brokers)
        if k.username and _left_out(values, "sasl_username"):
            self._set("kafka", values, "sasl_username", k.username)
        if k.username and _left_out(values, "sasl_mechanism"):
            self._set("kafka", values, "sasl_mechanism", "PLAIN")
        if _left_out(values, "security_protocol") and (k.username or k.ca_cert):
            self._set("kafka", values, "security_protocol", "SASL_SSL" if k.username else "SSL")
        if _left_out(values, "sasl_password"):
            if k.token_url:
                self.kafka_token_url = k.token_url
                self.kafka_client = (k.username, k.password)
                self.filled.append("kafka.sasl_password (OAuth token)")
            elif k.password:
                self._set("kafka", values, "sasl_password", k.password)
        if k.ca_cert and _left_out(values, "ssl_ca_location"):
            try:
                path = self._fetch_ca(k.ca_cert)
            except OSError as e:
                log.warn(
                    "could not fetch the Kafka CA certificate ({error}): using the system's CAs",
                    error=str(e),
                )
            else:
                self._set("kafka", values, "ssl_ca_location", path)
