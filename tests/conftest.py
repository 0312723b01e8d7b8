"""
Shared fixtures: a loopback upstream, and a factory for real daemons
(``twistd -n apicache``) configured against it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from daemon_support import API_KEY, daemon_config
from hypothesis import HealthCheck, settings

from apicache.harness.demo import UpstreamStub
from apicache.harness.launchers import Daemon

# Redis fixtures (a private redis-server, RedisStore factories; a Redis
# Cluster and sentinels, and their stores)
pytest_plugins = ["redis_support", "scaled_support"]

#: Under CI=true (.ci/run) a test whose service is missing fails instead of
#: skipping: a run that skipped the Redis contract must not look green.
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

#: Skips that stay skips under CI: opt-in runs, not missing services.
#: Each entry is a piece of the skip reason.
OPT_IN_SKIPS = (
    # about 30 s of kill -9 under load: `make chaos`, not `make test`
    "APICACHE_CHAOS",
)


def _skip_reason(longrepr: Any) -> str:
    # a skip's longrepr is (path, line, "Skipped: reason")
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def _fail_skip_under_ci(report: pytest.TestReport | pytest.CollectReport) -> None:
    if not (IN_CI and report.skipped) or hasattr(report, "wasxfail"):
        return
    reason = _skip_reason(report.longrepr)
    if any(opt_in in reason for opt_in in OPT_IN_SKIPS):
        return
    report.outcome = "failed"
    report.longrepr = (
        f"CI=true: this test would be skipped ({reason}); under CI a missing service fails the run. "
        "Install it (.ci/run installs what the tests need) or, for an opt-in run, add it to OPT_IN_SKIPS in tests/conftest.py."
    )


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    _fail_skip_under_ci(outcome.get_result())  # type: ignore[attr-defined]


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    # a module that skips itself at import (pytest.importorskip, allow_module_level)
    outcome = yield
    _fail_skip_under_ci(outcome.get_result())  # type: ignore[attr-defined]


settings.register_profile(
    "ci", derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("dev", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

@pytest.fixture
def upstream() -> Iterator[UpstreamStub]:
    stub = UpstreamStub().start()
    yield stub
    stub.stop()


@pytest.fixture
def make_daemon(tmp_path: Path, upstream: UpstreamStub) -> Iterator[Callable[..., Daemon]]:
    """
    Return ``make(extra_config=None, *, start=True, env=None, ...)`` giving a
    started L{Daemon}; every daemon is stopped at the end of the test.
    """
    daemons: list[Daemon] = []

    def make(
        extra: dict[str, Any] | None = None,
        *,
        start: bool = True,
        env: dict[str, str] | None = None,
        api_key: str | None = API_KEY,
        upstream_url: str | None = None,
        port: int | None = None,
        extra_args: list[str] | None = None,
    ) -> Daemon:
        cfg = daemon_config(upstream_url or upstream.url, extra)
        path = tmp_path / f"apicache-{len(daemons)}.toml"
        path.write_text(tomli_w.dumps(cfg))
        d = Daemon(str(path), port=port, env=env, api_key=api_key, extra_args=extra_args)
        daemons.append(d)
        if start:
            d.start()
        return d

    yield make
    for d in daemons:
        d.kill()
