"""Caching decisions and the cache core."""

# --- bridge for the rfc branch only: at the merge with issue 18's layout,
# take the layout branch's version of this file and drop everything below.
# This package shadows the flat module apicache/cache.py until the layout
# moves it in here, so that module is loaded from its file and its names
# served from this package: ``from apicache.cache import CacheRegistry``
# keeps working on this branch in the meantime.
import importlib.util as _util
import sys as _sys
from pathlib import Path as _Path
from typing import Any as _Any

_FLAT = _Path(__file__).resolve().parent.parent / "cache.py"
_flat_module = None
if _FLAT.exists():
    _spec = _util.spec_from_file_location(__name__ + "._flat", _FLAT)
    assert _spec is not None and _spec.loader is not None
    _flat_module = _util.module_from_spec(_spec)
    _sys.modules[_spec.name] = _flat_module
    _spec.loader.exec_module(_flat_module)


def __getattr__(name: str) -> _Any:
    if _flat_module is not None and not name.startswith("__"):
        try:
            return getattr(_flat_module, name)
        except AttributeError:
            pass
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
