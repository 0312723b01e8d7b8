"""
Inbound HTTP: the connections and requests (L{apicache.http.channel}), the
front resource with the fast hit path (L{apicache.http.front}), the writers
of answers (L{apicache.http.writers}), the Klein application with its routes
and error handlers (L{apicache.http.api}), what a request resolves to
(L{apicache.http.resolve}), the one table of API errors
(L{apicache.http.errors}) and pass-through writes (L{apicache.http.passthrough}).
"""
