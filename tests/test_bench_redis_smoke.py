"""
``make bench-redis`` (bench/redis_ops.py) runs and reports every operation:
a short run on one private redis-server.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from redis_support import needs_redis_server

pytestmark = [pytest.mark.integration, needs_redis_server]

ROOT = Path(__file__).resolve().parent.parent


def test_the_redis_bench_reports_every_operation(tmp_path: Path) -> None:
    out = tmp_path / "ops.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "redis_ops.py"), "--targets", "single", "--ops", "60",
         "--json", str(out)],
        capture_output=True, timeout=120, cwd=ROOT,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rows = {r["op"]: r for r in json.loads(out.read_text())["single"]}
    assert set(rows) == {"miss", "hit", "purge", "tag-tenant", "purge-all", "tag-all", "event", "memory"}
    assert rows["hit"]["calls"] == 1.0 and rows["hit"]["errors"] == 0
    assert rows["miss"]["calls"] == 3.0
    assert rows["memory"]["bytes_per_entry"] > 1024
