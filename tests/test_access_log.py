"""
The access log (SPEC.md section 4, issue 15): one JSON object per request
with the listed fields, secrets never written, written in batches of whole
lines no larger than PIPE_BUF, none lost at SIGTERM, none interleaved
across workers.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time

import pytest
import tomli_w
from daemon_support import API_KEY, daemon_config
from twisted.internet.task import Clock

from apicache.harness.launchers import Daemon
from apicache.ops import logs
from apicache.ops.instrument import TimedUpstream
from apicache.ops.logs import PIPE_BUF, AccessLog, redact_query
from apicache.ops.metrics import Metrics
from apicache.testing import OBJECT_BODY as BODY
from apicache.testing import InMemoryAPI as Wire

PATH = "/server/object(7)/header"


@pytest.mark.parametrize(
    "query, logged",
    [
        (b"token=abc&page=2", "token=***&page=2"),
        (b"page=2&api_key=k&x-signature=s&client_secret=c&password=p&Auth=a", "page=2&api_key=***&x-signature=***&client_secret=***&password=***&Auth=***"),
        (b"%74oken=abc&page=2", "%74oken=***&page=2"),  # the name is matched decoded
        (b"page=2&sort=name", "page=2&sort=name"),
        (b"flag&token", "flag&token"),  # no value to hide
        (b"", ""),
    ],
)
def test_query_values_of_secret_names_are_starred(query, logged):
    assert redact_query(query) == logged


def test_the_query_is_cut_at_256_bytes_and_still_redacted():
    query = b"a=" + b"x" * 250 + b"&token=" + b"s" * 100
    logged = redact_query(query)
    assert len(logged.encode()) <= 256
    assert "s" not in logged.split("&", 1)[1].replace("token", "")
    assert redact_query(b"p=" + b"y" * 243 + b"&token=abc") == "p=" + "y" * 243 + "&token=***"


class _Writes:
    """os.write, recorded."""

    def __init__(self, monkeypatch):
        self.chunks: list[bytes] = []
        r, self.fd = os.pipe()
        os.close(r)
        monkeypatch.setattr(logs.os, "write", self.write)

    def write(self, fd, data):
        assert fd == self.fd
        self.chunks.append(bytes(data))
        return len(data)

    def lines(self):
        return [json.loads(line) for line in b"".join(self.chunks).splitlines()]


def _line(log: AccessLog, n: int, path: str = PATH) -> None:
    log.request(1000.0, b"GET", path.encode(), b"n=%d" % n, 200, 10, 0.001, "t1", "object", "HIT", "127.0.0.1", "ab" * 16)


def test_lines_are_written_in_batches_on_the_clock_and_at_stop(monkeypatch):
    writes = _Writes(monkeypatch)
    clock = Clock()
    log = AccessLog(clock, fd=writes.fd, interval=0.2, max_lines=100)
    log.startService()
    for n in range(10):
        _line(log, n)
    assert writes.chunks == []
    clock.advance(0.2)
    assert [line["query"] for line in writes.lines()] == [f"n={n}" for n in range(10)]
    assert len(writes.chunks) == 1
    for n in range(10, 15):
        _line(log, n)
    log.stopService()
    assert len(writes.lines()) == 15
    _line(log, 15)  # once stopped: at once
    assert len(writes.lines()) == 16


def test_each_write_is_whole_lines_of_at_most_pipe_buf_bytes(monkeypatch):
    writes = _Writes(monkeypatch)
    clock = Clock()
    log = AccessLog(clock, fd=writes.fd, max_lines=1000)
    log.startService()
    for n in range(300):
        _line(log, n, path="/p" + "x" * (n % 400))
    clock.advance(1)
    assert len(writes.chunks) > 5
    for chunk in writes.chunks:
        assert len(chunk) <= PIPE_BUF
        assert chunk.endswith(b"\n")
        for line in chunk.splitlines():
            json.loads(line)
    assert len(writes.lines()) == 300
    log.stopService()


def test_a_full_batch_is_written_before_the_timer(monkeypatch):
    writes = _Writes(monkeypatch)
    log = AccessLog(Clock(), fd=writes.fd, max_lines=8)
    log.startService()
    for n in range(8):
        _line(log, n)
    assert len(writes.lines()) == 8
    log.stopService()


class _LoggedWire(Wire):
    """The in-memory site, with an access log writing to a pipe."""

    def __init__(self):
        clock = Clock()
        clock.advance(100)
        self.read_fd, fd = os.pipe()
        self.log = AccessLog(clock, fd=fd)
        self.log.startService()
        super().__init__(clock=clock, access_log=self.log, worker=1)
        # measured as the daemon measures it: the access line's upstream fields
        self.registry.upstream = TimedUpstream(self.upstream, Metrics(), self.clock)

    def lines(self):
        self.log.flush()
        os.set_blocking(self.read_fd, False)
        try:
            data = os.read(self.read_fd, 1 << 20)
        except BlockingIOError:
            data = b""
        return [json.loads(line) for line in data.splitlines()]


def test_a_line_holds_the_fields_of_spec_section_4_and_no_secret():
    w = _LoggedWire()
    headers = ((b"api-key", b"k1"), (b"org_id", b"t1"), (b"authorization", b"Bearer SECRET-TOKEN"))
    status, fields, body = w.get(b"/server/object(42)/header?token=abc&page=2", headers)
    assert (status, fields[b"x-cache"]) == (200, b"MISS")
    status, fields, body = w.get(b"/server/object(42)/header?token=abc&page=2", headers)
    assert (status, fields[b"x-cache"]) == (200, b"HIT")
    miss, hit = w.lines()
    for line in (miss, hit):
        assert line["method"] == "GET"
        assert line["path"] == "/server/object(42)/header"
        assert line["query"] == "token=***&page=2"
        assert line["status"] == 200
        assert line["bytes"] == len(BODY)
        assert line["duration_ms"] >= 0
        assert (line["tenant"], line["route"]) == ("t1", "object")
        assert line["client"] == "192.168.1.1"  # StringTransport's peer
        assert len(line["trace_id"]) == 32
        assert line["worker"] == 1
        assert line["level"] == "info"
        assert line["time"].endswith("+00:00")
    assert (miss["x_cache"], hit["x_cache"]) == ("MISS", "HIT")
    # the upstream was called for the miss only
    assert miss["upstream_status"] == 200
    assert miss["upstream_ms"] >= 0
    assert "upstream_status" not in hit and "upstream_ms" not in hit
    text = json.dumps([miss, hit])
    assert "SECRET-TOKEN" not in text and '"k1"' not in text and "token=abc" not in text
    assert BODY.decode() not in text


def _stop_then_lines(d: Daemon) -> list[dict]:
    assert d.stop() in (0, -15)
    return d.log_lines()  # raises unless every line is one JSON object


@pytest.mark.integration
def test_every_request_has_its_line_even_right_before_sigterm(make_daemon):
    """Lines waiting for the next batch are written at shutdown."""
    d = make_daemon()
    n = 40
    for i in range(n):
        assert d.get(f"{PATH}?page={i}&api_key=KEYVALUE").status == 200
    lines = _stop_then_lines(d)
    access = [ln for ln in lines if ln.get("path") == PATH]
    assert sorted(ln["query"] for ln in access) == sorted(f"page={i}&api_key=***" for i in range(n))
    assert {ln["x_cache"] for ln in access} == {"MISS"}
    assert all(ln["upstream_status"] == 200 for ln in access)
    assert "KEYVALUE" not in d.logs()
    assert "test-key" not in d.logs()  # the api-key


class _PipedDaemon(Daemon):
    """The daemon with stdout a pipe (as under systemd or a container runtime), copied to the log file."""

    def spawn(self) -> Daemon:
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        out = self.proc.stdout
        assert out is not None

        def copy() -> None:
            while chunk := os.read(out.fileno(), 1 << 16):
                self._log.write(chunk)
                self._log.flush()

        self._copier = threading.Thread(target=copy, daemon=True)
        self._copier.start()
        return self

    def stop(self, timeout: float = 15.0) -> int:
        status = super().stop(timeout) if self.proc is not None and self.proc.poll() is None else self.proc.returncode
        self._copier.join(10)
        return status


@pytest.mark.integration
def test_two_workers_on_one_stdout_pipe_never_interleave_lines(tmp_path, upstream):
    config = tmp_path / "apicache.toml"
    config.write_text(tomli_w.dumps(daemon_config(upstream.url)))
    d = _PipedDaemon(str(config), api_key=API_KEY, extra_args=["--workers", "2"])
    try:
        d.start()
        threads, per_thread = 8, 60
        # long queries: every batch is far over PIPE_BUF
        long = "x" * 200

        def drive(t: int) -> None:
            for i in range(per_thread):
                assert d.get(f"{PATH}?thread={t}&i={i}&pad={long}").status == 200

        started = time.monotonic()
        workers = [threading.Thread(target=drive, args=(t,)) for t in range(threads)]
        for th in workers:
            th.start()
        for th in workers:
            th.join(120)
        # wall clock: a bound on two real workers under load, far above what it takes
        assert time.monotonic() - started < 120
        lines = _stop_then_lines(d)
    finally:
        d.kill()
    access = [ln for ln in lines if ln.get("path") == PATH]
    assert len(access) == threads * per_thread
    assert len({ln["query"] for ln in access}) == threads * per_thread
    assert {ln["worker"] for ln in access} == {0, 1}


def test_odd_bytes_still_make_one_json_line(monkeypatch):
    writes = _Writes(monkeypatch)
    log = AccessLog(Clock(), fd=writes.fd)  # not started: written at once
    log.request(
        1.5, b'G"T', b"/a\\b\n\xc3\xa9\xff", b"q=%22&x=\n", 500, 0, 0.25, 't"1', "r\\", "-", None, None, (None, 2.0, "timeout"), 0
    )
    (line,) = writes.lines()
    assert b"".join(writes.chunks).count(b"\n") == 1
    assert (line["method"], line["path"], line["tenant"], line["route"]) == ('G"T', "/a\\b\né\ufffd", 't"1', "r\\")
    assert line["query"] == "q=%22&x=\n"
    assert (line["upstream_status"], line["upstream_ms"], line["upstream_error"]) == (None, 2000.0, "timeout")
    assert (line["client"], line["trace_id"], line["worker"]) == (None, None, 0)
    assert line["time"] == "1970-01-01T00:00:01.500+00:00"


def test_a_line_of_the_longest_oddest_request_fits_in_pipe_buf(monkeypatch):
    writes = _Writes(monkeypatch)
    log = AccessLog(Clock(), fd=writes.fd)
    path = b"/" + b"\x01" * 4000
    log.request(1.0, b"GET", path, b"q=" + b"\x02" * 2000, 200, 1, 0.1, "t" * 128, "object", "HIT", "::1", "a" * 32, (200, 0.1, None), 1)
    (chunk,) = writes.chunks
    assert len(chunk) <= PIPE_BUF
    (line,) = writes.lines()
    assert line["path"].startswith("/\x01") and line["query"].startswith("q=\x02")
