"""
The twistd plugin's options and wiring.
"""

import pytest
from twisted.python import usage

from apicache.config import load_config, parse_config
from apicache.tap import DEFAULT_LISTEN, Options, choose_listen

CONFIG = parse_config({"server": {"api_keys": ["k"], "listen": "tcp:9999"}}, "c.toml", {})


def test_listen_comes_from_the_option_then_the_file_then_port_then_loopback():
    defaults = load_config(None, {})
    assert choose_listen("tcp:1", CONFIG, {"PORT": "2"}) == "tcp:1"
    assert choose_listen(None, CONFIG, {"PORT": "2"}) == "tcp:9999"
    assert choose_listen(None, defaults, {"PORT": "2"}) == "tcp:2"
    assert choose_listen(None, defaults, {}) == DEFAULT_LISTEN == "tcp:8080:interface=127.0.0.1"


def test_options_are_parsed():
    o = Options()
    o.parseOptions(["--config", "x.toml", "--listen", "tcp:1234:interface=127.0.0.1"])
    assert (o["config"], o["listen"], o["workers"]) == ("x.toml", "tcp:1234:interface=127.0.0.1", 1)


@pytest.mark.parametrize("argv", [["--listen", "nonsense:1"], ["--workers", "0"], ["--workers", "x"], ["--bogus"]])
def test_bad_options_are_usage_errors(argv):
    with pytest.raises(usage.UsageError):
        Options().parseOptions(argv)


def test_build_wires_an_http_service():
    from twisted.internet.endpoints import TCP4ServerEndpoint

    from apicache.tap import build

    config = parse_config(
        {
            "server": {"api_keys": ["k"]},
            "upstream": {"base_url": "http://127.0.0.1:9"},
            "routes": [{"type": "o", "path": "/o/<id>", "upstream": "/o/{id}"}],
        },
        "c.toml",
        {},
    )
    from twisted.internet import reactor

    daemon = build(config, reactor, TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"))
    names = [type(s).__name__ for s in daemon.service]
    assert "HTTPService" in names
    assert daemon.api.registry.routes.keys() == {"o"}
    assert daemon.registry is daemon.api.registry
    assert daemon.kafka_credentials is None


def test_bad_listen_in_the_file_is_a_configuration_error(tmp_path, capsys, monkeypatch):
    from apicache.tap import makeService

    monkeypatch.delenv("VCAP_SERVICES", raising=False)
    path = tmp_path / "c.toml"
    path.write_text('[server]\napi_keys = ["k"]\nlisten = "nonsense:1"\n')
    o = Options()
    o.parseOptions(["--config", str(path)])
    with pytest.raises(SystemExit) as e:
        makeService(o)
    assert e.value.code == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and str(path) in err[0] and "server.listen" in err[0]


def test_version_option_prints_apicache_version(capsys):
    from apicache import __version__

    with pytest.raises(SystemExit) as e:
        Options().parseOptions(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == f"apicache {__version__}\n"


def test_single_process_start_up_says_what_listens(tmp_path, monkeypatch):
    from apicache.daemon.service import GarbageCollectorTuning, StartupNotes
    from apicache.tap import makeService

    monkeypatch.delenv("VCAP_SERVICES", raising=False)
    monkeypatch.delenv("APICACHE_WORKER", raising=False)
    path = tmp_path / "c.toml"
    path.write_text('[server]\napi_keys = ["k"]\n')
    o = Options()
    o.parseOptions(["--config", str(path), "--listen", "tcp:0:interface=127.0.0.1"])
    root = makeService(o)
    notes = [s for s in root if isinstance(s, StartupNotes)]
    assert len(notes) == 1 and notes[0].serving == "HTTP on tcp:0:interface=127.0.0.1"
    assert isinstance(list(root)[-1], GarbageCollectorTuning)


def test_configuration_warnings_are_logged_once_at_start_up():
    from twisted.logger import globalLogPublisher

    from apicache.config import parse_config
    from apicache.daemon.service import StartupNotes

    config = parse_config(
        {"server": {"api_keys": ["k"]}, "upstream": {"forward_headers": ["accept", "accept-encoding"]}}, "c.toml", {}
    )
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        StartupNotes(config, "HTTP on tcp:0").startService()
    finally:
        globalLogPublisher.removeObserver(events.append)
    warned = [e for e in events if "accept-encoding" in str(e.get("warning", ""))]
    assert len(warned) == 1 and warned[0]["log_level"].name == "warn"
