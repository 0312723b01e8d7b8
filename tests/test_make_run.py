"""
``make run`` serves out of the box (SPEC §6): without
``APICACHE_UPSTREAM_URL`` it also starts the bundled demo upstream, the
README's first ``curl`` is a ``MISS`` and the second a ``HIT``, and Ctrl-C or
SIGTERM stops both without ``make`` reporting an error.

The launcher (``bench/run_local.py``) and ``make run`` itself are run for
real, in subprocesses, against the installed daemon.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from apicache.harness.demo import UpstreamStub
from apicache.harness.launchers import Daemon, free_port
from apicache.harness.polling import wait_until

# starts real processes (make test-fast leaves it out)
pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
LAUNCHER = ROOT / "bench" / "run_local.py"
API_KEY = "make-run-key"
#: The README's first curl: `make demo`'s, the object route with a token.
FIRST_CURL = ("/server/object(42)/header", {"org_id": "acme", "authorization": "Bearer demo-token"})


def _children(pid: int) -> list[int]:
    """
    Return the pids of ``pid``'s live children (from /proc).
    """
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # the command name, in parentheses, may hold spaces: fields follow the last ')'
        fields = stat.rpartition(")")[2].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry))
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("APICACHE_UPSTREAM_URL", "PORT")}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


def _client(port: int) -> Daemon:
    # Daemon's blocking HTTP client, for a daemon this test did not start
    return Daemon(None, port=port, cwd=str(ROOT), api_key=API_KEY)


def _wait_healthy(proc: subprocess.Popen[bytes], port: int, wait: float = 60.0) -> Daemon:
    client = _client(port)

    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"exited with {proc.returncode} before serving: {_output(proc)}")
        try:
            return client.request("GET", "/healthz", timeout=1).status == 200
        except OSError:
            return False

    wait_until(healthy, wait, 0.1, f"/healthz to answer 200 on port {port}")
    return client


def _output(proc: subprocess.Popen[bytes]) -> str:
    if proc.poll() is None:
        proc.kill()
    out = proc.communicate()[0] or b""
    return out.decode(errors="replace")[-3000:]


def _first_curl_twice(client: Daemon) -> tuple[str | None, str | None]:
    path, headers = FIRST_CURL
    first = client.request("GET", path, dict(headers))
    second = client.request("GET", path, dict(headers))
    assert (first.status, second.status) == (200, 200), (first, second)
    assert second.body == first.body
    return first.cache, second.cache


class Launched:
    """
    Processes a test started, and the children it saw them start: all
    killed at the end, even those orphaned by a failed test.
    """

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.pids: list[int] = []

    def start(self, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        """
        Start ``argv`` in the repository, in a session of its own.
        """
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs.append(proc)
        return proc

    def children(self, pid: int) -> list[int]:
        """
        Return ``pid``'s live children, remembered for the clean-up.
        """
        found = _children(pid)
        self.pids.extend(found)
        return found

    def kill_all(self) -> None:
        for pid in self.pids:
            if _alive(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()


@pytest.fixture
def launched() -> Iterator[Launched]:
    started = Launched()
    yield started
    started.kill_all()


def _launcher(launched: Launched, port: int, **env: str) -> subprocess.Popen[bytes]:
    return launched.start([sys.executable, str(LAUNCHER), "--port", str(port)], _env(APICACHE_API_KEY=API_KEY, **env))


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_launcher_starts_demo_upstream_miss_then_hit_and_exits_0(launched, signum):
    """
    Without APICACHE_UPSTREAM_URL the launcher starts the demo upstream and
    the daemon; the first curl misses, the second hits; a signal stops
    both, and the launcher exits 0.
    """
    port = free_port()
    proc = _launcher(launched, port)
    client = _wait_healthy(proc, port)
    children = launched.children(proc.pid)
    commands = [Path(f"/proc/{c}/cmdline").read_bytes().split(b"\0") for c in children]
    assert len(children) == 2, commands
    assert any(b"apicache.harness.demo" in argv for argv in commands), commands
    assert any(argv[1].endswith(b"twistd") for argv in commands), commands

    assert _first_curl_twice(client) == ("MISS", "HIT")

    proc.send_signal(signum)
    try:
        out = proc.communicate(timeout=30)[0].decode(errors="replace")
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running 30 s after the signal: {_output(proc)}") from None
    assert proc.returncode == 0, out[-3000:]
    assert [c for c in children if _alive(c)] == []
    assert "Traceback" not in out


def test_launcher_uses_the_configured_upstream_and_starts_no_demo(launched, upstream: UpstreamStub):
    """
    With APICACHE_UPSTREAM_URL set, only the daemon runs, in front of it.
    """
    port = free_port()
    proc = _launcher(launched, port, APICACHE_UPSTREAM_URL=upstream.url)
    client = _wait_healthy(proc, port)
    assert len(launched.children(proc.pid)) == 1
    assert _first_curl_twice(client) == ("MISS", "HIT")
    assert upstream.calls("/object(42)/header") == 1
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0


def test_launcher_exits_1_when_the_daemon_cannot_start(launched):
    """
    A daemon that fails to start (its port taken) fails the launcher, and
    the demo upstream is stopped too.
    """
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _launcher(launched, port)
        deadline = time.monotonic() + 5
        children: list[int] = []
        while time.monotonic() < deadline and len(children) < 1 and proc.poll() is None:
            children = launched.children(proc.pid)
            time.sleep(0.02)
        assert proc.wait(60) == 1
    assert [c for c in children if _alive(c)] == []


uses_the_repos_venv = pytest.mark.skipif(
    shutil.which("make") is None or Path(sys.prefix).resolve() != (ROOT / ".venv").resolve(),
    reason="make run installs into and runs the repository's .venv; these tests run elsewhere",
)


@uses_the_repos_venv
# the first `make run` may install the package (it waits up to 180 s to serve)
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "signum, to_group",
    [(signal.SIGINT, True), (signal.SIGTERM, True), (signal.SIGTERM, False)],
    ids=["ctrl-c", "sigterm-to-group", "sigterm-to-make"],
)
def test_make_run_serves_and_stops_without_an_error(launched, signum, to_group):
    """
    ``make run`` serves the README's first curl (MISS, then HIT); Ctrl-C
    (SIGINT to the process group, as a terminal sends it) or SIGTERM ends it
    with no error from make and nothing left running.
    """
    port = free_port()
    proc = launched.start(["make", "--no-print-directory", "run", f"PORT={port}", f"DEV_KEY={API_KEY}"], _env())
    client = _wait_healthy(proc, port, wait=180)
    launcher = launched.children(proc.pid)
    assert len(launcher) == 1
    children = launched.children(launcher[0])
    assert len(children) == 2

    assert _first_curl_twice(client) == ("MISS", "HIT")

    if to_group:
        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)
    try:
        out = proc.communicate(timeout=30)[0].decode(errors="replace")
    except subprocess.TimeoutExpired:
        raise AssertionError(f"make run still running 30 s after the signal: {_output(proc)}") from None
    # make itself dies of the signal it got (it re-raises it), but says nothing
    assert proc.returncode in (0, -signum), out[-3000:]
    assert "***" not in out and "Error" not in out, out[-3000:]
    assert [c for c in [*launcher, *children] if _alive(c)] == []


def test_killing_the_launcher_outright_stops_both_children(launched):
    """
    SIGKILL leaves the launcher no chance to stop its children: the kernel
    tells them (parent-death signal, SIGTERM), and neither outlives it.
    """
    port = free_port()
    proc = _launcher(launched, port)
    _wait_healthy(proc, port)
    children = launched.children(proc.pid)
    assert len(children) == 2
    proc.kill()
    proc.wait()
    wait_until(lambda: not [c for c in children if _alive(c)], 15, 0.1, "both children to exit")
