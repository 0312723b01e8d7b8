"""
Fuzz targets (issue 10): see L{fuzz.targets}; ``make fuzz`` runs them for a
bounded time (L{fuzz.run}), ``tests/test_fuzz_smoke.py`` for a few seconds.
"""
