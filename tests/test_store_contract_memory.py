"""
The store contract of tests/store_behaviours.py, on MemoryStore: the same
tests RedisStore passes, so the contract is the interface's, not Redis's.
"""

from __future__ import annotations

import pytest
from store_behaviours import ENTRY_LIMIT, StoreContract

from apicache.store.memory import MemoryStore


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore(StoreContract.local_budget, ENTRY_LIMIT)


class TestMemoryStoreContract(StoreContract):
    """The store contract, in memory."""
