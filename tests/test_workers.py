"""
``--workers 2``: two processes share the listening socket; a DELETE or
/clear that one of them receives reaches the other's store; a dead worker is
restarted; SIGTERM to the supervisor stops everything cleanly.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

PATH = "/server/object(7)/header"
UPSTREAM_PATH = "/api/object(7)/header"


def workers_info(d, want=lambda info: True, timeout=30.0):
    """GET / until every worker answered with an info that ``want`` accepts."""
    seen = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = d.get("/").json()
        assert info["workers"] == 2
        if want(info):
            seen[info["worker"]] = info
        else:
            seen.pop(info["worker"], None)
        if len(seen) == 2:
            return seen
    raise AssertionError(f"not every worker answered as wanted: {seen}")


def fill_both(d, upstream, path=PATH, upstream_path=UPSTREAM_PATH):
    before = upstream.calls(upstream_path)
    # which worker accepts a new connection is up to the kernel: ask until
    # both have fetched (each fetches once, then serves its own copy)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        d.get(path)
        if upstream.calls(upstream_path) - before == 2:
            break
    assert upstream.calls(upstream_path) - before == 2
    workers_info(d, lambda info: info["entries"] == 1)


def both_hold(d, path, timeout=30.0):
    """GET ``path`` until each worker holds it (which one answers is the kernel's choice)."""
    holding = set()
    deadline = time.monotonic() + timeout
    while len(holding) < 2 and time.monotonic() < deadline:
        d.get(path)
        info = d.get("/").json()
        if info["entries"] == 1:
            holding.add(info["worker"])
    assert holding == {0, 1}


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_two_workers_share_the_socket_and_relay_invalidations(make_daemon, upstream):
    d = make_daemon(extra_args=["--workers", "2"])
    pids = {i: info["pid"] for i, info in workers_info(d).items()}
    assert len(set(pids.values())) == 2

    fill_both(d, upstream)
    served = {d.get(PATH).json()["n"] for _ in range(10)}
    assert served <= {1, 2}

    r = d.delete(PATH)
    assert (r.status, r.json()) == (200, {"invalidated": 2})
    workers_info(d, lambda info: info["entries"] == 0)
    for _ in range(20):
        reply = d.get(PATH)
        assert reply.status == 200
        assert reply.json()["n"] > 2, "a worker served an entry dropped by the DELETE"

    both_hold(d, PATH)
    r = d.delete("/clear", tenant="t1")
    assert (r.status, r.json()) == (200, {"invalidated": 2})
    workers_info(d, lambda info: info["entries"] == 0)

    # a dead worker is restarted
    os.kill(pids[0], signal.SIGKILL)
    now = workers_info(d, lambda info: info["pid"] != pids[0])
    assert now[1]["pid"] == pids[1]
    everyone = [info["pid"] for info in now.values()]

    assert d.stop() in (0, -15)
    deadline = time.monotonic() + 10
    while any(alive(p) for p in everyone) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in everyone)
    lines = d.log_lines()
    assert any("worker 0 died" in line["message"] for line in lines)


def test_workers_need_a_shareable_endpoint(make_daemon):
    """A TLS endpoint would need every worker to wrap its connections: refused."""
    import twisted.test

    pem = os.path.join(os.path.dirname(twisted.test.__file__), "server.pem")
    d = make_daemon(start=False, extra_args=["--workers", "2", "--listen", f"ssl:0:interface=127.0.0.1:privateKey={pem}"])

    out = subprocess.run(d.argv, capture_output=True, text=True, cwd=d.cwd, env=d.env, timeout=30)
    assert out.returncode == 1
    assert "--workers" in out.stderr and "tcp:" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_workers_with_memory_stores_refuse_kafka_group_mode(make_daemon):
    """Each worker's memory store needs every event: group mode would split them."""
    d = make_daemon(
        {"kafka": {"bootstrap_servers": "127.0.0.1:9", "topics": ["t"], "mode": "group"}},
        start=False,
        extra_args=["--workers", "2"],
    )

    out = subprocess.run(d.argv, capture_output=True, text=True, cwd=d.cwd, env=d.env, timeout=30)
    assert out.returncode == 1
    assert "kafka.mode" in out.stderr and "broadcast" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
