"""
Who may call: the ``api-key`` check and the bearer token's tenant claim
(SPEC.md section 4).  Both compare secrets in constant time with
L{hmac.compare_digest}, so neither leaks how much of a guess was right.

A leaf module: it imports nothing of the project's.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Iterable, Sequence

__all__ = ["ApiKeys", "ANONYMOUS_CLIENT", "matches_any", "bearer_claim", "claim_matches", "fingerprint"]

#: The client number of callers without an accepted api-key (SPEC.md
#: section 2, C{store.fair_share}: anonymous callers are one client).
ANONYMOUS_CLIENT = 0


def fingerprint(key: str) -> str:
    """
    Return what may be logged or shown of an api-key: the first 8 hex
    digits of its SHA-256 (enough to tell the configured keys apart, nothing
    to guess the key from).
    """
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:8]


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

    __slots__ = ("_keys", "_admin", "_fingerprints", "required", "admin_required")

    def __init__(self, keys: Iterable[str], admin_keys: Iterable[str] = ()) -> None:
        keys, admin_keys = list(keys), list(admin_keys)
        self._admin = [k.encode("utf-8") for k in admin_keys]
        own = [k.encode("utf-8") for k in keys]
        self._keys = own + self._admin
        self._fingerprints = [fingerprint(k) for k in (*keys, *admin_keys)]
        # admin keys alone (with allow_anonymous) guard the purges only
        self.required = bool(own)
        self.admin_required = bool(self._admin)

    def accepts(self, given: bytes) -> bool:
        """
        Return whether ``given`` is one of the keys or admin keys (constant time).
        """
        return matches_any(given, self._keys)

    def client(self, given: Sequence[bytes] | None) -> int:
        """
        Return the client a request with these ``api-key`` values is (SPEC.md
        section 2, C{store.fair_share}): a small number for each configured
        key (its place, from 1), L{ANONYMOUS_CLIENT} for none or one that is
        not configured.  Every key is compared, in constant time.
        """
        if not given or len(given) != 1:
            return ANONYMOUS_CLIENT
        found = ANONYMOUS_CLIENT
        for number, secret in enumerate(self._keys, 1):
            if hmac.compare_digest(given[0], secret):
                found = number
        return found

    def client_name(self, client: int) -> str:
        """
        Return how client number C{client} is shown (metrics, logs): its
        key's L{fingerprint}, never the key; C{"anonymous"} for callers
        without one.
        """
        if 0 < client <= len(self._fingerprints):
            return self._fingerprints[client - 1]
        return "anonymous"

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
