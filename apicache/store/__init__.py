"""
Stores: where cached answers live (see L{apicache.store.interface.IStore}).
"""

from apicache.store.interface import ENTRY_OVERHEAD, CachedResponse, IStore, StoreUnavailable
from apicache.store.memory import MemoryStore

__all__ = ["IStore", "CachedResponse", "StoreUnavailable", "MemoryStore", "ENTRY_OVERHEAD"]
