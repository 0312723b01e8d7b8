"""
The app as Cloud Foundry runs it: the files `cf push` uploads (.cfignore),
installed the way the python buildpack does (``pip install -r
requirements.txt`` into a fresh environment), started with the Procfile's
``web:`` command with ``PORT``, ``VCAP_SERVICES`` and ``VCAP_APPLICATION``
set.
"""

from __future__ import annotations

import fnmatch
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from apicache.harness.demo import UpstreamStub
from apicache.harness.launchers import free_port
from apicache.harness.polling import wait_until
from apicache.harness.token_endpoint import TokenEndpoint
from apicache.testing import vcap_services

# starts real processes, and installs the package into a fresh Python
# first (about 20 s; pip may take longer on a slow network)
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[1]
API_KEY = "key-from-vcap-" + os.urandom(4).hex()
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"
# cf push never uploads these, whatever .cfignore says
_ALWAYS_IGNORED = [".git/", ".cfignore"]


def _ignored(rel: str, patterns: list[str]) -> bool:
    parts = rel.split("/")
    for p in patterns:
        directory = p.endswith("/")
        p = p.strip("/")
        if not p:
            continue
        for i in range(len(parts)):
            if fnmatch.fnmatch(parts[i], p) and (not directory or i < len(parts) - 1):
                return True
        if fnmatch.fnmatch(rel, p):
            return True
    return False


def cf_upload(dest: Path) -> None:
    """
    Copy the files `cf push` would upload from the repository to ``dest``.
    """
    lines = (REPO / ".cfignore").read_text().splitlines()
    patterns = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")] + _ALWAYS_IGNORED
    for root, dirs, files in os.walk(REPO):
        rel_root = os.path.relpath(root, REPO)
        rel_root = "" if rel_root == "." else rel_root + "/"
        dirs[:] = [d for d in dirs if not _ignored(rel_root + d + "/x", patterns)]
        for name in files:
            rel = rel_root + name
            if not _ignored(rel, patterns):
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / rel, dest / rel)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """
    The uploaded app directory, with the package installed as the python
    buildpack installs it, in ``app/.cf-python`` (not uploaded).
    """
    base = tmp_path_factory.mktemp("cf")
    app = base / "app"
    app.mkdir()
    cf_upload(app)
    venv = base / "python"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "-r", "requirements.txt"],
        cwd=app,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    return app


def _bin(app: Path) -> Path:
    return app.parent / "python" / "bin"


def test_upload_leaves_out_local_state_and_keeps_the_package(app):
    assert (app / "setup.py").exists() and (app / "apicache" / "tap.py").exists()
    assert (app / "twisted" / "plugins" / "apicache_plugin.py").exists()
    assert (app / "Procfile").exists() and (app / "requirements.txt").exists()
    assert not (app / ".venv").exists() and not (app / "tests").exists()


def test_buildpack_install_finds_the_plugin(app):
    """The requirements.txt install is a regular one: twistd lists apicache."""
    out = subprocess.run(
        [str(_bin(app) / "twistd"), "--help"], cwd=app, capture_output=True, text=True, check=True
    ).stdout
    assert any(line.split()[:1] == ["apicache"] for line in out.splitlines()), out
    site = subprocess.run(
        [str(_bin(app) / "python"), "-c", "import apicache, sys; print(apicache.__file__)"],
        cwd="/",
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(app) not in site  # installed, not pointing back at the sources


class CloudFoundryApp:
    """The Procfile's web process, started as Cloud Foundry starts it."""

    def __init__(self, app: Path, upstream: UpstreamStub, tokens: TokenEndpoint) -> None:
        self.port = free_port()
        self.dead_broker = free_port()
        web = next(ln for ln in (app / "Procfile").read_text().splitlines() if ln.startswith("web:"))
        self.command = web.split(":", 1)[1].strip()
        self.env = {
            "PATH": f"{_bin(app)}:/usr/bin:/bin",
            "HOME": str(app),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            "PORT": str(self.port),
            "APICACHE_UPSTREAM_URL": upstream.url + "/api",
            "VCAP_APPLICATION": json.dumps(
                {"application_name": "apicache", "instance_index": 0, "space_name": "test", "limits": {"mem": 768}}
            ),
            "VCAP_SERVICES": vcap_services(
                api_key=API_KEY,
                brokers=f"127.0.0.1:{self.dead_broker}",
                token_url=tokens.url,
                ca_cert="",
            ),
        }
        self.stdout_path = app.parent / f"stdout-{self.port}.log"
        self.stderr_path = app.parent / f"stderr-{self.port}.log"
        self._out = open(self.stdout_path, "wb")
        self._err = open(self.stderr_path, "wb")
        # Cloud Foundry runs the start command with bash, which execs it
        self.proc = subprocess.Popen(
            ["bash", "-c", self.command], cwd=app, env=self.env, stdout=self._out, stderr=self._err
        )

        def healthy() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"exited {self.proc.returncode}: {self.stderr()} {self.stdout()}")
            try:
                return self.request("GET", "/healthz", timeout=1)[0] == 200
            except OSError:
                return False

        wait_until(healthy, 20, 0.05, lambda: f"/healthz to answer 200: {self.stdout()}")

    def request(self, method: str, path: str, headers: dict[str, str] | None = None, timeout: float = 10):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, headers=headers or {})
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout().splitlines()]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._out.close()
        self._err.close()


@pytest.fixture
def tokens() -> Iterator[TokenEndpoint]:
    t = TokenEndpoint().start()
    yield t
    t.stop()


@pytest.fixture
def cf(app: Path, upstream: UpstreamStub, tokens: TokenEndpoint) -> Iterator[CloudFoundryApp]:
    a = CloudFoundryApp(app, upstream, tokens)
    yield a
    a.close()


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_procfile_web_command_serves_as_on_cloud_foundry(cf, upstream, tokens):
    path = "/server/object(42)/header"
    status, _, _ = cf.request("GET", "/healthz")
    assert status == 200

    # the api key comes from the cache-key service
    assert cf.request("GET", path, {"org_id": "t1"})[0] == 401
    assert cf.request("GET", path, {"org_id": "t1", "api-key": "wrong"})[0] == 401
    key = {"api-key": API_KEY, "org_id": "t1", "authorization": "Bearer user-token"}
    first = cf.request("GET", path, {**key, "traceparent": TRACEPARENT})
    second = cf.request("GET", path, key)
    assert (first[0], first[1]["x-cache"]) == (200, "MISS")
    assert (second[0], second[1]["x-cache"]) == (200, "HIT")

    # the caller's trace reaches the upstream, with apicache's span as parent
    sent = upstream.seen[0].headers["traceparent"]
    version, trace_id, parent, flags = sent.split("-")
    assert (version, trace_id, flags) == ("00", TRACE_ID, "01")
    assert parent != "00f067aa0ba902b7" and len(parent) == 16

    status, headers, body = cf.request("GET", "/metrics", {"api-key": API_KEY})
    assert status == 200 and headers["content-type"].startswith("text/plain")
    s = _samples(body.decode())
    assert s[("apicache_requests_total", (("cache", "HIT"), ("route", "object"), ("status", "200")))] == 1
    assert s[("apicache_requests_total", (("cache", "MISS"), ("route", "object"), ("status", "200")))] == 1
    assert s[("apicache_tenant_hits_total", (("tenant", "t1"),))] == 1
    assert s[("apicache_tenant_entries", (("tenant", "t1"),))] == 1
    assert s[("apicache_upstream_latency_seconds_count", ())] == 1
    assert s[("apicache_store_entries", ())] == 1

    # the Kafka binding's OAuth token was fetched with the bound credentials
    wait_until(lambda: tokens.tokens, 10, 0.05, "a token to be fetched")
    assert tokens.requests[0][0].startswith("Basic ")

    cf.proc.send_signal(signal.SIGTERM)
    assert cf.proc.wait(15) in (0, -signal.SIGTERM)

    # every stdout line is one JSON object, twistd's own included
    lines = cf.lines()
    messages = [ln["message"] for ln in lines]
    assert any("starting up" in m for m in messages)
    assert any(m == "Server Shut Down." for m in messages)
    access = [ln for ln in lines if ln.get("path") == path]
    assert [ln["status"] for ln in access] == [401, 401, 200, 200]
    assert access[2]["trace_id"] == TRACE_ID and access[2]["cache"] == "MISS"
    assert all(len(ln.get("trace_id", "")) == 32 for ln in access)
    assert any("server.api_keys" in m and "VCAP_SERVICES" in m for m in messages)
    everything = cf.stdout() + cf.stderr()
    for secret in [API_KEY, "kafka-client-secret", "user-token", *tokens.tokens]:
        assert secret not in everything
    assert cf.stderr() == ""


def test_sigterm_lets_a_slow_request_finish(cf, upstream):
    slow = "/server/object(slow)/header"
    upstream.set("/api/object(slow)/header", delay=2.0)
    result: list[Any] = []

    def call() -> None:
        result.append(cf.request("GET", slow, {"api-key": API_KEY, "org_id": "t1"}, timeout=15))

    caller = threading.Thread(target=call)
    caller.start()
    wait_until(lambda: upstream.calls("/api/object(slow)/header"), 5, 0.02, "the slow request to reach the upstream")
    signalled = time.monotonic()
    cf.proc.send_signal(signal.SIGTERM)

    time.sleep(0.5)
    with pytest.raises(OSError):  # no longer accepting
        cf.request("GET", "/healthz", timeout=2)
    caller.join(15)
    status = cf.proc.wait(15)
    took = time.monotonic() - signalled

    assert result and result[0][0] == 200 and result[0][1]["x-cache"] == "MISS"
    assert status in (0, -signal.SIGTERM)
    assert took < 6.0  # wall clock: the real daemon exits within server.shutdown_grace
    messages = [ln["message"] for ln in cf.lines()]
    order = [
        next(i for i, m in enumerate(messages) if m.startswith("Received SIGTERM")),
        next(i for i, m in enumerate(messages) if m.startswith("waiting up to")),
        next(i for i, m in enumerate(messages) if m == f"GET {slow} 200"),
        next(i for i, m in enumerate(messages) if m == "Server Shut Down."),
    ]
    assert order == sorted(order), messages
