"""
Where the Redis store connects: ``redis://``, ``rediss://`` (TLS) and
``unix://`` URLs, and the client endpoints they give.
"""

from __future__ import annotations

from urllib.parse import parse_qs, unquote, urlsplit

from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint, wrapClientTLS
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IReactorTCP, IStreamClientEndpoint
from twisted.internet.ssl import Certificate, CertificateOptions, optionsForClientTLS, platformTrust

__all__ = ["RedisAddress", "parse_redis_url", "CONNECT_TIMEOUT"]

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
