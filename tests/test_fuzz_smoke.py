"""
A short run of the fuzz targets (tests/fuzz/targets.py) in ``make test``;
``make fuzz`` runs them for ``FUZZ_SECONDS``.
"""

from __future__ import annotations

import pytest
from fuzz.targets import TARGETS
from hypothesis import HealthCheck, given, settings


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_fuzz_target_holds_its_properties(name: str) -> None:
    target, strategies = TARGETS[name]
    settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))(given(**strategies)(target))()
