"""
What apicache relies on of Twisted's private API (L{apicache._twisted}), one
test per reliance: each fails on a Twisted release that changes the thing it
relies on, before a request in production would.  Also what the public
replacements of former private uses rely on (the site's channel gets the
site's clock and idle timeout without twisted.web's wrapper).
"""

from __future__ import annotations

import inspect
import socket
import time

from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.selectreactor import SelectReactor
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web._newclient import HTTP11ClientProtocol, HTTPClientParser, ParseError, Request
from twisted.web.client import RequestNotSent as ClientRequestNotSent
from twisted.web.http import HTTPChannel
from twisted.web.http import Request as WebRequest
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from twisted.web.resource import Resource
from zope.interface import implementer

from apicache._twisted import (
    BoundedAnswerParser,
    FairPort,
    HeaderBlockTooLarge,
    HTTPChannelInternals,
    LeftoverAwareClientProtocol,
    RequestNotSent,
    UnknownTransferCoding,
    adopt_fair_port,
    bound_answer_parser,
    connection_field,
    headers_over,
    raw_headers,
    send_now,
)
from apicache.cache.wire import canonical_name
from apicache.http.channel import ApiChannel, ApiSite, ConnectionLimits

# -- raw_headers: Headers._rawHeaders ----------------------------------------


def test_the_raw_table_is_keyed_by_the_names_twisted_web_writes():
    headers = Headers()
    for name in (b"api-key", b"org_id", b"if-none-match", b"accept-encoding", b"traceparent", b"x-tenant"):
        headers.addRawHeader(name, b"v")
        assert raw_headers(headers)[canonical_name(name)] == [b"v"]


def test_the_raw_table_is_live():
    """What is popped from the table is gone from the headers (tracing drops tracestate so)."""
    headers = Headers({b"tracestate": [b"a=1"]})
    raw_headers(headers).pop(canonical_name(b"tracestate"))
    assert not headers.hasHeader(b"tracestate")


def test_a_parsed_request_s_headers_are_in_the_raw_table():
    channel, _ = _channel(_Recording)
    channel.dataReceived(b"GET /x HTTP/1.1\r\nHost: a\r\nIF-NONE-MATCH: \"e\"\r\napi-key: k\r\n\r\n")
    raw = raw_headers(channel.requests[0].requestHeaders)
    assert raw[canonical_name(b"if-none-match")] == [b'"e"']
    assert raw[canonical_name(b"api-key")] == [b"k"]


# -- HTTPChannelInternals: the parser state and the refusal hook --------------


class _Recording(HTTPChannelInternals):
    """Notes the refusals twisted.web makes itself."""

    def __init__(self) -> None:
        super().__init__()
        self.bad = 0

    def bad_request(self) -> None:
        self.bad += 1
        super().bad_request()


class _Held(WebRequest):
    """A request handled forever: pipelined bytes after it are held, unparsed."""

    def process(self) -> None:
        pass


def _never_finishes(channel, queued=None):
    return _Held(channel)


def _channel(kind=_Recording, request_factory=None):
    channel = kind()
    if request_factory is not None:
        channel.requestFactory = request_factory
    transport = StringTransport()
    channel.makeConnection(transport)
    return channel, transport


def test_twisted_web_s_own_refusals_go_through_the_hook():
    for head in (b"NOT A REQUEST LINE AT ALL\r\n\r\n", b"GET / HTTP/1.1\r\nno colon here\r\n\r\n"):
        channel, transport = _channel()
        channel.dataReceived(head)
        assert channel.bad == 1
        # the default is twisted.web's own empty 400
        assert transport.value().startswith(b"HTTP/1.1 400 Bad Request")


def test_a_head_over_total_headers_size_is_refused_through_the_hook_and_says_so():
    channel, _ = _channel()
    assert not channel.head_too_large()
    channel.dataReceived(b"GET / HTTP/1.1\r\n" + b"x-a: " + b"a" * 9000 + b"\r\n" + b"x-b: " + b"b" * 9000 + b"\r\n")
    assert channel.bad == 1
    assert channel.head_too_large()


def test_the_refusal_hook_is_the_method_twisted_web_calls():
    assert inspect.signature(HTTPChannel._respondToBadRequestAndDisconnect).parameters.keys() == {"self"}


def test_the_request_line_is_known_while_its_head_and_body_are_read():
    channel, _ = _channel(request_factory=_never_finishes)
    assert channel.request_line() is None
    channel.dataReceived(b"POST /p?q=1 HTTP/1.1\r\nHost: a\r\n")
    assert channel.request_line() == (b"POST", b"/p?q=1")
    channel.dataReceived(b"Content-Length: 2\r\n\r\nx")
    assert channel.request_line() == (b"POST", b"/p?q=1")
    channel.dataReceived(b"y")
    # the request is complete and handled: twisted.web forgets its line
    assert channel.request_line() is None


def test_a_line_cut_short_is_pending_until_its_crlf():
    channel, _ = _channel()
    channel.dataReceived(b"GE")
    assert channel.line_pending()
    channel.dataReceived(b"T / HTTP/1.1\r\n")
    assert not channel.line_pending()


def test_unread_bytes_are_dropped():
    channel, _ = _channel(request_factory=_never_finishes)
    channel.dataReceived(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHo")
    # the second request waits, unparsed, while the first is handled
    assert channel._dataBuffer == [b"GET /2 HTTP/1.1\r\nHo"]
    channel.drop_unread()
    assert channel._dataBuffer == []
    fresh, _ = _channel()
    fresh.dataReceived(b"GET / HT")
    fresh.drop_unread()
    assert not fresh.line_pending()


# -- between requests: what the fast hit path takes from the parser ----------


def test_between_requests_the_parser_holds_no_part_of_a_request():
    channel, _ = _channel(request_factory=_never_finishes)
    assert channel.between_requests()
    channel.dataReceived(b"GET / HT")
    # a request line cut short: nothing parsed yet, its bytes held
    assert channel.between_requests() and channel.line_pending()
    channel.dataReceived(b"TP/1.1\r\nHost: a\r\n")
    assert not channel.between_requests()
    channel.dataReceived(b"\r\n")
    # handled (forever, here): not between requests either
    assert not channel.between_requests()


class _Answered(WebRequest):
    """A request answered at once."""

    def process(self) -> None:
        self.write(b"ok")
        self.finish()


def test_after_an_answered_request_the_parser_is_between_requests_again():
    channel, transport = _channel(request_factory=lambda channel, queued=None: _Answered(channel))
    channel.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert b"ok" in transport.value()
    assert channel.between_requests()


def test_unparsed_bytes_are_taken_and_held_back_as_they_came():
    channel, _ = _channel()
    channel.dataReceived(b"GET /a HT")
    assert channel.take_unparsed() == b"GET /a HT"
    assert not channel.line_pending()
    channel.hold_unparsed(b"GET /b HTTP/1.1\r\nHost: a\r\n\r\nGET /c")
    assert channel.line_pending()
    # what is held is parsed with the next read, as if just read
    channel.requestFactory = _never_finishes
    channel.dataReceived(b" HTTP/1.1\r\nHost: a\r\n\r\n")
    assert channel.requests[0].uri == b"/b"
    assert channel._dataBuffer == [b"GET /c HTTP/1.1\r\nHost: a\r\n\r\n"]


def test_headers_over_a_table_read_as_twisted_web_s_own():
    table = {canonical_name(b"api-key"): [b"k"], canonical_name(b"etag"): [b"1", b"2"]}
    headers = headers_over(table)
    assert headers.getRawHeaders(b"api-key") == [b"k"]
    assert headers.getRawHeaders(b"ETAG") == [b"1", b"2"]
    assert raw_headers(headers) is table


def _tcp_pair():
    """A connected tcp.Server transport on a real reactor's socket, and its peer."""
    from twisted.internet import tcp

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    client = socket.create_connection(listener.getsockname())
    conn, addr = listener.accept()
    listener.close()
    conn.setblocking(False)
    reactor = SelectReactor()
    server = tcp.Server(conn, Protocol(), addr, _FakePort(), 1, reactor)
    return server, client


class _FakePort:
    _realPortNumber = 0

    def _connectionLost(self, reason):
        pass


def test_send_now_sends_at_once_when_nothing_is_queued():
    server, client = _tcp_pair()
    try:
        assert send_now(server, b"hello")
        assert client.recv(100) == b"hello"
        # something queued: the next bytes wait behind it, in order
        server.write(b"first")
        assert not send_now(server, b"second")
        assert server._tempDataLen == len(b"firstsecond")
    finally:
        client.close()
        server.socket.close()


def test_send_now_queues_what_a_full_socket_does_not_take():
    server, client = _tcp_pair()
    try:
        big = b"x" * (64 << 20)
        assert not send_now(server, big)
        queued = len(server.dataBuffer) + server._tempDataLen
        assert 0 < queued < len(big)
    finally:
        client.close()
        server.socket.close()


def test_bound_writes_pauses_past_the_limit_and_reads_64_kib_at_a_time():
    """
    bound_writes: the producer pauses once more than max_write_buffer bytes
    wait, and a read still asks recv for READ_SIZE bytes only (Twisted's
    doRead asks for bufferSize, the same attribute).
    """
    from apicache._twisted import READ_SIZE, ReadSizedServer, bound_writes

    server, client = _tcp_pair()
    received = []
    server.protocol.dataReceived = received.append
    asked = []

    class Socket:
        def __init__(self, real):
            self.real = real

        def recv(self, n):
            asked.append(n)
            return self.real.recv(n)

        def __getattr__(self, name):
            return getattr(self.real, name)

    try:
        bound_writes(server, 1 << 20)
        assert type(server) is ReadSizedServer and server.bufferSize == 1 << 20
        server.socket = Socket(server.socket)
        client.sendall(b"x" * 10)
        for _ in range(100):
            server.doRead()
            if received:
                break
            time.sleep(0.01)
        assert received == [b"x" * 10] and asked[0] == READ_SIZE == 65536

        paused = []

        class Producer:
            def pauseProducing(self):
                paused.append(True)

            def resumeProducing(self):
                pass

            def stopProducing(self):
                pass

        server.registerProducer(Producer(), True)
        server.write(b"y" * (1 << 20))
        assert not paused  # not more than the limit
        server.write(b"y")
        assert paused
        # send_now knows it for a plain TCP transport: sent at once
        server.unregisterProducer()
        server.dataBuffer, server._tempDataBuffer, server._tempDataLen = b"", [], 0
        assert send_now(server, b"now")
    finally:
        client.close()
        server.socket.close()


def test_bound_writes_leaves_a_transport_without_buffer_size_alone():
    from apicache._twisted import bound_writes

    transport = StringTransport()
    bound_writes(transport, 10)
    assert type(transport) is StringTransport


def test_send_now_writes_through_the_transport_elsewhere():
    transport = StringTransport()
    assert not send_now(transport, b"x")
    assert transport.value() == b"x"


# -- the site's channel without twisted.web's wrapper -------------------------


def test_the_site_s_channel_gets_the_site_s_clock_and_idle_timeout():
    clock = Clock()
    site = ApiSite(Resource(), clock, access_log=False, limits=ConnectionLimits(idle_timeout=7.0))
    channel = site.buildProtocol(None)
    assert type(channel) is ApiChannel
    assert channel.timeOut == 7.0
    assert channel.callLater == clock.callLater
    assert channel.site is site


# -- LeftoverAwareClientProtocol: _finishResponse_WAITING / _TRANSMITTING -----


class _Leftovers(LeftoverAwareClientProtocol):
    def __init__(self) -> None:
        super().__init__(lambda p: None)
        self.seen: list[bytes] = []

    def leftover(self, rest: bytes) -> None:
        self.seen.append(rest)


def _client():
    protocol = _Leftovers()
    protocol.makeConnection(StringTransport())
    return protocol


OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def test_the_bytes_past_an_answer_s_end_are_told():
    protocol = _client()
    protocol.request(Request(b"GET", b"/", Headers({b"host": [b"a"]}), None, persistent=True))
    protocol.dataReceived(OK + b"HTTP/1.1 200 OK\r\n")
    assert protocol.seen == [b"HTTP/1.1 200 OK\r\n"]


def test_an_answer_without_extra_bytes_tells_nothing_is_left():
    protocol = _client()
    protocol.request(Request(b"GET", b"/", Headers({b"host": [b"a"]}), None, persistent=True))
    protocol.dataReceived(OK)
    assert protocol.seen == [b""]
    assert protocol.state == "QUIESCENT"


@implementer(IBodyProducer)
class _Stalled:
    """A body that is never written to its end."""

    length = 10

    def startProducing(self, consumer):
        return Deferred()

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass


def test_the_bytes_past_an_answer_that_came_before_the_whole_request_are_told():
    protocol = _client()
    protocol.request(Request(b"POST", b"/", Headers({b"host": [b"a"]}), _Stalled(), persistent=True))
    assert protocol.state == "TRANSMITTING"
    protocol.dataReceived(OK + b"extra")
    assert protocol.seen == [b"extra"]


def test_the_state_handlers_take_the_rest():
    for name in ("_finishResponse_WAITING", "_finishResponse_TRANSMITTING"):
        assert list(inspect.signature(getattr(HTTP11ClientProtocol, name)).parameters) == ["self", "rest"]


def test_a_request_on_a_busy_connection_is_request_not_sent():
    protocol = _client()
    protocol.request(Request(b"GET", b"/", Headers({b"host": [b"a"]}), None, persistent=True))
    failure = []
    protocol.request(Request(b"GET", b"/", Headers({b"host": [b"a"]}), None)).addErrback(failure.append)
    assert failure and failure[0].check(RequestNotSent)
    # the class Agent's users catch is this one
    assert RequestNotSent is ClientRequestNotSent


# -- connection_field: HTTP11ClientProtocol._parser, HTTPClientParser.connHeaders


def test_the_connection_field_is_kept_apart_from_the_answer_s_headers_and_read_from_the_parser():
    protocol = _client()
    answered = []
    protocol.request(Request(b"GET", b"/", Headers({b"host": [b"a"]}), None, persistent=True)).addCallback(answered.append)
    fields = connection_field(protocol)
    assert fields is not None
    protocol.dataReceived(b"HTTP/1.1 200 OK\r\nConnection: keep-alive, x-secret\r\nX-Secret: s\r\nContent-Length: 2\r\n\r\nok")
    (response,) = answered
    assert not response.headers.hasHeader(b"connection")
    assert fields() == (b"keep-alive, x-secret",)


def test_a_protocol_that_sent_nothing_has_no_connection_field():
    assert connection_field(_client()) is None


# -- bound_answer_parser: HTTP11ClientProtocol._parser, HTTPClientParser's hooks ---


def _bounded(limit: int = 100):
    protocol = _client()
    answered: list = []
    d = protocol.request(Request(b"GET", b"/", Headers({b"host": [b"a"]}), None, persistent=True))
    d.addBoth(answered.append)
    bound_answer_parser(protocol, limit)
    return protocol, answered


def _reasons(answered: list) -> list[type]:
    (failure,) = answered
    return [type(r.value) for r in failure.value.reasons]


def test_the_parser_of_a_request_is_built_in_request_as_an_http_client_parser():
    protocol = _client()
    protocol.request(Request(b"GET", b"/", Headers({b"host": [b"a"]}), None, persistent=True))
    assert type(protocol._parser) is HTTPClientParser
    bound_answer_parser(protocol, 100)
    assert type(protocol._parser) is BoundedAnswerParser and protocol._parser.MAX_LENGTH == 100


def test_a_bounded_parser_reads_a_header_block_at_its_limit():
    protocol, answered = _bounded(len(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"))
    protocol.dataReceived(OK)
    (response,) = answered
    assert response.code == 200


def test_a_bounded_parser_refuses_a_header_block_over_its_limit_line_by_line():
    protocol, answered = _bounded(len(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n") - 1)
    protocol.dataReceived(OK)
    assert _reasons(answered) == [HeaderBlockTooLarge]


def test_a_bounded_parser_refuses_a_line_longer_than_its_limit_before_its_end():
    protocol, answered = _bounded(100)
    protocol.dataReceived(b"HTTP/1.1 200 OK\r\nX: " + b"x" * 200)
    assert _reasons(answered) == [HeaderBlockTooLarge]


def test_a_bounded_parser_refuses_unknown_codings_and_statuses():
    protocol, answered = _bounded(1000)
    protocol.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n")
    assert _reasons(answered) == [UnknownTransferCoding]
    protocol, answered = _bounded(1000)
    protocol.dataReceived(b"HTTP/1.1 1199 OK\r\nContent-Length: 0\r\n\r\n")
    assert _reasons(answered) == [ParseError]


def test_a_request_not_sent_leaves_the_earlier_parser_alone():
    protocol, _ = _bounded(100)
    first = protocol._parser
    protocol.request(Request(b"GET", b"/", Headers({b"host": [b"a"]}), None))  # busy: not sent
    bound_answer_parser(protocol, 5)
    assert protocol._parser is first and first.max_header_bytes == 100


# -- FairPort: tcp.Port.numberAccepts, tcp.Port._fromListeningDescriptor --------


def _accepted(port_class_or_adopt) -> int:
    reactor = SelectReactor()
    listener = socket.socket()
    clients = []
    built = []

    class Counting(Factory):
        def buildProtocol(self, addr):
            built.append(addr)
            return Protocol()

    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        listener.setblocking(False)  # as an inherited listening socket is
        port = port_class_or_adopt(reactor, listener.fileno(), socket.AF_INET, Counting())
        for _ in range(3):
            c = socket.create_connection(listener.getsockname())
            clients.append(c)
        port.doRead()
        return len(built)
    finally:
        for c in clients:
            c.close()
        for reader in reactor.removeAll():
            getattr(reader, "socket", None) and reader.socket.close()
        listener.close()


def test_a_fair_port_accepts_one_connection_per_wake_up():
    assert _accepted(adopt_fair_port) == 1


def test_twisted_s_port_accepts_every_queued_connection_per_wake_up():
    """What FairPort changes: without it a burst goes to one worker."""

    def plain(reactor, fd, family, factory):
        port = FairPort.__mro__[1]._fromListeningDescriptor(reactor, fd, family, factory)
        port.startListening()
        return port

    assert _accepted(plain) == 3
