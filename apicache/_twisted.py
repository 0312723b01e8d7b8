"""
Every use of Twisted's private API, in one module.

Twisted publishes no way to do what each name below does.  Each says what it
relies on and why apicache needs it; C{tests/test_twisted_private.py} pins
every one of them, so that a Twisted release that changes one fails that
test rather than a request in production.  Everything else in apicache uses
Twisted's public API only.

 - L{raw_headers}: the live table behind a L{Headers} (C{_rawHeaders}), read
   on the hit path with names worked out once.
 - L{headers_over}: a L{Headers} over a table built as twisted.web builds
   it (the fast hit path's parser fills the table itself).
 - L{HTTPChannelInternals}: the parts of L{HTTPChannel}'s parser state the
   inbound channel reads (the request line's method and target, the size of
   the head read so far, a line cut short, whether it holds any part of a
   request), the bytes it drops when it refuses a request or takes to
   parse itself, and the hook for the requests twisted.web refuses itself
   (C{_respondToBadRequestAndDisconnect}).
 - L{send_now}: a TCP transport's write sent at once when nothing is
   queued before it (C{dataBuffer}, C{_tempDataLen}: the fast hit path).
 - L{bound_writes}: a TCP transport that pauses its producer past
   C{server.max_write_buffer} but still reads 64 KiB at a time
   (C{tcp.Connection.doRead} reads C{bufferSize} bytes, the same attribute
   that is the pause threshold; L{ReadSizedServer} reads L{READ_SIZE}).
 - L{LeftoverAwareClientProtocol}: L{HTTP11ClientProtocol} (from the private
   module C{twisted.web._newclient}) told of the bytes that follow an
   answer's end (C{_finishResponse_WAITING} and C{_TRANSMITTING}), for the
   tenant-safe pool.
 - L{connection_field}: the C{Connection} field of an answer, which the
   parser of a request (C{HTTP11ClientProtocol._parser}) keeps apart from
   the answer's headers (in C{connHeaders}).
 - L{bound_answer_parser}: the answer parser Twisted builds for a request
   (C{HTTP11ClientProtocol._parser}, an C{HTTPClientParser}) becomes one
   whose header block is bounded, whose C{Transfer-Encoding} is checked and
   whose status is 100-599 (L{BoundedAnswerParser}: its C{lineReceived},
   C{statusReceived} and C{allHeadersReceived} hooks, its C{state} and
   C{STATUS}/C{HEADER} states, C{connHeaders}).
 - L{RequestNotSent}, also from C{twisted.web._newclient}: how an Agent's
   request that surely never reached the upstream fails.
 - L{adopt_fair_port}: a listening socket adopted as a TCP port that accepts
   one connection each time it is readable (C{tcp.Port.numberAccepts},
   C{tcp.Port._fromListeningDescriptor}).
"""

from __future__ import annotations

from collections.abc import Callable
from errno import EWOULDBLOCK
from typing import Any

from twisted.internet import main, tcp
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IReactorSocket

# the protocol class of Agent's pools and the error of a request never
# sent: twisted.web.client imports both from here but lists neither among its
# public names
from twisted.web._newclient import HEADER, STATUS, HTTP11ClientProtocol, HTTPClientParser, ParseError, RequestNotSent
from twisted.web.http import HTTPChannel
from twisted.web.http_headers import Headers

__all__ = [
    "raw_headers",
    "headers_over",
    "send_now",
    "bound_writes",
    "ReadSizedServer",
    "READ_SIZE",
    "HTTPChannelInternals",
    "LeftoverAwareClientProtocol",
    "RequestNotSent",
    "connection_field",
    "HeaderBlockTooLarge",
    "UnknownTransferCoding",
    "BoundedAnswerParser",
    "bound_answer_parser",
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


def headers_over(table: dict[bytes, list[bytes]]) -> Headers:
    """
    Return a L{Headers} whose live table is ``table``: each name as
    twisted.web writes it (L{apicache.cache.wire.canonical_name}) to its
    values in order, as L{HTTPChannel} would have filled it, without
    encoding each name again through C{addRawHeader}.
    """
    headers = Headers()
    headers._rawHeaders = table
    return headers


def send_now(transport: Any, data: bytes) -> bool:
    """
    Send ``data`` on a plain TCP ``transport`` at once when it holds nothing
    unsent; otherwise, and for whatever the socket does not take, queue it
    as C{transport.write} does.

    A write of Twisted's TCP transport is sent on the reactor's next turn:
    the descriptor is added to the reactor's writers (an C{epoll_ctl}),
    woken, written and removed again (another C{epoll_ctl}).  For a small
    answer to a request just read, sending it now costs one C{send} and
    nothing else.  Only on L{tcp.Server} itself (never TLS, whose socket is
    not where answers go), and only when nothing is queued (C{dataBuffer},
    C{_tempDataLen}), so that the bytes on the wire keep their order; what
    is queued counts toward the transport's C{bufferSize} as any write.

    @return: whether all of ``data`` was sent now.
    """
    if type(transport) in _PLAIN_TCP and not transport.dataBuffer and not transport._tempDataLen and transport.connected:
        try:
            sent = transport.socket.send(data)
        except OSError:
            # full (EAGAIN) or failing: the transport's own write finds out
            sent = 0
        if sent == len(data):
            return True
        data = data[sent:]
    transport.write(data)
    return False


#: What a server transport's C{recv} asks for at most: Twisted's own
#: C{bufferSize}.  Python allocates the whole size asked for before each
#: C{recv} and shrinks it after: asking for 1 MiB cost 17 us a read here
#: (bench/recv_size.py), more than the rest of a cache hit.
READ_SIZE = 65536


class ReadSizedServer(tcp.Server):
    """
    A L{tcp.Server} whose reads ask for at most L{READ_SIZE} bytes,
    whatever its C{bufferSize} (the threshold past which it pauses its
    producer): L{tcp.Connection.doRead} with one size changed.
    """

    def doRead(self) -> Any:
        try:
            data = self.socket.recv(READ_SIZE)
        except OSError as se:
            if se.args[0] == EWOULDBLOCK:
                return None
            return main.CONNECTION_LOST
        return self._dataReceived(data)


_PLAIN_TCP = (tcp.Server, ReadSizedServer)


def bound_writes(transport: Any, max_write_buffer: int) -> None:
    """
    Make ``transport`` pause its streaming producer while it holds more than
    ``max_write_buffer`` unsent bytes (and resume it once it holds none):
    its C{bufferSize}.  A plain TCP server transport becomes a
    L{ReadSizedServer}, so that the larger threshold does not make every
    read allocate that much.  A transport without C{bufferSize} (TLS over
    a memory BIO, a test's) is left as it is.
    """
    if not hasattr(transport, "bufferSize"):
        return
    transport.bufferSize = max_write_buffer
    if type(transport) is tcp.Server:
        transport.__class__ = ReadSizedServer


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

    def between_requests(self) -> bool:
        """
        Return whether the parser holds no part of a request: none is
        queued, parsed or handled, no byte of one was consumed, so that the
        next byte read begins a request (bytes of a line not complete yet,
        L{line_pending}, may be held: they begin it).
        """
        return bool(
            self.line_mode
            and self._HTTPChannel__first_line == 1  # type: ignore[attr-defined]
            and not self.requests
            and not self._handlingRequest
            and not self._busyReceiving
        )

    def take_unparsed(self) -> bytes:
        """
        Return, and forget, the bytes read but not parsed yet (between
        requests: the beginning of the next ones).
        """
        data, self._buffer = self._buffer, b""
        return data  # type: ignore[no-any-return]

    def hold_unparsed(self, data: bytes) -> None:
        """
        Keep ``data``, the beginning of the next requests, unparsed, as if
        it had been read and not parsed yet (L{take_unparsed} gets it
        back).  Between requests only.
        """
        self._buffer = data

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


class HeaderBlockTooLarge(Exception):
    """
    An answer's header block (its status line and field lines, 1xx interim
    answers included) is over C{upstream.max_header_bytes}.
    """

    def __init__(self, limit: int) -> None:
        super().__init__(f"the upstream's header block is over {limit} bytes")
        self.limit = limit


class UnknownTransferCoding(Exception):
    """
    An answer's C{Transfer-Encoding} is not C{chunked} alone: Twisted knows
    no other coding (and failed on a C{KeyError} deep in its parser).
    """

    def __init__(self) -> None:
        super().__init__("the upstream's answer uses a transfer coding apicache does not know")


class BoundedAnswerParser(HTTPClientParser):
    """
    Twisted's HTTP/1.1 answer parser with its header block bounded: Twisted's
    keeps every field line it is sent (LineReceiver bounds only the length
    of each), so 50 MB of field lines were all read and kept.  Past
    C{max_header_bytes} (counted line by line, CR LF included, across 1xx
    interim answers too) it raises L{HeaderBlockTooLarge}; an unknown
    C{Transfer-Encoding} raises L{UnknownTransferCoding}; a status outside
    100-599 raises Twisted's C{ParseError}.  Twisted's protocol then drops
    the connection and fails the request (C{ResponseFailed}).
    """

    max_header_bytes = 65536
    _head_bytes = 0

    def lineReceived(self, line: bytes) -> None:
        if self.state == STATUS or (self.state == HEADER and line not in (b"", b"\r")):
            self._head_bytes += len(line) + 1  # the LF LineReceiver took off
            if self._head_bytes > self.max_header_bytes:
                raise HeaderBlockTooLarge(self.max_header_bytes)
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        # MAX_LENGTH is max_header_bytes: one line alone is over the limit
        raise HeaderBlockTooLarge(self.max_header_bytes)

    def statusReceived(self, status: bytes) -> None:
        super().statusReceived(status)
        # Twisted takes any integer; a status of three digits, 100-599
        # (RFC 9110 section 15), or the answer is not HTTP (found by the
        # fuzz target: 0, 1 and 1199 were passed on to callers)
        if not 100 <= self.response.code <= 599:
            raise ParseError("status outside 100-599", status)

    def allHeadersReceived(self) -> None:
        code = self.response.code
        if not (100 <= code < 200 or code in self.NO_BODY_CODES or self.request.method == b"HEAD"):
            # where Twisted would pick a decoder by the first field line's
            # whole value (``gzip, chunked`` and ``gzip`` were KeyErrors)
            codings = self.connHeaders.getRawHeaders(b"transfer-encoding")
            if codings and (len(codings) > 1 or codings[0].strip().lower() != b"chunked"):
                raise UnknownTransferCoding()
        super().allHeadersReceived()


def bound_answer_parser(protocol: HTTP11ClientProtocol, max_header_bytes: int) -> None:
    """
    Called right after C{protocol.request(...)}: turn the parser Twisted
    built for that request's answer into a L{BoundedAnswerParser} reading at
    most ``max_header_bytes`` of header block.  Twisted builds the parser
    inside C{request()} and no byte of the answer can arrive before it
    returns.  A request that was not sent leaves the parser of an earlier
    one, already bounded: nothing changes then.
    """
    parser = getattr(protocol, "_parser", None)
    if type(parser) is HTTPClientParser:
        parser.__class__ = BoundedAnswerParser
        parser.max_header_bytes = parser.MAX_LENGTH = max_header_bytes  # type: ignore[attr-defined]


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
