"""
The event listener (SPEC.md section 5): Kafka messages invalidate or refresh
cached entries.

One module per part, each testable on its own:

- :mod:`~apicache.events.decoding`: :class:`EventDecoder` turns a message
  value into the :class:`CacheAction` list it asks for, synchronously and
  without I/O, or raises :class:`BadEvent`.
- :mod:`~apicache.events.handling`: :class:`EventHandler` applies decoded
  messages through an :class:`~apicache.invalidator.IInvalidator` (the cache registry) on the
  reactor thread, and counts them.
- :mod:`~apicache.events.kafka`: :class:`EventListenerService` runs one
  confluent-kafka consumer on a thread of its own, hands each batch to the
  handler on the reactor thread and stores a message's offset for commit
  only after it was applied (at-least-once); also the librdkafka settings.
"""

from apicache.events.decoding import MAX_EVENT_BYTES, BadEvent, CacheAction, EventDecoder
from apicache.events.handling import EventHandler
from apicache.events.kafka import EventListenerService, check_consumer_settings, consumer_settings, redact

__all__ = [
    "BadEvent",
    "CacheAction",
    "EventDecoder",
    "EventHandler",
    "EventListenerService",
    "MAX_EVENT_BYTES",
    "consumer_settings",
    "redact",
    "check_consumer_settings",
]
