"""
Logs: one JSON object per stdout line, filtered by server.log_level.
"""

from __future__ import annotations

import io
import json

import pytest
from twisted.logger import Logger

from apicache.ops.logs import JSONLineObserver, json_log_observer


@pytest.mark.integration
def test_log_level_warn_leaves_out_info_lines(make_daemon):
    d = make_daemon({"server": {"log_level": "warn"}, "routes": []})
    assert d.get("/healthz").status == 200
    assert d.stop() in (0, -15)
    lines = d.log_lines()
    assert lines, "the warning about no routes is missing"
    assert {ln["level"] for ln in lines} <= {"warn", "error", "critical"}
    assert any("no routes are configured" in ln["message"] for ln in lines)


@pytest.mark.integration
def test_default_log_level_writes_json_access_lines_with_trace_ids(make_daemon):
    d = make_daemon()
    r = d.get("/server/object(1)/header", traceparent="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    assert r.status == 200
    assert d.stop() in (0, -15)
    lines = d.log_lines()  # raises unless every line is JSON
    assert lines[0]["message"].startswith("twistd ") and "starting up" in lines[0]["message"]
    access = [ln for ln in lines if ln.get("path") == "/server/object(1)/header"]
    assert access[0]["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert access[0]["level"] == "info"


def test_standard_library_records_become_twisted_events():
    import logging

    from twisted.logger import globalLogPublisher

    from apicache.ops.logs import capture_stdlib_logging

    seen: list[dict] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        capture_stdlib_logging("info")
        logging.getLogger("some.library").warning("disk %s", "full")
        logging.getLogger("some.library").debug("not at info")
    finally:
        globalLogPublisher.removeObserver(seen.append)
        root = logging.getLogger()
        for h in [h for h in root.handlers if type(h).__name__ == "_ToTwistedLogger"]:
            root.removeHandler(h)
    mine = [e for e in seen if e.get("log_namespace") == "some.library"]
    assert [e["stdlib_message"] for e in mine] == ["disk full"]
    assert mine[0]["log_level"].name == "warn"


def test_each_event_is_one_json_line_with_time_level_message():
    out = io.StringIO()
    log = Logger(observer=JSONLineObserver(out), namespace="apicache.test")
    log.info("served {tenant}", tenant="t1", status=200, obj=object())
    log.warn("two\nlines")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert first["level"] == "info"
    assert first["message"] == "served t1"
    assert (first["tenant"], first["status"]) == ("t1", 200)
    assert first["time"].endswith("+00:00")
    assert "obj" not in first
    assert json.loads(lines[1])["message"] == "two\nlines"


def test_secret_fields_are_never_written():
    out = io.StringIO()
    log = Logger(observer=JSONLineObserver(out))
    log.info("hello", authorization="Bearer SECRET", api_key="SECRET", token="SECRET", password="SECRET")
    assert "SECRET" not in out.getvalue()


def test_failures_carry_a_traceback():
    out = io.StringIO()
    log = Logger(observer=JSONLineObserver(out))
    try:
        raise ZeroDivisionError("boom")
    except ZeroDivisionError:
        log.failure("oops")
    line = json.loads(out.getvalue())
    assert line["level"] == "critical"
    assert "ZeroDivisionError" in line["traceback"]


def test_lines_below_the_level_are_left_out():
    out = io.StringIO()
    observer = json_log_observer("warn", out)
    log = Logger(observer=observer)
    log.info("quiet")
    log.error("loud")
    assert [json.loads(x)["message"] for x in out.getvalue().splitlines()] == ["loud"]
