"""
The Redis store, one concept per module:

- L{codec <apicache.store.redis.codec>}: key layout, value format (L{FORMAT_VERSION});
- L{address <apicache.store.redis.address>}: C{redis://}, C{rediss://}, C{unix://} URLs and endpoints;
- L{scripts <apicache.store.redis.scripts>}: the Lua scripts and what each guarantees;
- L{connection <apicache.store.redis.connection>}: reconnection, PING, bounded calls, pub/sub;
- L{store <apicache.store.redis.store>}: L{RedisStore} itself;
- L{service <apicache.store.redis.service>}: L{RedisStoreService}, for the daemon;
- L{watermarks <apicache.store.redis.watermarks>}: the event watermarks a consumer group shares.
"""

from apicache.store.redis.address import RedisAddress, parse_redis_url
from apicache.store.redis.codec import FORMAT_VERSION, decode_entry, encode_entry, encode_key
from apicache.store.redis.service import RedisStoreService
from apicache.store.redis.store import RedisStore

__all__ = [
    "RedisStore",
    "RedisStoreService",
    "RedisAddress",
    "parse_redis_url",
    "encode_key",
    "encode_entry",
    "decode_entry",
    "FORMAT_VERSION",
]
