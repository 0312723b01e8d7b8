"""
``bench/`` still runs (issue 5): a tiny run of every part that needs no
extra tool.  Not a timed test: it checks that the benchmark works and that
its checks pass (one upstream call for concurrent misses, a bounded flood),
not how fast anything is.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

# starts real processes; each benchmark run has a limit of its own of up to 300 s
pytestmark = [pytest.mark.integration, pytest.mark.timeout(330)]

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench", "run.py")


def test_bench_runs_with_tiny_settings():
    out = subprocess.run(
        [sys.executable, BENCH, "--quick", "--no-wrk", "--no-nginx", "--workers", "0"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "skipped (--no-wrk)" in text and "skipped (--no-nginx)" in text
    assert "concurrent misses on one key: 1 upstream call(s)" in text
    assert "cached 1 KiB entries" in text and "overhead" in text
    assert "flood of unique keys" in text and "within max_bytes" in text


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)")
def test_bench_drives_wrk_when_installed():
    out = subprocess.run(
        [sys.executable, BENCH, "--quick", "--throughput-only", "--no-nginx"],
        capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "| apicache (access log off)" in out.stdout
    assert "| apicache, new traceparent each request" in out.stdout
    assert "errors)" not in out.stdout, out.stdout  # every answer 2xx or 304
    assert "apicache / bare twisted.web:" in out.stdout


def test_noisy_neighbour_bench_runs_with_tiny_settings():
    script = os.path.join(os.path.dirname(BENCH), "noisy_neighbour.py")
    out = subprocess.run(
        [sys.executable, script, "--keys", "20", "--period", "1", "--before", "1", "--flood", "3",
         "--connections", "4", "--no-wrk"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    assert "with Python client, 4 connections" in text
    assert "evictions by reason: " in text and "tenant bytes: " in text
    # the victim is far within its fair share: every answer during the flood is a hit
    assert "kept 1.000 of its hit ratio during the flood (goal >= 0.95: met)" in text, text
