"""
Run the fuzz targets for a bounded time: ``python tests/fuzz/run.py
--seconds 300`` (``make fuzz``, ``FUZZ_SECONDS``).  Each target runs in
rounds of Hypothesis examples with fresh random seeds until its share of
the time is used; the first failure is printed (shrunk) and the exit
status is 1.  Prints, per target, the seconds spent and the inputs tried.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

_TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the worktree's apicache (not an installed copy) and the tests' packages
sys.path[:0] = [os.path.dirname(_TESTS), _TESTS]

from hypothesis import HealthCheck, given, settings  # noqa: E402

from fuzz.targets import TARGETS, TRIED  # noqa: E402


def run(name: str, seconds: float, examples: int = 500) -> int:
    """
    Run target ``name`` for about ``seconds``; return the inputs tried.

    @raise Exception: the property failed (Hypothesis's shrunk example).
    """
    target, strategies = TARGETS[name]
    test = settings(
        max_examples=examples,
        database=None,
        derandomize=False,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )(given(**strategies)(target))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        test()
    return TRIED[name]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("FUZZ_SECONDS", 300)))
    parser.add_argument("--target", action="append", choices=sorted(TARGETS))
    args = parser.parse_args(argv)
    names = args.target or list(TARGETS)
    share = args.seconds / len(names)
    failed = False
    for name in names:
        started = time.monotonic()
        try:
            tried = run(name, share)
            outcome = "ok"
        except Exception as e:  # noqa: BLE001 - report every target's failure
            tried, outcome, failed = TRIED[name], f"FAILED: {e!r}"[:2000], True
        print(f"{name}: {time.monotonic() - started:.1f} s, {tried} inputs, {outcome}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
