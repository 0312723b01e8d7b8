"""
Who may call: the ``api-key`` check and the bearer token's tenant claim
(L{apicache.auth.apikey}).
"""
