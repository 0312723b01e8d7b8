"""
Logs: one JSON object per stdout line, filtered by server.log_level.
"""

from __future__ import annotations


def test_log_level_warn_leaves_out_info_lines(make_daemon):
    d = make_daemon({"server": {"log_level": "warn"}, "routes": []})
    assert d.get("/healthz").status == 200
    assert d.stop() in (0, -15)
    lines = d.log_lines()
    assert lines, "the warning about no routes is missing"
    assert {ln["level"] for ln in lines} <= {"warn", "error", "critical"}
    assert any("no routes are configured" in ln["message"] for ln in lines)


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
