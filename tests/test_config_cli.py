"""
Version 3 configuration errors through the real command line (SPEC.md
sections 1 and 2): one line on stderr naming the file and the key, exit
status 1, nothing listening.  The v1/v2 cases are in tests/test_cli.py.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

# starts real twistd processes
pytestmark = pytest.mark.integration

KEY = '[server]\napi_keys = ["k"]\n'
UP = '[upstream]\nbase_url = "http://127.0.0.1:9"\n'

BAD = {
    "hmac algorithm": (KEY + '[auth]\njwks = "/nonexistent/jwks.json"\nalgorithms = ["HS256"]\n', "auth.algorithms[0]"),
    "reserved path": (
        KEY + UP + '[[routes]]\ntype = "health"\npath = "/healthz"\nupstream = "/health"\n',
        "routes[0].path: route 'health'",
    ),
    "range forwarded": (KEY + UP + 'forward_headers = ["range"]\n', "upstream.forward_headers[0]"),
}


def _twistd() -> str:
    # the twistd of the running Python's environment, as users run it
    return os.path.join(os.path.dirname(sys.executable), "twistd")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("name", list(BAD))
def test_a_bad_v3_key_is_one_line_and_exit_1(tmp_path: Path, name: str) -> None:
    text, expected = BAD[name]
    path = tmp_path / "apicache.toml"
    path.write_text(text)
    port = _free_port()
    env = {"PATH": "/usr/bin:/bin"}
    if os.environ.get("PYTHONPATH"):
        # a worktree's code (and its twistd plugin) wins over the installed package
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    p = subprocess.run(
        [_twistd(), "-n", "--pidfile=", "apicache", "--config", str(path),
         "--listen", f"tcp:{port}:interface=127.0.0.1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
    )
    assert p.returncode == 1, p.stderr
    lines = p.stderr.splitlines()
    assert len(lines) == 1, p.stderr
    assert str(path) in lines[0] and expected in lines[0]
    assert "Usage" not in p.stderr
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0
