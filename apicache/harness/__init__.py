"""
Real processes for tests, demos and benchmarks: the daemon under ``twistd``,
a private ``redis-server`` and a Kafka-protocol broker
(L{apicache.harness.launchers}), the demo upstream
(``python -m apicache.harness.demo``) and a loopback OAuth token endpoint
(L{apicache.harness.token_endpoint}), and a Redis Cluster or a Sentinel-managed
primary (L{apicache.harness.rediscluster}).  In-memory fakes are
L{apicache.testing}, not here.
"""
