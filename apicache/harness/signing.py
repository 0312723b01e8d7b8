"""
An identity provider's signing key, for the demos and benchmarks of
verified tenants (C{[auth]}, issue 21): a key pair generated here, the JSON
Web Key Set that publishes its public half, and tokens it signs, as
Keycloak or XSUAA would issue them.  Never for production: the private key
lives in this process only.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jwt
from joserfc.jwk import RSAKey

__all__ = ["SigningKey"]


class SigningKey:
    """
    An RS256 signing key under a C{kid}.

    @ivar issuer: the C{iss} of the tokens it signs.
    @ivar audience: their C{aud}.
    """

    def __init__(self, kid: str = "demo-key", issuer: str = "https://idp.example/realms/demo", audience: str = "apicache") -> None:
        self.kid = kid
        self.issuer = issuer
        self.audience = audience
        native = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._key = RSAKey.import_key(native, parameters={"kid": kid})

    def jwks(self) -> dict[str, Any]:
        """
        Return the public JSON Web Key Set (what a provider's C{jwks_uri} serves).
        """
        return {"keys": [{**self._key.as_dict(private=False), "kid": self.kid, "use": "sig", "alg": "RS256"}]}

    def write_jwks(self, path: str | Path) -> None:
        """
        Write L{jwks} to C{path} (an C{[auth] jwks} file).
        """
        Path(path).write_text(json.dumps(self.jwks()))

    def token(self, tenant_claim: str = "zid", tenant: str = "acme", lifetime: float = 600, **claims: Any) -> str:
        """
        Return a signed access token for C{tenant} (in claim C{tenant_claim})
        valid for C{lifetime} seconds from now; C{claims} add or replace
        claims.
        """
        now = int(time.time())
        body: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": "demo-user",
            tenant_claim: tenant,
            "iat": now,
            "exp": now + int(lifetime),
            **claims,
        }
        return jwt.encode({"alg": "RS256", "kid": self.kid, "typ": "JWT"}, body, self._key, algorithms=["RS256"])
