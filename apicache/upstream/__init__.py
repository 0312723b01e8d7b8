"""
The upstream client: L{apicache.upstream.client.UpstreamClient} (behind
L{apicache.upstream.client.IUpstream}) over a tenant-safe connection pool
(L{apicache.upstream.pool}), and what every upstream request and answer goes
through on the way (L{apicache.upstream.intermediary}).  It never imports the
cache.
"""
