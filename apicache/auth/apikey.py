"""
Who may call: the ``api-key`` check and the bearer token's tenant claim
(SPEC.md section 4).  Both compare secrets in constant time with
L{hmac.compare_digest}, so neither leaks how much of a guess was right.

A leaf module: it imports nothing of the project's.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Iterable, Sequence

__all__ = ["ApiKeys", "matches_any", "bearer_claim", "claim_matches"]


def matches_any(given: bytes, secrets: Sequence[bytes]) -> bool:
    """
    Return whether ``given`` equals one of ``secrets``, comparing with every
    one of them in constant time (no early exit: the time taken does not
    say which key, or whether any, matched).
    """
    ok = False
    for secret in secrets:
        ok |= hmac.compare_digest(given, secret)
    return ok


class ApiKeys:
    """
    The accepted ``api-key`` values: the keys and the admin keys (SPEC.md
    section 2, ``admin_api_keys``), which are accepted wherever keys are and
    alone may purge every tenant once any is configured.

    @ivar required: whether a key must be given (some ``api_keys`` are
        configured; the configuration refuses none without
        ``allow_anonymous``).
    @ivar admin_required: whether a purge of every tenant needs an admin key.
    """

    __slots__ = ("_keys", "_admin", "required", "admin_required")

    def __init__(self, keys: Iterable[str], admin_keys: Iterable[str] = ()) -> None:
        self._admin = [k.encode("utf-8") for k in admin_keys]
        own = [k.encode("utf-8") for k in keys]
        self._keys = own + self._admin
        # admin keys alone (with allow_anonymous) guard the purges only
        self.required = bool(own)
        self.admin_required = bool(self._admin)

    def accepts(self, given: bytes) -> bool:
        """
        Return whether ``given`` is one of the keys or admin keys (constant time).
        """
        return matches_any(given, self._keys)

    def may_purge_every_tenant(self, given: Sequence[bytes] | None) -> bool:
        """
        Return whether a request whose ``api-key`` values are ``given`` may
        purge every tenant: always while no admin key is configured, else
        only with one of them (constant time).
        """
        if not self.admin_required:
            return True
        if not given or len(given) != 1:
            return False
        return matches_any(given[0], self._admin)


def bearer_claim(values: Sequence[bytes] | None, claim: str) -> str | None:
    """
    Return ``claim`` from the bearer token's JWT payload (read, not
    verified) as a string (an integer claim in decimal), or ``None`` when
    there is no bearer token, it is not a JWT, or the claim is absent.
    """
    if not values:
        return None
    scheme, _, token = values[0].partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    parts = token.strip().split(b".")
    if len(parts) != 3 or len(token) > 16384:
        return None
    payload = parts[1] + b"=" * (-len(parts[1]) % 4)
    try:
        data = json.loads(base64.urlsafe_b64decode(payload))
    except (binascii.Error, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    value = data.get(claim)
    return value if isinstance(value, str) else (str(value) if isinstance(value, int) else None)


def claim_matches(values: Sequence[bytes] | None, claim: str, tenant: str) -> bool:
    """
    Return whether the bearer token in the ``authorization`` header
    ``values`` carries ``claim`` equal to ``tenant`` (constant time).
    """
    found = bearer_claim(values, claim)
    return found is not None and matches_any(found.encode("utf-8"), [tenant.encode("utf-8")])
