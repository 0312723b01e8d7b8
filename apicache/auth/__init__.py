"""
Who may call: the ``api-key`` check and the bearer token's tenant claim
(L{apicache.auth.apikey}), bearer tokens verified against a JSON Web Key Set
(L{apicache.auth.tokens}) and the key set itself (L{apicache.auth.jwks}).
"""
