"""
The command line (SPEC.md section 1): configuration errors are one line on
stderr and exit status 1, with nothing listening; option errors are usage
errors.  Each case runs the installed ``twistd`` directly.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from apicache.harness.launchers import free_port, twistd_path

# starts real processes (make test-fast leaves it out)
pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
ROUTE = '[[routes]]\ntype = "object"\npath = "/o/<id>"\nupstream = "/o/{id}"\n'
KEY = '[server]\napi_keys = ["k"]\n'
UP = '[upstream]\nbase_url = "http://127.0.0.1:9"\n'

BAD = {
    "unknown key": (KEY + "bogus = 1\n", "server.bogus"),
    "wrong type": (KEY + "max_tenants = \"many\"\n", "server.max_tenants"),
    "bad toml": ("[server\n", "not valid TOML"),
    "unset variable": ('[server]\napi_keys = ["${APICACHE_TEST_UNSET}"]\n', "APICACHE_TEST_UNSET"),
    "template parameter": (KEY + UP + ROUTE.replace("{id}", "{name}"), "routes[0].upstream"),
    "forbidden header": (KEY + '[upstream]\nforward_headers = ["host"]\n', "upstream.forward_headers[0]"),
    "no api key": (UP + ROUTE, "server.api_keys"),
    "no base_url": (KEY + ROUTE, "upstream.base_url"),
    "unknown table": (KEY + "[server.x]\n", "server.x"),
    # these died with a traceback, or served with an unusable upstream
    "bad redis url": (KEY + '[store]\nbackend = "redis"\nredis_url = "redis://127.0.0.1:port/0"\n', "store.redis_url"),
    "bad redis db": (KEY + '[store]\nbackend = "redis"\nredis_url = "redis://127.0.0.1/first"\n', "store.redis_url"),
    "bad upstream port": (KEY + '[upstream]\nbase_url = "http://127.0.0.1:port"\n' + ROUTE, "upstream.base_url"),
}


def refused(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture(scope="module")
def bad_runs(tmp_path_factory):
    """Start every bad configuration at once; return name -> (status, stderr, port)."""
    tmp = tmp_path_factory.mktemp("bad")
    procs = {}
    for name, (text, _) in BAD.items():
        path = tmp / (name.replace(" ", "_") + ".toml")
        path.write_text(text)
        port = free_port()
        argv = [twistd_path(), "-n", "--pidfile=", "apicache", "--config", str(path), "--listen", f"tcp:{port}:interface=127.0.0.1"]
        env = {"PATH": "/usr/bin:/bin"}
        procs[name] = (subprocess.Popen(argv, cwd=tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE), path, port)
    out = {}
    for name, (p, path, port) in procs.items():
        stdout, stderr = p.communicate(timeout=60)
        out[name] = (p.returncode, stderr.decode(), str(path), port)
    return out


@pytest.mark.parametrize("name", list(BAD))
def test_bad_configuration_is_one_line_and_exit_1(bad_runs, name):
    status, stderr, path, port = bad_runs[name]
    assert status == 1
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert path in lines[0]
    assert BAD[name][1] in lines[0]
    assert "Usage" not in stderr
    assert refused(port)


def test_shipped_example_without_a_key_is_refused(tmp_path):
    shutil.copy(ROOT / "apicache.toml", tmp_path / "apicache.toml")
    p = subprocess.run(
        [twistd_path(), "-n", "--pidfile=", "apicache", "--listen", f"tcp:{free_port()}:interface=127.0.0.1"],
        cwd=tmp_path, env={"PATH": "/usr/bin:/bin"}, capture_output=True, timeout=60,
    )
    assert p.returncode == 1
    assert p.stderr.decode().splitlines() == [
        p.stderr.decode().strip()
    ] and "apicache.toml: server.api_keys" in p.stderr.decode()


def test_unreadable_ssl_key_in_server_listen_is_one_line(tmp_path):
    port = free_port()
    path = tmp_path / "ssl.toml"
    path.write_text(KEY + f'listen = "ssl:{port}:interface=127.0.0.1:privateKey={tmp_path}/missing.pem"\n')
    p = subprocess.run(
        [twistd_path(), "-n", "--pidfile=", "apicache", "--config", str(path)],
        cwd=tmp_path, env={"PATH": "/usr/bin:/bin"}, capture_output=True, timeout=60,
    )
    assert p.returncode == 1
    lines = p.stderr.decode().splitlines()
    assert len(lines) == 1 and "server.listen" in lines[0] and str(path) in lines[0], p.stderr.decode()
    assert refused(port)


def test_bad_option_is_a_usage_error(tmp_path):
    p = subprocess.run(
        [twistd_path(), "-n", "--pidfile=", "apicache", "--listen", "nonsense:1"],
        cwd=tmp_path, capture_output=True, timeout=60,
    )
    assert p.returncode != 0
    assert "--listen" in (p.stdout + p.stderr).decode()


def test_help_lists_the_options(tmp_path):
    p = subprocess.run([twistd_path(), "apicache", "--help"], cwd=tmp_path, capture_output=True, timeout=60)
    text = p.stdout.decode()
    assert p.returncode == 0
    for option in ("--config", "--listen", "--workers"):
        assert option in text


@pytest.mark.parametrize("argv", [["apicache", "--version"], ["-n", "--pidfile=", "apicache", "--version"]])
def test_version_prints_apicache_and_exits_0(tmp_path, argv):
    """``--version`` after ``apicache`` is apicache's, not Twisted's."""
    from apicache import __version__

    p = subprocess.run([twistd_path(), *argv], cwd=tmp_path, capture_output=True, timeout=60)
    assert p.returncode == 0
    assert p.stdout.decode() == f"apicache {__version__}\n"
    assert p.stderr == b""


@pytest.mark.parametrize("workers", [[], ["--workers", "2"]])
def test_port_in_use_is_one_line_naming_the_endpoint_and_exit_1(tmp_path, workers):
    (tmp_path / "c.toml").write_text(KEY)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"tcp:{taken.getsockname()[1]}:interface=127.0.0.1"
        p = subprocess.run(
            [twistd_path(), "-n", "--pidfile=", "apicache", "--config", "c.toml", "--listen", listen, *workers],
            cwd=tmp_path, env={"PATH": "/usr/bin:/bin"}, capture_output=True, timeout=60,
        )
    assert p.returncode == 1
    assert p.stderr.decode() == f"apicache: cannot listen on {listen}: Address already in use\n"
    assert "Traceback" not in p.stdout.decode()


def test_port_in_use_leaves_no_pid_file(tmp_path):
    """twistd's own start-up clean-up still runs: its pid file goes."""
    (tmp_path / "c.toml").write_text(KEY)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"tcp:{taken.getsockname()[1]}:interface=127.0.0.1"
        p = subprocess.run(
            [twistd_path(), "-n", "--pidfile=apicache.pid", "apicache", "--config", "c.toml", "--listen", listen],
            cwd=tmp_path, env={"PATH": "/usr/bin:/bin"}, capture_output=True, timeout=60,
        )
    assert p.returncode == 1
    assert len(p.stderr.decode().splitlines()) == 1
    assert not (tmp_path / "apicache.pid").exists()
