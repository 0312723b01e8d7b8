"""
The configuration file: loading, C{${NAME}} substitution, defaults and
validation (SPEC.md section 2).

Every error is a L{ConfigError} whose C{str()} is one line naming the
file, the key and what was expected.  This module is a leaf: it imports
nothing of the project's upper layers.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "ConfigError",
    "Config",
    "ServerConfig",
    "AuthConfig",
    "StoreConfig",
    "UpstreamConfig",
    "RouteConfig",
    "KafkaConfig",
    "EventRule",
    "load_config",
    "parse_config",
    "SectionFiller",
    "FORBIDDEN_FORWARD",
    "UNKEYED_FORWARD",
    "TRACING_HEADERS",
    "PASS_METHODS",
    "RESERVED_PATHS",
    "SCHEMA",
    "ASYMMETRIC_ALGORITHMS",
]


class ConfigError(Exception):
    """
    A configuration file that can't be used.  C{str(error)} is one line.
    """

    def __init__(self, source: str, key: str, message: str) -> None:
        super().__init__(source, key, message)
        self.source = source
        self.key = key
        self.message = message

    def __str__(self) -> str:
        # "-": the file as a whole (unreadable, not TOML) rather than a key
        if self.key in ("", "-"):
            return f"apicache: configuration error in {self.source}: {self.message}"
        return f"apicache: configuration error in {self.source}: {self.key}: {self.message}"


#: Headers that can never be forwarded: hop-by-hop, framing, our own.
FORBIDDEN_FORWARD = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "upgrade",
        "api-key",
        "via",
        # (v3) apicache answers ranges from whole stored answers itself
        "range",
    }
)

#: The default of C{upstream.unkeyed_headers} (SPEC.md section 2).
UNKEYED_FORWARD = ("authorization", "x-correlationid")

#: Always forwarded and never keyed, whatever C{forward_headers} says.
TRACING_HEADERS = ("traceparent", "tracestate")

#: Methods a route may forward with C{pass_methods} (SPEC.md section 4).
PASS_METHODS = ("POST", "PUT", "PATCH", "DELETE")

#: Paths apicache answers itself; a route may not claim one, nor a path under
#: C{/tags/} (SPEC.md section 6).  The router keeps its own bytes copy.
RESERVED_PATHS = ("/", "/healthz", "/readyz", "/metrics", "/clear")

#: The JWS algorithms C{[auth] algorithms} may name: asymmetric ones only, so
#: that a public key set can't be used to forge a token (RFC 7518, RFC 8037,
#: RFC 9864).  The same set as the verifier's (apicache.auth.tokens), which
#: tests/test_config.py checks; config stays a leaf that imports neither.
ASYMMETRIC_ALGORITHMS = (
    "RS256", "RS384", "RS512",
    "PS256", "PS384", "PS512",
    "ES256", "ES384", "ES512", "ES256K",
    "EdDSA", "Ed25519", "Ed448",
)

#: Tags past these limits make an answer unstorable (SPEC.md section 3).
MAX_TAGS = 64
MAX_TAG_BYTES = 256

_LOG_LEVELS = ("debug", "info", "warn", "warning", "error", "critical")
# "\Z", not "$": "$" also matches before a trailing newline (full matching, issue 10)
_TENANT_HEADER_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+\Z")
_ROUTE_TYPE_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}\Z")
_RULE_PARAM_RE = re.compile(r"<([^<>]*)>")
_PARAM_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
_TEMPLATE_PARAM_RE = re.compile(r"\{([^{}]*)\}")
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass(frozen=True)
class ServerConfig:
    listen: str | None = None
    tenant_header: str = "org_id"
    api_keys: tuple[str, ...] = ()
    allow_anonymous: bool = False
    tenant_claim: str = ""
    max_tenants: int = 10000
    access_log: bool = True
    log_level: str = "info"
    shutdown_grace: float = 6.0
    admin_api_keys: tuple[str, ...] = ()
    #: 0: 80 % of the open-file limit, resolved at start-up
    max_connections: int = 0
    header_timeout: float = 10.0
    idle_timeout: float = 120.0
    max_body_bytes: int = 1048576
    #: (v3) a request body must arrive in full within this from the end of its headers
    body_timeout: float = 30.0
    #: (v3) bytes of answers queued for one connection before apicache stops reading it
    max_write_buffer: int = 1048576


@dataclass(frozen=True)
class AuthConfig:
    """
    (v3) Verified tenant identity: bearer tokens checked against a JSON Web
    Key Set.  Off while C{jwks} is empty.
    """

    #: a file path, or an https:// URL (http:// only on a loopback host)
    jwks: str = ""
    jwks_refresh: float = 300.0
    #: accepted C{iss} values; empty: any
    issuers: tuple[str, ...] = ()
    #: the token's C{aud} must hold one of them; empty: not checked
    audiences: tuple[str, ...] = ()
    algorithms: tuple[str, ...] = ("RS256", "ES256", "EdDSA")
    #: seconds of clock skew allowed on C{exp}, C{nbf} and C{iat}
    leeway: float = 30.0

    @property
    def enabled(self) -> bool:
        """
        Whether tokens are verified.
        """
        return bool(self.jwks)

    @property
    def jwks_is_url(self) -> bool:
        """
        Whether C{jwks} is fetched over HTTP(S) rather than read from a file.
        """
        return _has_scheme(self.jwks)


@dataclass(frozen=True)
class StoreConfig:
    backend: str = "memory"
    max_bytes: int = 268435456
    max_entry_fraction: float = 0.1
    #: hard cap on one tenant's bytes in the memory store and the in-process tier (0: none)
    tenant_max_bytes: int = 0
    #: (v3) "client": memory shared fairly among clients, then their tenants; "tenant": among tenants
    fair_share: str = "client"
    #: (v3) "single" | "cluster" | "sentinel"
    redis_mode: str = "single"
    #: (v3) cluster and sentinel: several comma-separated hosts, the seeds or the sentinels
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: (v3) the master's name, sentinel mode
    redis_sentinel_master: str = "mymaster"
    redis_timeout: float = 0.5
    local_max_bytes: int = 33554432
    key_prefix: str = "apicache"
    #: an answer whose stored form is bigger than this is not written to Redis
    redis_max_value_bytes: int = 1048576
    #: how long one instance's fetch holds off other instances' (0: no cross-instance coalescing)
    redis_lock_ttl: float = 1.0

    @property
    def redis_hosts(self) -> tuple[tuple[str, int], ...]:
        """
        The C{(host, port)} pairs C{redis_url} names: one in single mode, the
        cluster's seed nodes or the sentinels otherwise (default port 6379,
        26379 for sentinels); C{()} for a C{unix://} URL.
        """
        return _redis_hosts(self.redis_url, self.redis_mode)


@dataclass(frozen=True)
class UpstreamConfig:
    base_url: str = "http://127.0.0.1:9000/ext_service/services/api/v1"
    timeout: float = 10.0
    max_body_bytes: int = 10485760
    #: (v3) largest header block of an upstream answer
    max_header_bytes: int = 65536
    max_connections: int = 64
    max_in_flight: int = 256
    #: (v3) default 64, a quarter of max_in_flight; 0: no per-tenant limit
    tenant_max_in_flight: int = 64
    #: the forwarded headers, the tracing headers always among them
    forward_headers: tuple[str, ...] = (
        "authorization",
        "accept",
        "accept-language",
        "x-correlationid",
        *TRACING_HEADERS,
    )
    unkeyed_headers: tuple[str, ...] = UNKEYED_FORWARD
    #: added to every upstream request; never logged
    set_headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    hide_headers: tuple[str, ...] = ()
    tags_header: str = ""
    #: (v3) RFC 9213 targeted fields obeyed with freshness = "upstream", first match wins
    targeted_cache_control: tuple[str, ...] = ("cdn-cache-control",)

    @property
    def keyed_headers(self) -> tuple[str, ...]:
        """
        The forwarded headers whose values are part of the cache key.
        """
        return tuple(
            h for h in self.forward_headers if h not in self.unkeyed_headers and h not in TRACING_HEADERS
        )


@dataclass(frozen=True)
class RouteConfig:
    type: str
    path: str
    upstream: str
    ttl: float = 300.0
    stale_if_error: float = 0.0
    freshness: str = "route"
    max_ttl: float = 86400.0
    stale_while_revalidate: float = 0.0
    keep: float = 3600.0
    #: seconds a 404/410 is stored (0: not stored); (v3) with freshness =
    #: "upstream", the lifetime of a 404/410 that gives no freshness of its own
    negative_ttl: float = 0.0
    #: (v3) share of (Date - Last-Modified) an answer without explicit
    #: freshness is fresh for, with freshness = "upstream" (0: ttl instead)
    heuristic: float = 0.1
    #: (v3) stored variants of one key told apart by the upstream's Vary
    max_variants: int = 16
    #: tag templates over the path parameters, e.g. C{object:{id}}
    tags: tuple[str, ...] = ()
    #: methods forwarded to the upstream (SPEC.md section 4)
    pass_methods: tuple[str, ...] = ()
    max_staleness: float = 0.0
    #: path parameter names, in the order they appear in C{path}
    params: tuple[str, ...] = ()
    #: changes whenever the upstream URL template or C{set_headers} change
    fingerprint: str = ""


@dataclass(frozen=True)
class KafkaConfig:
    bootstrap_servers: str = ""
    topics: tuple[str, ...] = ()
    group_id: str = "apicache"
    mode: str = "broadcast"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password: str = field(default="", repr=False)
    ssl_ca_location: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)
    max_clock_skew: float = 1.0

    @property
    def enabled(self) -> bool:
        """
        Whether an event listener should run.
        """
        return bool(self.bootstrap_servers)


@dataclass(frozen=True)
class EventRule:
    types: tuple[str, ...]
    route: str
    type_field: str = "type"
    #: path parameter name -> message field holding its value
    fields: Mapping[str, str] = field(default_factory=dict)
    tenant_field: str = ""
    action: str = "invalidate"
    #: tag templates over message fields, e.g. C{object:{objectid}}
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    source: str = "<built-in defaults>"
    server: ServerConfig = field(default_factory=ServerConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    routes: tuple[RouteConfig, ...] = ()
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    events: tuple[EventRule, ...] = ()
    #: things worth one warning line at start-up (the file is still used)
    warnings: tuple[str, ...] = ()

    def route(self, route_type: str) -> RouteConfig:
        """
        Return the route of that type; raise C{KeyError} if there is none.
        """
        for r in self.routes:
            if r.type == route_type:
                return r
        raise KeyError(route_type)


# --- value checkers -------------------------------------------------------

Checker = Callable[[str, Any], Any]


class _Invalid(Exception):
    """A value is wrong: the message says what was expected."""


def _str(key: str, v: Any) -> str:
    if not isinstance(v, str):
        raise _Invalid(f"expected a string, got {_typename(v)}")
    return v


def _bool(key: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise _Invalid(f"expected true or false, got {_typename(v)}")
    return v


def _int(key: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise _Invalid(f"expected an integer, got {_typename(v)}")
    return v


def _number(key: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise _Invalid(f"expected a number of seconds, got {_typename(v)}")
    if v != v or v in (float("inf"), float("-inf")):
        raise _Invalid("expected a finite number")
    return float(v)


def _str_list(key: str, v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise _Invalid(f"expected a list of strings, got {_typename(v)}")
    return tuple(v)


def _str_map(key: str, v: Any) -> dict[str, str]:
    if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
        raise _Invalid(f"expected a table of strings, got {_typename(v)}")
    return dict(v)


def _scalar_map(key: str, v: Any) -> dict[str, Any]:
    if not isinstance(v, dict) or not all(
        isinstance(x, (str, int, float, bool)) for x in v.values()
    ):
        raise _Invalid("expected a table of strings, numbers or booleans")
    return dict(v)


def _typename(v: Any) -> str:
    return {
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a float",
        list: "a list",
        dict: "a table",
    }.get(type(v), type(v).__name__)


def _positive(check: Checker) -> Checker:
    def positive(key: str, v: Any) -> Any:
        v = check(key, v)
        if v <= 0:
            raise _Invalid(f"expected a value greater than 0, got {v}")
        return v

    return positive


def _non_negative(check: Checker) -> Checker:
    def non_negative(key: str, v: Any) -> Any:
        v = check(key, v)
        if v < 0:
            raise _Invalid(f"expected a value of 0 or more, got {v}")
        return v

    return non_negative


def _one_of(*choices: str) -> Checker:
    def one_of(key: str, v: Any) -> str:
        v = _str(key, v)
        if v not in choices:
            raise _Invalid(f"expected one of {', '.join(repr(c) for c in choices)}, got {v!r}")
        return v

    return one_of


# --- the schema -----------------------------------------------------------

_SERVER: dict[str, Checker] = {
    "listen": _str,
    "tenant_header": _str,
    "api_keys": _str_list,
    "allow_anonymous": _bool,
    "tenant_claim": _str,
    "max_tenants": _positive(_int),
    "access_log": _bool,
    "log_level": _one_of(*_LOG_LEVELS),
    "shutdown_grace": _non_negative(_number),
    "admin_api_keys": _str_list,
    "max_connections": _non_negative(_int),
    "header_timeout": _positive(_number),
    "idle_timeout": _positive(_number),
    "max_body_bytes": _positive(_int),
    "body_timeout": _positive(_number),
    "max_write_buffer": _positive(_int),
}
_AUTH: dict[str, Checker] = {
    "jwks": _str,
    "jwks_refresh": _positive(_number),
    "issuers": _str_list,
    "audiences": _str_list,
    "algorithms": _str_list,
    "leeway": _non_negative(_number),
}
_STORE: dict[str, Checker] = {
    "backend": _one_of("memory", "redis"),
    "max_bytes": _positive(_int),
    "max_entry_fraction": _positive(_number),
    "tenant_max_bytes": _non_negative(_int),
    "fair_share": _one_of("client", "tenant"),
    "redis_mode": _one_of("single", "cluster", "sentinel"),
    "redis_url": _str,
    "redis_sentinel_master": _str,
    "redis_timeout": _positive(_number),
    "local_max_bytes": _non_negative(_int),
    "key_prefix": _str,
    "redis_max_value_bytes": _positive(_int),
    "redis_lock_ttl": _non_negative(_number),
}
_UPSTREAM: dict[str, Checker] = {
    "base_url": _str,
    "timeout": _positive(_number),
    "max_body_bytes": _positive(_int),
    "max_header_bytes": _positive(_int),
    "max_connections": _positive(_int),
    "max_in_flight": _positive(_int),
    "tenant_max_in_flight": _non_negative(_int),
    "forward_headers": _str_list,
    "unkeyed_headers": _str_list,
    "set_headers": _str_map,
    "hide_headers": _str_list,
    "tags_header": _str,
    "targeted_cache_control": _str_list,
}
_ROUTE: dict[str, Checker] = {
    "type": _str,
    "path": _str,
    "upstream": _str,
    # 0 only with freshness = "upstream": checked in _route
    "ttl": _non_negative(_number),
    "stale_if_error": _non_negative(_number),
    "freshness": _one_of("route", "upstream"),
    "max_ttl": _positive(_number),
    "stale_while_revalidate": _non_negative(_number),
    "keep": _non_negative(_number),
    "negative_ttl": _non_negative(_number),
    "heuristic": _non_negative(_number),
    "max_variants": _positive(_int),
    "tags": _str_list,
    "pass_methods": _str_list,
    "max_staleness": _non_negative(_number),
}
_KAFKA: dict[str, Checker] = {
    "bootstrap_servers": _str,
    "topics": _str_list,
    "group_id": _str,
    "mode": _one_of("broadcast", "group"),
    "security_protocol": _one_of("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"),
    "sasl_mechanism": _one_of("", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"),
    "sasl_username": _str,
    "sasl_password": _str,
    "ssl_ca_location": _str,
    "extra": _scalar_map,
    "max_clock_skew": _non_negative(_number),
}
_EVENT: dict[str, Checker] = {
    "types": _str_list,
    "type_field": _str,
    "route": _str,
    "id_field": _str,
    "fields": _str_map,
    "tenant_field": _str,
    "action": _one_of("invalidate", "refresh"),
    "tags": _str_list,
}
#: Every table of the file and the keys it may hold (C{routes} and C{events}
#: are arrays of tables); tests/test_docs.py holds docs/configuration.md to it.
SCHEMA: Mapping[str, Mapping[str, Checker]] = {
    "server": _SERVER,
    "auth": _AUTH,
    "store": _STORE,
    "upstream": _UPSTREAM,
    "routes": _ROUTE,
    "kafka": _KAFKA,
    "events": _EVENT,
}
_TOP = set(SCHEMA)


class _Reader:
    """
    Walks the parsed TOML, substituting the environment and checking values,
    raising L{ConfigError} with the dotted key of the first problem.
    """

    def __init__(self, source: str, environ: Mapping[str, str]) -> None:
        self.source = source
        self.environ = environ

    def fail(self, key: str, message: str) -> ConfigError:
        return ConfigError(self.source, key, message)

    def substitute(self, key: str, value: Any) -> Any:
        if isinstance(value, str):

            def replace(m: re.Match[str]) -> str:
                name, default = m.group(1), m.group(2)
                found = self.environ.get(name)
                if found is not None and (found != "" or default is None):
                    return found
                if default is not None:
                    return default
                raise self.fail(key, f"environment variable {name} is not set (write ${{{name}:-default}} to allow that)")

            return _ENV_RE.sub(replace, value)
        if isinstance(value, list):
            return [self.substitute(f"{key}[{i}]", v) for i, v in enumerate(value)]
        if isinstance(value, dict):
            return {k: self.substitute(f"{key}.{k}", v) for k, v in value.items()}
        return value

    def table(self, key: str, value: Any, schema: Mapping[str, Checker]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a table, got {_typename(value)}")
        out: dict[str, Any] = {}
        for name, raw in value.items():
            dotted = f"{key}.{name}"
            check = schema.get(name)
            if check is None:
                raise self.fail(dotted, f"unknown key (expected one of: {', '.join(schema)})")
            try:
                out[name] = check(dotted, self.substitute(dotted, raw))
            except _Invalid as e:
                raise self.fail(dotted, str(e)) from None
        return out


def _fingerprint(base_url: str, template: str, set_headers: Mapping[str, str]) -> str:
    # set_headers change what the upstream answers: a new value never
    # serves entries fetched with the old one (the values are hashed, never kept)
    fixed = "\n".join(f"{k}: {v}" for k, v in sorted(set_headers.items()))
    return hashlib.sha256(f"{base_url}\n{template}\n{fixed}".encode()).hexdigest()[:12]


def _header_name(r: _Reader, key: str, value: str) -> str:
    name = value.strip().lower()
    if not _TENANT_HEADER_RE.match(name):
        raise r.fail(key, f"expected an HTTP header name, got {value!r}")
    return name


def _settable(name: str, tenant_header: str) -> bool:
    """
    Return whether apicache lets configuration put C{name} on an upstream
    request: not hop-by-hop or framing, not its own, not a conditional.
    """
    return not (
        name in FORBIDDEN_FORWARD or name.startswith("proxy-") or name.startswith("if-") or name == tenant_header
    )


_LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _has_scheme(value: str) -> bool:
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", value) is not None


def _auth(r: _Reader, values: dict[str, Any]) -> AuthConfig:
    """
    Check the C{[auth]} table: where the key set comes from, and algorithms
    that a public key set can't be turned against (no C{none}, no HMAC).
    """
    jwks = values.get("jwks", "")
    if _has_scheme(jwks):
        try:
            u = urlsplit(jwks)
            _ = u.port
        except ValueError:
            raise r.fail("auth.jwks", "expected an https:// URL with a valid host and port, or a file path") from None
        if u.scheme not in ("https", "http") or not u.hostname:
            raise r.fail("auth.jwks", "expected an https:// URL or a file path")
        if u.scheme == "http" and not _is_loopback(u.hostname):
            # a key set read in clear from another host lets anyone on the path mint tokens
            raise r.fail("auth.jwks", "expected https:// (http:// is only allowed on a loopback host)")
    algorithms: list[str] = []
    for i, alg in enumerate(values.get("algorithms", AuthConfig.algorithms)):
        key = f"auth.algorithms[{i}]"
        if alg.lower() == "none" or alg.upper().startswith("HS"):
            raise r.fail(key, f"{alg!r} is not allowed: expected an asymmetric algorithm (RS*, PS*, ES*, EdDSA)")
        if alg not in ASYMMETRIC_ALGORITHMS:
            raise r.fail(key, f"expected one of {', '.join(ASYMMETRIC_ALGORITHMS)}, got {alg!r}")
        if alg not in algorithms:
            algorithms.append(alg)
    if not algorithms:
        raise r.fail("auth.algorithms", "expected at least one algorithm")
    values["algorithms"] = tuple(algorithms)
    for name in ("issuers", "audiences"):
        for i, v in enumerate(values.get(name, ())):
            if not v:
                raise r.fail(f"auth.{name}[{i}]", "expected a non-empty string")
    return AuthConfig(**values)


class _BadRedisURL(ValueError):
    """C{store.redis_url} is wrong; the message never holds the URL (it may hold a password)."""


def _redis_hosts(url: str, mode: str) -> tuple[tuple[str, int], ...]:
    """
    Return the C{(host, port)} pairs of a C{redis://} or C{rediss://} URL
    (C{()} for C{unix://}); several comma-separated hosts only in cluster
    and sentinel modes.

    @raise _BadRedisURL: naming what is wrong, never quoting the URL.
    """
    u = urlsplit(url)
    if u.scheme == "unix":
        if mode != "single":
            raise _BadRedisURL(f"expected redis:// or rediss:// with redis_mode = {mode!r}")
        return ()
    if u.scheme not in ("redis", "rediss"):
        raise _BadRedisURL("expected a redis://, rediss:// or unix:// URL")
    default_port = 26379 if mode == "sentinel" else 6379
    hosts: list[tuple[str, int]] = []
    netloc = u.netloc.rpartition("@")[2]
    for part in netloc.split(","):
        part = part.strip()
        if part.startswith("["):
            host, _, rest = part[1:].partition("]")
            port_text = rest[1:] if rest.startswith(":") else rest
        elif part.count(":") == 1:
            host, _, port_text = part.partition(":")
        else:
            host, port_text = part, ""
        if port_text and not (port_text.isdigit() and 0 < int(port_text) < 65536):
            raise _BadRedisURL("expected a port number from 1 to 65535")
        if not host and (mode != "single" or "," in netloc):
            raise _BadRedisURL("expected a host name before each port")
        hosts.append((host or "127.0.0.1", int(port_text) if port_text else default_port))
    if len(hosts) > 1 and mode == "single":
        raise _BadRedisURL('several hosts need redis_mode = "cluster" or "sentinel"')
    db = u.path.strip("/")
    if db and not db.isdigit():
        raise _BadRedisURL("expected a database number after the host")
    if mode == "cluster" and db and int(db) != 0:
        raise _BadRedisURL("a Redis Cluster has database 0 only")
    return tuple(hosts)


def _check_redis_url(r: _Reader, store: StoreConfig) -> None:
    try:
        _redis_hosts(store.redis_url, store.redis_mode)
    except _BadRedisURL as e:
        raise r.fail("store.redis_url", str(e)) from None


def _template_skeleton(template: str) -> str:
    return _TEMPLATE_PARAM_RE.sub("{}", template)


#: Called with a section's name and the values the file gives it (after
#: C{${NAME}} substitution, empty api keys dropped); may add what the file
#: leaves out, before the values are checked (Cloud Foundry bindings).
SectionFiller = Callable[[str, dict[str, Any]], None]


def _no_fill(section: str, values: dict[str, Any]) -> None:
    pass


def parse_config(
    data: Mapping[str, Any],
    source: str,
    environ: Mapping[str, str],
    fill: SectionFiller = _no_fill,
) -> Config:
    """
    Build a validated L{Config} from parsed TOML; C{fill} may supply
    values the file leaves out (see L{SectionFiller}).

    @raise ConfigError: naming the first key that is wrong.
    """
    r = _Reader(source, environ)
    for name in data:
        if name not in _TOP:
            raise r.fail(name, f"unknown section (expected one of: {', '.join(sorted(_TOP))})")

    server = r.table("server", data.get("server", {}), _SERVER)
    server["api_keys"] = tuple(k for k in server.get("api_keys", ()) if k)
    server["admin_api_keys"] = tuple(k for k in server.get("admin_api_keys", ()) if k)
    fill("server", server)
    if "listen" in server and not server["listen"]:
        server["listen"] = None
    th = server.get("tenant_header", ServerConfig.tenant_header).lower()
    if not _TENANT_HEADER_RE.match(th):
        raise r.fail("server.tenant_header", "expected an HTTP header name")
    server["tenant_header"] = th
    if th in FORBIDDEN_FORWARD:
        raise r.fail("server.tenant_header", f"{th!r} can't be the tenant header")
    if server.get("log_level") == "warning":
        server["log_level"] = "warn"
    server_cfg = ServerConfig(**server)

    auth_cfg = _auth(r, r.table("auth", data.get("auth", {}), _AUTH))

    store = r.table("store", data.get("store", {}), _STORE)
    fill("store", store)
    store_cfg = StoreConfig(**store)
    if store_cfg.max_entry_fraction > 1:
        raise r.fail("store.max_entry_fraction", "expected a share between 0 and 1")
    _check_redis_url(r, store_cfg)
    if store_cfg.redis_mode == "sentinel" and not store_cfg.redis_sentinel_master:
        raise r.fail("store.redis_sentinel_master", "expected the master's name (redis_mode = \"sentinel\")")
    if not re.match(r"^[A-Za-z0-9._:-]+\Z", store_cfg.key_prefix):
        raise r.fail("store.key_prefix", "expected a non-empty string of [A-Za-z0-9._:-]")

    warnings: list[str] = []
    upstream = r.table("upstream", data.get("upstream", {}), _UPSTREAM)
    forward: list[str] = []
    for i, h in enumerate(upstream.get("forward_headers", UpstreamConfig.forward_headers)):
        key = f"upstream.forward_headers[{i}]"
        h = _header_name(r, key, h)
        if not _settable(h, th):
            raise r.fail(key, f"header {h!r} can't be forwarded (apicache sets it itself)")
        if h == "accept-encoding":
            warnings.append(
                f"{source}: upstream.forward_headers: accept-encoding is dropped: apicache normalises it itself"
            )
            continue
        if h not in forward:
            forward.append(h)
    configured = tuple(forward)
    forward.extend(h for h in TRACING_HEADERS if h not in forward)
    upstream["forward_headers"] = tuple(forward)
    if "unkeyed_headers" in upstream:
        unkeyed: list[str] = []
        for i, h in enumerate(upstream["unkeyed_headers"]):
            key = f"upstream.unkeyed_headers[{i}]"
            h = _header_name(r, key, h)
            if h not in configured and h not in TRACING_HEADERS:
                raise r.fail(key, f"header {h!r} is not in upstream.forward_headers")
            unkeyed.append(h)
        upstream["unkeyed_headers"] = tuple(unkeyed)
    set_headers: dict[str, str] = {}
    for name, value in upstream.get("set_headers", {}).items():
        key = f"upstream.set_headers.{name}"
        h = _header_name(r, key, name)
        if not _settable(h, th) or h == "accept-encoding":
            raise r.fail(key, f"header {h!r} can't be set (apicache sets it itself)")
        if any(c in value for c in "\r\n\0"):
            # the value is never quoted: it may be a secret
            raise r.fail(key, "expected a value without CR, LF or NUL")
        set_headers[h] = value
    upstream["set_headers"] = set_headers
    upstream["hide_headers"] = tuple(
        _header_name(r, f"upstream.hide_headers[{i}]", h) for i, h in enumerate(upstream.get("hide_headers", ()))
    )
    if upstream.get("tags_header"):
        upstream["tags_header"] = _header_name(r, "upstream.tags_header", upstream["tags_header"])
    if "targeted_cache_control" in upstream:
        targeted: list[str] = []
        for i, h in enumerate(upstream["targeted_cache_control"]):
            h = _header_name(r, f"upstream.targeted_cache_control[{i}]", h)
            if h not in targeted:
                targeted.append(h)
        upstream["targeted_cache_control"] = tuple(targeted)
    upstream_cfg = UpstreamConfig(**upstream)
    base = urlsplit(upstream_cfg.base_url)
    if base.scheme not in ("http", "https") or not base.hostname:
        raise r.fail("upstream.base_url", "expected an http:// or https:// URL with a host")
    if not upstream_cfg.base_url.isascii():
        raise r.fail("upstream.base_url", "expected an ASCII URL (IDNA host, percent-encoded path)")
    try:
        port = base.port
    except ValueError:
        port = 0
    if port is not None and not 0 < port < 65536:
        raise r.fail("upstream.base_url", "expected a port number from 1 to 65535")
    if base.query or base.fragment:
        raise r.fail("upstream.base_url", "expected a URL without query or fragment")

    raw_routes = data.get("routes", [])
    if not isinstance(raw_routes, list):
        raise r.fail("routes", "expected an array of tables ([[routes]])")
    routes: list[RouteConfig] = []
    for i, raw in enumerate(raw_routes):
        routes.append(_route(r, f"routes[{i}]", raw, upstream_cfg, routes))
    if routes and "base_url" not in upstream:
        raise r.fail("upstream.base_url", "required once a route exists")

    kafka = r.table("kafka", data.get("kafka", {}), _KAFKA)
    fill("kafka", kafka)
    kafka_cfg = KafkaConfig(**kafka)
    if kafka_cfg.enabled and not kafka_cfg.topics:
        raise r.fail("kafka.topics", "expected at least one topic when bootstrap_servers is set")
    if kafka_cfg.enabled and not kafka_cfg.group_id:
        raise r.fail("kafka.group_id", "expected a non-empty group id")

    raw_events = data.get("events", [])
    if not isinstance(raw_events, list):
        raise r.fail("events", "expected an array of tables ([[events]])")
    events = tuple(
        _event(r, f"events[{i}]", raw, {rt.type: rt for rt in routes})
        for i, raw in enumerate(raw_events)
    )
    for i, rt in enumerate(routes):
        if rt.max_staleness <= 0:
            continue
        key = f"routes[{i}].max_staleness"
        if not kafka_cfg.enabled:
            raise r.fail(key, "needs events: kafka.bootstrap_servers is not set")
        if not any(_targets(rule, rt, upstream_cfg) for rule in events):
            raise r.fail(key, f"no [[events]] entry targets route {rt.type!r} (by route or by tags)")

    if source != Config.source and not server_cfg.api_keys and not server_cfg.allow_anonymous:
        raise r.fail(
            "server.api_keys",
            "expected at least one api key (or server.allow_anonymous = true)",
        )

    return Config(
        source=source,
        server=server_cfg,
        auth=auth_cfg,
        store=store_cfg,
        upstream=upstream_cfg,
        routes=tuple(routes),
        kafka=kafka_cfg,
        events=events,
        warnings=tuple(warnings),
    )


def _targets(rule: EventRule, route: RouteConfig, upstream: UpstreamConfig) -> bool:
    """
    Return whether events of C{rule} can reach entries of C{route}: by
    route, or by tags (a tag template of the same shape as one of the
    route's, or any tag while answers carry tags of their own).
    """
    if rule.route == route.type:
        return True
    if not rule.tags:
        return False
    if upstream.tags_header:
        return True
    shapes = {_template_skeleton(t) for t in route.tags}
    return any(_template_skeleton(t) in shapes for t in rule.tags)


def _route(
    r: _Reader, key: str, raw: Any, upstream: UpstreamConfig, earlier: list[RouteConfig]
) -> RouteConfig:
    values = r.table(key, raw, _ROUTE)
    for required in ("type", "path", "upstream"):
        if not values.get(required):
            raise r.fail(f"{key}.{required}", "required")
    rtype, path, template = values["type"], values["path"], values["upstream"]
    if not _ROUTE_TYPE_RE.match(rtype):
        raise r.fail(f"{key}.type", "expected 1-64 characters of [A-Za-z0-9._-]")
    if any(e.type == rtype for e in earlier):
        raise r.fail(f"{key}.type", f"duplicate route type {rtype!r}")
    if not path.startswith("/") or "?" in path or "#" in path:
        raise r.fail(f"{key}.path", "expected a path starting with '/' (no query)")
    if path.rstrip("/") in ("", *RESERVED_PATHS) or path.rstrip("/") == "/tags" or path.startswith("/tags/"):
        # werkzeug's strict slashes make "/healthz/" answer "/healthz" too
        raise r.fail(
            f"{key}.path",
            f"route {rtype!r} has the reserved path {path!r} "
            f"(apicache answers {', '.join(RESERVED_PATHS)} and every path under /tags/ itself)",
        )
    freshness = values.get("freshness", RouteConfig.freshness)
    if values.get("ttl", RouteConfig.ttl) == 0 and freshness != "upstream":
        raise r.fail(f"{key}.ttl", 'expected a value greater than 0 (0 only with freshness = "upstream")')
    params: list[str] = []
    for m in _RULE_PARAM_RE.finditer(path):
        name = m.group(1)
        if ":" in name:
            converter, name = name.split(":", 1)
            if converter not in ("string", "int"):
                raise r.fail(
                    f"{key}.path",
                    f"converter {converter!r} is not allowed (parameters can't span '/')",
                )
        if not _PARAM_NAME_RE.match(name):
            raise r.fail(f"{key}.path", f"bad parameter name {name!r}")
        if name in params:
            raise r.fail(f"{key}.path", f"parameter {name!r} appears twice")
        params.append(name)
    if not template.startswith("/") or "?" in template or "#" in template:
        raise r.fail(f"{key}.upstream", "expected a path template starting with '/' (no query)")
    if ".." in template.split("/"):
        raise r.fail(f"{key}.upstream", "'..' segments are not allowed")
    for m in _TEMPLATE_PARAM_RE.finditer(template):
        if m.group(1) not in params:
            raise r.fail(
                f"{key}.upstream",
                f"template names parameter {m.group(1)!r} that the path {path!r} lacks",
            )
    if "{" in _TEMPLATE_PARAM_RE.sub("", template) or "}" in _TEMPLATE_PARAM_RE.sub("", template):
        raise r.fail(f"{key}.upstream", "unbalanced '{' or '}' in template")
    tags = values.get("tags", ())
    for j, tag in enumerate(tags):
        _check_tag_template(r, f"{key}.tags[{j}]", tag, params, "path parameter")
    methods: list[str] = []
    for j, m in enumerate(values.get("pass_methods", ())):
        m = m.upper()
        if m not in PASS_METHODS:
            raise r.fail(f"{key}.pass_methods[{j}]", f"expected one of {', '.join(PASS_METHODS)}, got {m!r}")
        if m not in methods:
            methods.append(m)
    return RouteConfig(
        type=rtype,
        path=path,
        upstream=template,
        ttl=values.get("ttl", RouteConfig.ttl),
        stale_if_error=values.get("stale_if_error", RouteConfig.stale_if_error),
        freshness=freshness,
        max_ttl=values.get("max_ttl", RouteConfig.max_ttl),
        stale_while_revalidate=values.get("stale_while_revalidate", RouteConfig.stale_while_revalidate),
        keep=values.get("keep", RouteConfig.keep),
        negative_ttl=values.get("negative_ttl", RouteConfig.negative_ttl),
        heuristic=values.get("heuristic", RouteConfig.heuristic),
        max_variants=values.get("max_variants", RouteConfig.max_variants),
        tags=tuple(tags),
        pass_methods=tuple(methods),
        max_staleness=values.get("max_staleness", RouteConfig.max_staleness),
        params=tuple(params),
        fingerprint=_fingerprint(upstream.base_url, template, upstream.set_headers),
    )


def _check_tag_template(r: _Reader, key: str, template: str, names: Any, what: str) -> None:
    if not template or len(template.encode("utf-8")) > MAX_TAG_BYTES:
        raise r.fail(key, f"expected a tag template of 1 to {MAX_TAG_BYTES} bytes")
    if any(c.isspace() or c == "," for c in template):
        raise r.fail(key, "expected a tag without spaces or commas")
    for m in _TEMPLATE_PARAM_RE.finditer(template):
        if m.group(1) not in names:
            raise r.fail(key, f"template names {what} {m.group(1)!r}, which is not there")
    rest = _TEMPLATE_PARAM_RE.sub("", template)
    if "{" in rest or "}" in rest:
        raise r.fail(key, "unbalanced '{' or '}' in template")


def _event(r: _Reader, key: str, raw: Any, routes: Mapping[str, RouteConfig]) -> EventRule:
    values = r.table(key, raw, _EVENT)
    types = values.get("types", ())
    if not types or not all(types):
        raise r.fail(f"{key}.types", "expected a non-empty list of event types")
    tags = values.get("tags", ())
    for j, tag in enumerate(tags):
        # any message field may fill a tag: checked when a message arrives
        _check_tag_template(r, f"{key}.tags[{j}]", tag, _AnyName(), "field")
    route_type = values.get("route", "")
    route = routes.get(route_type)
    if route is None and tags and not route_type and "id_field" not in values and "fields" not in values:
        return EventRule(
            types=tuple(types),
            route="",
            type_field=values.get("type_field", EventRule.type_field) or "type",
            tenant_field=values.get("tenant_field", ""),
            action=values.get("action", "invalidate"),
            tags=tuple(tags),
        )
    if route is None:
        raise r.fail(f"{key}.route", f"expected the type of a configured route, got {route_type!r}")
    if "id_field" in values and "fields" in values:
        raise r.fail(f"{key}.fields", "give id_field or fields, not both")
    if "id_field" in values:
        if len(route.params) != 1:
            raise r.fail(
                f"{key}.id_field",
                f"route {route_type!r} has {len(route.params)} parameters: use fields = {{ name = \"field\" }}",
            )
        fields = {route.params[0]: values["id_field"]}
    else:
        fields = values.get("fields", {})
    for name in route.params:
        if not fields.get(name):
            raise r.fail(f"{key}.fields", f"no message field given for path parameter {name!r}")
    for name in fields:
        if name not in route.params:
            raise r.fail(f"{key}.fields", f"route {route_type!r} has no parameter {name!r}")
    type_field = values.get("type_field", EventRule.type_field)
    if not type_field:
        raise r.fail(f"{key}.type_field", "expected a field name")
    return EventRule(
        types=tuple(types),
        route=route_type,
        type_field=type_field,
        fields=dict(fields),
        tenant_field=values.get("tenant_field", ""),
        action=values.get("action", "invalidate"),
        tags=tuple(tags),
    )


class _AnyName:
    """Holds every name: tag templates of events may name any message field."""

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name != ""


def load_config(
    path: str | None, environ: Mapping[str, str], fill: SectionFiller = _no_fill
) -> Config:
    """
    Read and validate the TOML file at C{path}; C{None} gives the built-in
    defaults.  C{fill} is passed to L{parse_config}.

    @raise ConfigError: the file is unreadable, not TOML, or invalid.
    """
    if path is None:
        return parse_config({}, Config.source, environ, fill)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(path, "-", f"can't read the file: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, "-", f"not valid TOML: {e}") from None
    return parse_config(data, path, environ, fill)
