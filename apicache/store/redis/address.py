"""
Where the Redis store connects: ``redis://``, ``rediss://`` (TLS) and
``unix://`` URLs, and the client endpoints they give.
"""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit

from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IReactorTCP, IStreamClientEndpoint
from twisted.internet.ssl import Certificate, CertificateOptions, optionsForClientTLS, platformTrust

__all__ = ["RedisAddress", "RedisSeeds", "parse_redis_url", "parse_redis_seeds", "CONNECT_TIMEOUT"]

#: Seconds a TCP (or unix socket) connection attempt may take.
CONNECT_TIMEOUT = 5


class RedisAddress:
    """
    Where and how to connect, from a ``redis://``, ``rediss://`` or
    ``unix://`` URL.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 6379,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        tls: bool = False,
        ca_certs: str | None = None,
        verify: bool = True,
        unix_path: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.db = db
        self.username = username
        self.password = password
        self.tls = tls
        self.ca_certs = ca_certs
        self.verify = verify
        self.unix_path = unix_path

    def endpoint(self, reactor: IReactorTCP) -> IStreamClientEndpoint:
        """
        Return a client endpoint for this address (TLS-wrapped for ``rediss``).

        @param reactor: connects: an L{IReactorTCP} that is also an
            L{IReactorTime} (for L{HostnameEndpoint}'s attempt delays) and,
            for ``unix://``, an L{IReactorUNIX}; every real reactor is all three.
        """
        if self.unix_path is not None:
            return UNIXClientEndpoint(reactor, self.unix_path, timeout=CONNECT_TIMEOUT)
        ep: IStreamClientEndpoint = HostnameEndpoint(reactor, self.host, self.port, timeout=CONNECT_TIMEOUT)
        if self.tls:
            ep = wrapClientTLS(self._tls_options(), ep)
        return ep

    def _tls_options(self) -> IOpenSSLClientConnectionCreator:
        if not self.verify:
            options: IOpenSSLClientConnectionCreator = CertificateOptions(verify=False)
            return options
        if self.ca_certs:
            with open(self.ca_certs, "rb") as f:
                return optionsForClientTLS(self.host, trustRoot=Certificate.loadPEM(f.read()))
        return optionsForClientTLS(self.host, trustRoot=platformTrust())

    def __repr__(self) -> str:
        # never the password
        where = self.unix_path or f"{self.host}:{self.port}"
        return f"<Redis {'rediss' if self.tls else 'redis'} {where}/{self.db}>"


def parse_redis_url(url: str) -> RedisAddress:
    """
    Return the L{RedisAddress} of ``url``: ``redis://[[user]:password@]host[:port][/db]``,
    ``rediss://`` likewise over TLS (query ``ssl_ca_certs=PATH`` for a private
    CA, ``ssl_cert_reqs=none`` to skip verification), or
    ``unix:///path?db=N``.

    @raise ValueError: another scheme or a bad database number.
    """
    u = urlsplit(url)
    query = parse_qs(u.query)
    if u.scheme == "unix":
        return RedisAddress(
            unix_path=unquote(u.path),
            db=int(query.get("db", ["0"])[0]),
            username=unquote(u.username) if u.username else None,
            password=unquote(u.password) if u.password else None,
        )
    if u.scheme not in ("redis", "rediss"):
        # the scheme, never the URL: it may hold a password
        raise ValueError(f"not a redis URL scheme: {u.scheme!r}")
    path = u.path.strip("/")
    return RedisAddress(
        host=u.hostname or "127.0.0.1",
        port=u.port or 6379,
        db=int(path) if path else int(query.get("db", ["0"])[0]),
        username=unquote(u.username) if u.username else None,
        password=unquote(u.password) if u.password is not None else None,
        tls=u.scheme == "rediss",
        ca_certs=query.get("ssl_ca_certs", [None])[0],
        verify=query.get("ssl_cert_reqs", ["required"])[0].lower() not in ("none", "cert_none"),
    )


class RedisSeeds:
    """
    Where a cluster or sentinel store connects first: the seed nodes of a
    Redis Cluster, or the sentinels, and the credentials of the data nodes.

    @ivar hosts: C{(host, port)} pairs.
    @ivar sentinel_password: the sentinels' own password, when they have one
        (query C{sentinel_password=}); the URL's password is the data nodes'.
    """

    def __init__(
        self,
        hosts: list[tuple[str, int]],
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        tls: bool = False,
        ca_certs: str | None = None,
        verify: bool = True,
        sentinel_password: str | None = None,
    ) -> None:
        self.hosts = hosts
        self.db = db
        self.username = username
        self.password = password
        self.tls = tls
        self.ca_certs = ca_certs
        self.verify = verify
        self.sentinel_password = sentinel_password

    def __repr__(self) -> str:
        # never a password
        where = ",".join(f"{h}:{p}" for h, p in self.hosts)
        return f"<Redis seeds {'rediss' if self.tls else 'redis'} {where}/{self.db}>"


def parse_redis_seeds(url: str, default_port: int = 6379) -> RedisSeeds:
    """
    Return the L{RedisSeeds} of ``redis://[[user]:password@]h1[:p1],h2[:p2]...[/db]``
    (or ``rediss://``, with the query options of L{parse_redis_url}, and
    ``sentinel_password=``).

    @raise ValueError: another scheme, a bad port or database number; the
        message never holds the URL (it may hold a password).
    """
    u = urlsplit(url)
    if u.scheme not in ("redis", "rediss"):
        raise ValueError(f"not a redis URL scheme for several hosts: {u.scheme!r}")
    query = parse_qs(u.query)
    userinfo, _, netloc = u.netloc.rpartition("@")
    username, _, password = userinfo.partition(":")
    hosts: list[tuple[str, int]] = []
    for part in netloc.split(","):
        part = part.strip()
        if part.startswith("["):
            host, _, rest = part[1:].partition("]")
            port_text = rest[1:]
        elif part.count(":") == 1:
            host, _, port_text = part.partition(":")
        else:
            host, port_text = part, ""
        if port_text and not (port_text.isdigit() and 0 < int(port_text) < 65536):
            raise ValueError("expected a port number from 1 to 65535")
        hosts.append((host or "127.0.0.1", int(port_text) if port_text else default_port))
    path = u.path.strip("/")
    if path and not path.isdigit():
        raise ValueError("expected a database number after the hosts")
    sentinel_password = query.get("sentinel_password", [None])[0]
    return RedisSeeds(
        hosts,
        db=int(path) if path else 0,
        username=unquote(username) if username else None,
        password=unquote(password) if userinfo and ":" in userinfo else None,
        tls=u.scheme == "rediss",
        ca_certs=query.get("ssl_ca_certs", [None])[0],
        verify=query.get("ssl_cert_reqs", ["required"])[0].lower() not in ("none", "cert_none"),
        sentinel_password=sentinel_password,
    )
