"""
JSON log lines.
"""

import io
import json

from twisted.logger import Logger

from apicache.logs import JSONLineObserver, json_log_observer


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


def test_level_filter():
    out = io.StringIO()
    observer = json_log_observer("warn", out)
    log = Logger(observer=observer)
    log.info("quiet")
    log.error("loud")
    assert [json.loads(x)["message"] for x in out.getvalue().splitlines()] == ["loud"]
