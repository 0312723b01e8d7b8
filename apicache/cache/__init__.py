"""
Caching decisions and the cache core: the pure RFC 9111 rules
(L{apicache.cache.policy}) and the bytes of a replayed head
(L{apicache.cache.wire}); what goes into a key and how paths match routes
(L{apicache.cache.keys}, L{apicache.cache.routes}); tags and links; the
tenant cache (L{apicache.cache.tenant}) with its coalesced fetches
(L{apicache.cache.coalesce}) and the registry that holds the tenant caches
and takes every invalidation (L{apicache.cache.registry}, behind
L{apicache.cache.invalidator.IInvalidator}).  Nothing here imports the HTTP
layer or the event listener: they call into it.
"""
