"""
The service that runs a L{RedisStore}'s connections for the daemon.
"""

from __future__ import annotations

from twisted.application.service import Service
from twisted.internet.defer import Deferred

from apicache.store.redis.store import RedisStore

__all__ = ["RedisStoreService"]


class RedisStoreService(Service):
    """
    Connects a L{RedisStore} on start (reconnecting in the background) and
    closes its connections on stop.
    """

    def __init__(self, store: RedisStore) -> None:
        self.store = store

    def startService(self) -> None:
        super().startService()
        self.store.start()

    def stopService(self) -> Deferred[None]:
        """
        Fire with C{None} once both of the store's connections are closed.
        """
        Service.stopService(self)
        return self.store.close()
