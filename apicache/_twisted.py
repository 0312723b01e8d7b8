"""
Every use of Twisted's private API, in one module.

Twisted publishes no way to do what each name below does.  Each says what it
relies on and why apicache needs it; C{tests/test_twisted_private.py} pins
every one of them, so that a Twisted release that changes one fails that
test rather than a request in production.  Everything else in apicache uses
Twisted's public API only.

 - L{raw_headers}: the live table behind a L{Headers} (C{_rawHeaders}), read
   on the hit path with names worked out once.
 - L{HTTPChannelInternals}: the parts of L{HTTPChannel}'s parser state the
   inbound channel reads (the request line's method and target, the size of
   the head read so far, a line cut short), the bytes it drops when it
   refuses a request, and the hook for the requests twisted.web refuses
   itself (C{_respondToBadRequestAndDisconnect}).
 - L{LeftoverAwareClientProtocol}: L{HTTP11ClientProtocol} (from the private
   module C{twisted.web._newclient}) told of the bytes that follow an
   answer's end (C{_finishResponse_WAITING} and C{_TRANSMITTING}), for the
   tenant-safe pool.
 - L{connection_field}: the C{Connection} field of an answer, which the
   parser of a request (C{HTTP11ClientProtocol._parser}) keeps apart from
   the answer's headers (in C{connHeaders}).
 - L{RequestNotSent}, also from C{twisted.web._newclient}: how an Agent's
   request that surely never reached the upstream fails.
 - L{adopt_fair_port}: a listening socket adopted as a TCP port that accepts
   one connection each time it is readable (C{tcp.Port.numberAccepts},
   C{tcp.Port._fromListeningDescriptor}).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import tcp
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IReactorSocket

# the protocol class of Agent's pools and the error of a request never
# sent: twisted.web.client imports both from here but lists neither among its
# public names
from twisted.web._newclient import HTTP11ClientProtocol, RequestNotSent
from twisted.web.http import HTTPChannel
from twisted.web.http_headers import Headers

__all__ = [
    "raw_headers",
    "HTTPChannelInternals",
    "LeftoverAwareClientProtocol",
    "RequestNotSent",
    "connection_field",
    "FairPort",
    "adopt_fair_port",
]


def raw_headers(headers: Headers) -> dict[bytes, list[bytes]]:
    """
    Return the live table of ``headers``: each name as twisted.web writes it
    (L{apicache.cache.wire.canonical_name}) to its list of values.

    Reading it costs a dictionary lookup, where C{getRawHeaders} encodes and
    canonicalises the name on every call: on the hit path, which reads
    several request headers per request, that was a measured share of a
    hit's time.  Changing the table (popping a name) changes ``headers``.
    """
    return headers._rawHeaders  # type: ignore[no-any-return]


class HTTPChannelInternals(HTTPChannel):
    """
    L{HTTPChannel} with the parser state a channel that enforces limits needs,
    under public names.
    """

    def request_line(self) -> tuple[bytes, bytes] | None:
        """
        Return the method and target (path and query) of the request whose
        head is being read, once its request line is parsed and until its
        body is read; else ``None``.
        """
        method = getattr(self, "_command", None)
        target = getattr(self, "_path", None)
        if isinstance(method, bytes) and isinstance(target, bytes):
            return method, target
        return None

    def head_too_large(self) -> bool:
        """
        Return whether the request head read so far is over
        C{totalHeadersSize} (twisted.web counts each line before refusing).
        """
        return self._receivedHeaderSize > self.totalHeadersSize  # type: ignore[no-any-return]

    def line_pending(self) -> bool:
        """
        Return whether bytes of a line that is not complete yet are held
        (a read ended without the line's CRLF).
        """
        return bool(self._buffer)

    def drop_unread(self) -> None:
        """
        Forget what was read but not parsed: a partial line, and the bytes
        buffered while a request was handled.
        """
        self._buffer = b""
        self._dataBuffer = []

    def bad_request(self) -> None:
        """
        Called when twisted.web refuses a request itself (an unparsable
        request line or header, a NUL in a header value, too many headers, a
        head over C{totalHeadersSize}).  By default twisted.web's own empty
        ``400`` is written and the connection closed; override to answer
        otherwise.
        """
        super()._respondToBadRequestAndDisconnect()

    def _respondToBadRequestAndDisconnect(self) -> None:
        self.bad_request()


class LeftoverAwareClientProtocol(HTTP11ClientProtocol):
    """
    L{HTTP11ClientProtocol} (the protocol of Agent's pools) that is told of
    the bytes that arrived after the end of an answer, in the same read.
    Twisted hands them to C{_finishResponse_WAITING} (or its
    C{TRANSMITTING} twin, when the answer ends before the request is
    written) as C{rest} and ignores them.
    """

    def leftover(self, rest: bytes) -> None:
        """
        Called with the bytes past an answer's end (possibly empty), before
        the connection is handed back to its pool.
        """

    def _finishResponse_WAITING(self, rest: bytes) -> None:
        self.leftover(rest)
        super()._finishResponse_WAITING(rest)

    def _finishResponse_TRANSMITTING(self, rest: bytes) -> None:
        self.leftover(rest)
        super()._finishResponse_TRANSMITTING(rest)


def connection_field(protocol: HTTP11ClientProtocol) -> Callable[[], tuple[bytes, ...]] | None:
    """
    Called right after C{protocol.request(...)}: return a function giving
    the values of that request's answer's C{Connection} field once its head
    is parsed (Twisted's parser keeps the field apart from the answer's
    headers, and the protocol drops the parser once the answer is read), or
    ``None`` when the request was not sent (no parser).
    """
    parser = getattr(protocol, "_parser", None)
    if parser is None:
        return None
    return lambda: tuple(parser.connHeaders.getRawHeaders(b"connection", ()))


class FairPort(tcp.Port):
    """
    A TCP port that accepts one connection each time the socket is
    readable.  Twisted's port accepts as many as are queued (up to 100,
    growing): with several workers on one socket, a burst of connections
    (a client pool opening 50 at once) would all go to whichever worker
    woke first.  One at a time, every woken worker takes its share.
    """

    @property  # type: ignore[override]
    def numberAccepts(self) -> int:
        return 1

    @numberAccepts.setter
    def numberAccepts(self, value: int) -> None:
        pass


def adopt_fair_port(reactor: IReactorSocket, fd: int, family: int, factory: IProtocolFactory) -> IListeningPort:
    """
    Return a L{FairPort} listening on the listening socket ``fd`` (which it
    duplicates: close ``fd`` afterwards), as C{reactor.adoptStreamPort}
    does for its own port class.
    """
    port: Any = FairPort._fromListeningDescriptor(reactor, fd, family, factory)
    port.startListening()
    return port  # type: ignore[no-any-return]
