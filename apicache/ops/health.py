"""
Readiness: the dependencies the daemon needs to be fully useful, each a
named check that ``/readyz`` reports.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["Readiness"]


class Readiness:
    """
    Named readiness checks (``"kafka"``, ``"redis"``), each a callable
    returning whether that dependency works now.  Checks must be cheap: they
    report state kept up to date elsewhere, they don't probe.
    """

    def __init__(self) -> None:
        self._checks: dict[str, Callable[[], bool]] = {}

    def add(self, name: str, check: Callable[[], bool]) -> None:
        """
        Register ``check`` under ``name``.
        """
        self._checks[name] = check

    def failing(self) -> list[str]:
        """
        Return the names of the checks failing now, sorted.
        """
        return sorted(name for name, check in self._checks.items() if not check())
