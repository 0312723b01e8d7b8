"""
The event listener (SPEC.md section 5): Kafka messages invalidate or refresh
cached entries.  L{apicache.events.decoding} turns a message into the cache
actions it asks for (pure); L{apicache.events.handling} applies them through
an L{apicache.cache.invalidator.IInvalidator} on the reactor thread;
L{apicache.events.kafka} runs the confluent-kafka consumer on a thread of its
own and stores an offset only after its action was applied; the event
watermark (L{apicache.events.watermark}) and consumer lag
(L{apicache.events.lag}) bound staleness; L{apicache.events.oauth} fetches
the OAuth tokens Kafka may need.
"""
