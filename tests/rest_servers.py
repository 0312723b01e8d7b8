"""
Launchers for maintained REST servers nobody here wrote, run as upstreams
for the integration tests: json-server (npm, pinned in
``tests/upstreams/json-server``) and httpbin (PyPI, served by waitress).
Each runs as a subprocess on a free loopback port.
"""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from apicache.harness.launchers import free_port
from apicache.harness.polling import wait_until

__all__ = ["RestServer", "json_server", "httpbin", "call", "Answer"]

JSON_SERVER_DIR = Path(__file__).parent / "upstreams" / "json-server"


class RestServer:
    """
    A server subprocess answering on ``url`` (no trailing slash).
    """

    def __init__(self, argv: list[str], port: int, ready_path: str, cwd: Path, log: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log
        self._log = open(log, "ab")
        self.proc = subprocess.Popen(argv, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT)
        self._wait(ready_path)

    def _wait(self, path: str, wait: float = 30.0) -> None:
        def answering() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
                conn.request("GET", path)
                if conn.getresponse().status < 500:
                    conn.close()
                    return True
            except OSError:
                pass
            return False

        wait_until(answering, wait, 0.1, lambda: f"the server to answer {path}: {self.log_path.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def json_server(tmp: Path, db: dict[str, Any], quiet: bool = True) -> RestServer:
    """
    Start json-server 0.17.4 over ``db`` (written to ``tmp/db.json``),
    installing it first with ``npm ci`` if ``make install-test`` has not.
    Unless ``quiet``, it logs one line per request it answered (morgan's
    ``dev`` format: method, path, status) to ``log_path``.
    """
    binary = JSON_SERVER_DIR / "node_modules" / ".bin" / "json-server"
    if not binary.exists():
        npm = shutil.which("npm")
        if npm is None or shutil.which("node") is None:
            pytest.skip("json-server needs Node.js and npm, which are not installed here")
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=JSON_SERVER_DIR, check=True, timeout=600)
    (tmp / "db.json").write_text(json.dumps(db))
    port = free_port()
    argv = [str(binary), "--host", "127.0.0.1", "--port", str(port), *(["--quiet"] if quiet else []), "db.json"]
    return RestServer(argv, port, "/db", tmp, tmp / "json-server.log")


def httpbin(tmp: Path) -> RestServer:
    """
    Start httpbin (the ``test`` extra installs it) under waitress.
    """
    pytest.importorskip("httpbin", reason="httpbin is in the test extra: pip install '.[test]'")
    pytest.importorskip("waitress", reason="waitress is in the test extra: pip install '.[test]'")
    port = free_port()
    argv = [sys.executable, "-m", "waitress", f"--listen=127.0.0.1:{port}", "httpbin:app"]
    return RestServer(argv, port, "/get", tmp, tmp / "httpbin.log")


class Answer:
    """An answer: status, every header (lower-case names, repeats kept), body."""

    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        """Return the values of ``name``, joined with ``, ``, or ``None``."""
        values = [v for k, v in self.headers if k == name]
        return ", ".join(values) if values else None

    def json(self) -> Any:
        return json.loads(self.body)


def call(port: int, method: str, path: str, headers: dict[str, str] | None = None, body: bytes | None = None) -> Answer:
    """
    Send one request to 127.0.0.1:``port`` and return its L{Answer}.
    """
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        if body is not None:
            conn.putheader("content-length", str(len(body)))
        conn.endheaders(body)
        r = conn.getresponse()
        return Answer(r.status, [(k.lower(), v) for k, v in r.getheaders()], r.read())
    finally:
        conn.close()
