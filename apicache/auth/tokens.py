"""
Bearer tokens verified against the JSON Web Key Set (SPEC.md sections 2
C{[auth]} and 4): the signature with the C{kid}'s key and an allowed
asymmetric algorithm, C{exp}/C{nbf}/C{iat} within C{leeway}, C{iss} and
C{aud}.

Which JOSE library: joserfc.  C{bench/jose_refusals.py} runs hostile tokens
through PyJWT 2.15 (with cryptography) and joserfc 1.8, each used as its
documentation shows (key and allowed algorithms given, nothing else)::

    case                                      PyJWT                joserfc
    alg none, RS256 allowed                   refused              refused
    alg none, "none" also allowed             refused              ACCEPTED (a warning)
    HS256 keyed with the RSA public PEM,
      RS256 only allowed                      refused              refused
      RS256+HS256 allowed, key as object      refused (TypeError)  refused (InvalidKeyTypeError)
      RS256+HS256 allowed, key as PEM text    refused              refused (InvalidKeyTypeError)
    ES256 header, RSA key                     refused (TypeError)  refused (InvalidKeyTypeError)
    crit naming an unknown extension          refused              refused
    1 MiB token, validly signed               ACCEPTED             refused (ExceededSizeError)
    b64=false inside a JWT                    refused              refused

Each has one gap.  joserfc's (C{none} accepted when explicitly allowed)
cannot happen here: L{check_algorithms} refuses C{none} and C{HS*}, at
start-up and again in L{TokenVerifier}.  PyJWT's (no size limit) would rest
on our own limit alone, while joserfc bounds header, payload and signature
on its own as a second line behind L{MAX_TOKEN_BYTES}.  joserfc also refuses
a key that does not fit the algorithm with a typed error, where PyJWT lets a
C{TypeError} out, and its claim errors name the claim, which maps onto the
fixed set of refusal reasons without parsing messages.  RS256 costs about
the same in both (50-80 us a token here); a verified token is cached anyway
(a repeat costs about 0.3 us).

The hit path is synchronous: L{TokenVerifier.verify} returns the claims or
raises L{TokenRefused}; a token seen before (the whole token is the key of a
bounded cache, kept until its C{exp}) costs a dictionary look-up and no
signature check.  Only a token whose C{kid} is unknown can wait:
L{TokenVerifier.verify_or_refresh} then returns a Deferred that fires after
the key set was read again (at most once per 10 s, L{apicache.auth.jwks.JWKSSource}).

A leaf of the auth layer: it imports L{apicache.auth.jwks} and nothing else
of the project's.  Tokens are never logged, nor put in an error message.
"""

from __future__ import annotations

import json
import math
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Protocol, cast

from joserfc import jws
from joserfc.errors import (
    ClaimError,
    ExceededSizeError,
    ExpiredTokenError,
    InvalidKeyCurveError,
    JoseError,
    KeyParameterError,
    MissingClaimError,
    SecurityWarning,
    UnsupportedAlgorithmError,
)
from joserfc.jws import JWSRegistry
from joserfc.jwt import JWTClaimsRegistry
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime

from apicache.auth.jwks import VerificationKeys

__all__ = [
    "REASONS",
    "ASYMMETRIC_ALGORITHMS",
    "DEFAULT_ALGORITHMS",
    "MAX_TOKEN_BYTES",
    "Claims",
    "KeySource",
    "TokenRefused",
    "UnknownKeyId",
    "TokenVerifier",
    "check_algorithms",
    "bearer_token",
    "claim_text",
    "www_authenticate",
]

#: Why a token was refused: the ``reason`` label of
#: ``apicache_auth_failures_total``, a fixed set.
REASONS = (
    "missing",
    "malformed",
    "too_large",
    "unknown_kid",
    "bad_signature",
    "algorithm",
    "expired",
    "not_yet_valid",
    "issuer",
    "audience",
)

#: Signature algorithms verified with a public key.  ``none`` and ``HS*``
#: are absent on purpose: with a public key set, HMAC would take a public
#: key for a shared secret (the key-confusion attack).
ASYMMETRIC_ALGORITHMS = frozenset(
    {
        "RS256", "RS384", "RS512",
        "PS256", "PS384", "PS512",
        "ES256", "ES384", "ES512", "ES256K",
        "EdDSA", "Ed25519", "Ed448",
    }
)  # fmt: skip
DEFAULT_ALGORITHMS = ("RS256", "ES256", "EdDSA")
#: Tokens longer than this are refused before any parsing and never cached.
#: Real access tokens are 0.5-2 KiB; Twisted's header limit is 16 KiB.
MAX_TOKEN_BYTES = 8192
#: Verified tokens remembered at once, and the bytes of tokens they hold.
DEFAULT_CACHE_ENTRIES = 10_000
DEFAULT_CACHE_BYTES = 16 * 1024 * 1024

_TIME_CLAIMS = ("exp", "nbf", "iat")
_MESSAGES = {
    "missing": "a bearer token is required",
    "malformed": "the bearer token is not a valid JWT",
    "too_large": f"the bearer token is over {MAX_TOKEN_BYTES} bytes",
    "unknown_kid": "the bearer token's key is not in the key set",
    "bad_signature": "the bearer token's signature does not verify",
    "algorithm": "the bearer token's algorithm is not accepted for its key",
    "expired": "the bearer token has expired",
    "not_yet_valid": "the bearer token is not valid yet",
    "issuer": "the bearer token's issuer is not accepted",
    "audience": "the bearer token's audience is not accepted",
}

Claims = Mapping[str, Any]


class TokenRefused(Exception):
    """
    A bearer token was missing or did not verify.

    @ivar reason: one of L{REASONS}.
    @ivar message: a fixed text for the answer (never quotes the token).
    """

    def __init__(self, reason: str) -> None:
        assert reason in _MESSAGES, reason
        self.reason = reason
        self.message = _MESSAGES[reason]
        super().__init__(reason)

    @property
    def token_sent(self) -> bool:
        """
        Whether the request carried a token (RFC 6750: the challenge then
        says C{error="invalid_token"}).
        """
        return self.reason != "missing"


class UnknownKeyId(TokenRefused):
    """
    The token's C{kid} is not in the key set.

    @ivar refresh: the read of the key set this caused (a Deferred firing
        with whether it loaded a key set), or C{None} when reads for unknown
        kids are rate-limited right now.
    """

    def __init__(self, refresh: Deferred[bool] | None) -> None:
        super().__init__("unknown_kid")
        self.refresh = refresh


class KeySource(Protocol):
    """What L{TokenVerifier} needs of L{apicache.auth.jwks.JWKSSource}."""

    @property
    def keys(self) -> VerificationKeys: ...

    def refresh_for_unknown_kid(self) -> Deferred[bool] | None: ...


def check_algorithms(names: Iterable[str]) -> tuple[str, ...]:
    """
    Check C{[auth] algorithms}.

    @return: the names, in order, without repeats.
    @raise ValueError: none given, or one that is not an asymmetric
        signature algorithm (C{none}, C{HS256}, a typo), named.
    """
    chosen = tuple(dict.fromkeys(names))
    if not chosen:
        raise ValueError("algorithms is empty")
    refused = [name for name in chosen if name not in ASYMMETRIC_ALGORITHMS]
    if refused:
        raise ValueError(
            f"algorithms: {', '.join(map(repr, refused))} refused: only asymmetric signature algorithms "
            f"({', '.join(sorted(ASYMMETRIC_ALGORITHMS))}); 'none' and HS* never"
        )
    return chosen


def bearer_token(values: Sequence[bytes] | None) -> bytes | None:
    """
    Return the token of an C{Authorization: Bearer} header (RFC 6750
    section 2.1), given the header's values as twisted.web gives them.

    @return: the token, or C{None} when there is no C{Authorization} header
        or it is of another scheme (no bearer token was sent).
    @raise TokenRefused: C{malformed}, for a repeated header or a C{Bearer}
        without a token.
    """
    if not values:
        return None
    if len(values) != 1:
        raise TokenRefused("malformed")
    scheme, _, token = values[0].strip().partition(b" ")
    if scheme.lower() != b"bearer":
        return None
    token = token.strip()
    if not token:
        raise TokenRefused("malformed")
    return token


def claim_text(claims: Claims, name: str) -> str | None:
    """
    Return claim C{name} of verified C{claims} as text (a string as is, an
    integer in decimal, as L{apicache.auth} read C{tenant_claim} before), or
    C{None} when absent or of another type.
    """
    value = claims.get(name)
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def www_authenticate(refused: TokenRefused) -> bytes:
    """
    Return the C{WWW-Authenticate} value for a 401 (RFC 6750 section 3):
    C{Bearer} alone when no token was sent, else with
    C{error="invalid_token"}.
    """
    if refused.token_sent:
        return b'Bearer error="invalid_token"'
    return b"Bearer"


class _Registry(JWSRegistry):
    """
    joserfc's JWS registry with our allowed algorithms.

    Unknown header parameters are ignored, as RFC 7515 section 4 says
    (C{crit} is still enforced); headers may be up to 2 KiB (joserfc's 512 B
    would refuse a token with a certificate thumbprint chain); joserfc's
    warning that C{EdDSA} is superseded by C{Ed25519} (RFC 9864) is muted:
    C{EdDSA} is what providers sign with today and the configuration chose
    it.
    """

    max_header_length = 2048

    def __init__(self, algorithms: Sequence[str]) -> None:
        super().__init__(algorithms=algorithms, strict_check_header=False)

    def get_alg(self, name: str) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", SecurityWarning)
            return super().get_alg(name)


class _Verified:
    __slots__ = ("claims", "expires", "generation", "size")

    def __init__(self, claims: Claims, expires: float, generation: int, size: int) -> None:
        self.claims = claims
        self.expires = expires
        self.generation = generation
        self.size = size


class TokenVerifier:
    """
    Verifies bearer tokens and remembers the verified ones.

    @ivar failures: refusals so far by reason (every reason present, from 0),
        for C{apicache_auth_failures_total{reason}}.
    @ivar signature_checks: signatures verified so far (a cache hit does none).
    @ivar cache_hits: tokens answered from the cache.
    """

    def __init__(
        self,
        keys: KeySource,
        clock: IReactorTime,
        algorithms: Iterable[str] = DEFAULT_ALGORITHMS,
        issuers: Iterable[str] = (),
        audiences: Iterable[str] = (),
        leeway: float = 30.0,
        max_token_bytes: int = MAX_TOKEN_BYTES,
        cache_entries: int = DEFAULT_CACHE_ENTRIES,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        """
        @param keys: the key set (a L{apicache.auth.jwks.JWKSSource}).
        @param clock: "now" is C{clock.seconds()}.
        @param algorithms: accepted C{alg} values, asymmetric only.
        @param issuers: accepted C{iss} values; empty: any.
        @param audiences: the token's C{aud} must hold one; empty: not checked.
        @param leeway: seconds of clock skew allowed on C{exp}/C{nbf}/C{iat}.
        @param max_token_bytes: longer tokens are refused unparsed.
        @param cache_entries: verified tokens remembered at once.
        @param cache_bytes: bytes of verified tokens remembered at once.
        @raise ValueError: a refused algorithm (see L{check_algorithms}).
        """
        self._keys = keys
        self._clock = clock
        self.algorithms = check_algorithms(algorithms)
        self._issuers = list(issuers)
        self._audiences = list(audiences)
        self._leeway = leeway
        self._max_token_bytes = max_token_bytes
        self._cache_entries = cache_entries
        self._cache_bytes = cache_bytes
        self._registry = _Registry(self.algorithms)
        self._cache: OrderedDict[bytes, _Verified] = OrderedDict()
        self._cached_bytes = 0
        self._claim_options: dict[str, Any] = {"exp": {"essential": True}}
        if self._issuers:
            self._claim_options["iss"] = {"essential": True, "values": self._issuers}
        if self._audiences:
            self._claim_options["aud"] = {"essential": True, "values": self._audiences}
        self.failures = dict.fromkeys(REASONS, 0)
        self.signature_checks = 0
        self.cache_hits = 0

    def __len__(self) -> int:
        """The number of verified tokens remembered now."""
        return len(self._cache)

    def verify(self, token: bytes | str | None) -> Claims:
        """
        Verify a bearer token now (see L{bearer_token} to get it from a
        header).  An unknown C{kid} asks the key source for a read (rate-
        limited there) and is refused at once.

        @return: the verified claims (read-only).
        @raise TokenRefused: the reason is counted in L{failures}.
        """
        try:
            return self._check(token, may_refresh=True)
        except TokenRefused as refused:
            self.failures[refused.reason] += 1
            raise

    def verify_or_refresh(self, token: bytes | str | None) -> Claims | Deferred[Claims]:
        """
        As L{verify}, except for a token whose C{kid} is unknown while a read
        of the key set can be made: then return a Deferred that fires after
        that read, with the claims or a L{TokenRefused} failure.  Any other
        token is answered at once, without a Deferred.

        @raise TokenRefused: refused at once (counted in L{failures}).
        """
        try:
            return self._check(token, may_refresh=True)
        except UnknownKeyId as unknown:
            if unknown.refresh is None:
                self.failures[unknown.reason] += 1
                raise
            return unknown.refresh.addCallback(lambda _: self.verify_after_refresh(token))
        except TokenRefused as refused:
            self.failures[refused.reason] += 1
            raise

    def verify_after_refresh(self, token: bytes | str | None) -> Claims:
        """
        As L{verify}, without asking for another read on an unknown C{kid}.
        """
        try:
            return self._check(token, may_refresh=False)
        except TokenRefused as refused:
            self.failures[refused.reason] += 1
            raise

    def remembered(self, token: bytes) -> Claims | None:
        """
        Return the claims of ``token`` when it was verified before, with the
        key set in use now, and has not expired: what L{verify} would answer
        from its cache.  Verifies nothing, asks for no key and counts
        nothing (the caller counts a C{cache_hits} if it uses them): the
        fast hit path's check (L{apicache.http.fast}).

        @return: the claims, or ``None`` for any other token (L{verify} has
            the last word on it).
        """
        found = self._cache.get(token)
        if found is None or found.generation != self._keys.keys.generation:
            return None
        if self._clock.seconds() >= found.expires + self._leeway:
            return None
        self._cache.move_to_end(token)
        return found.claims

    # -- the checks ---------------------------------------------------------

    def _check(self, token: bytes | str | None, may_refresh: bool) -> Claims:
        if not token:
            raise TokenRefused("missing")
        if isinstance(token, str):
            if len(token) > self._max_token_bytes:
                raise TokenRefused("too_large")
            try:
                token = token.encode("ascii")
            except UnicodeEncodeError:
                raise TokenRefused("malformed") from None
        if len(token) > self._max_token_bytes:
            raise TokenRefused("too_large")
        now = self._clock.seconds()
        keys = self._keys.keys
        remembered = self._cache.get(token)
        if remembered is not None:
            if remembered.generation == keys.generation:
                if now < remembered.expires + self._leeway:
                    self._cache.move_to_end(token)
                    self.cache_hits += 1
                    return remembered.claims
                self._forget(token)
                raise TokenRefused("expired")
            # verified with keys since replaced: the key may be revoked
            self._forget(token)
        claims = self._verify_signed(token, keys, now, may_refresh)
        self._remember(token, claims, keys.generation)
        return claims

    def _verify_signed(self, token: bytes, keys: VerificationKeys, now: float, may_refresh: bool) -> Claims:
        try:
            signed = jws.extract_compact(token, registry=self._registry)
            header = signed.headers()
            self._registry.check_header(header)
        except ExceededSizeError:
            raise TokenRefused("too_large") from None
        except (JoseError, ValueError, TypeError):
            # not three base64url parts, a header that is not JSON, a bad
            # header value, or a crit naming an extension we do not know
            raise TokenRefused("malformed") from None
        if "b64" in header:
            # RFC 7797 payloads are not JWTs (RFC 7797 section 7)
            raise TokenRefused("malformed")
        if header.get("alg") not in self.algorithms:
            raise TokenRefused("algorithm")
        key = keys.find(header.get("kid"))
        if key is None:
            raise UnknownKeyId(self._keys.refresh_for_unknown_kid() if may_refresh else None)
        self.signature_checks += 1
        try:
            valid = jws.validate_compact(signed, key, registry=self._registry)
        except (KeyParameterError, InvalidKeyCurveError, UnsupportedAlgorithmError):
            # the kid's key is of another type, curve or declared alg
            raise TokenRefused("algorithm") from None
        except (JoseError, ValueError, TypeError):
            raise TokenRefused("malformed") from None
        if not valid:
            raise TokenRefused("bad_signature")
        try:
            claims = json.loads(cast(bytes, signed.payload))
        except (TypeError, ValueError):
            raise TokenRefused("malformed") from None
        if not isinstance(claims, dict):
            raise TokenRefused("malformed")
        self._check_claims(claims, now)
        return MappingProxyType(claims)

    def _check_claims(self, claims: dict[str, Any], now: float) -> None:
        for name in _TIME_CLAIMS:
            value = claims.get(name)
            if value is not None and not _numeric_date(value):
                raise TokenRefused("malformed")
        registry = JWTClaimsRegistry(
            now=cast(Callable[[], int], lambda: now), leeway=cast(int, self._leeway), **self._claim_options
        )
        try:
            registry.validate(claims)
        except ExpiredTokenError:
            raise TokenRefused("expired") from None
        except MissingClaimError as e:
            missing = set(e.claim.split(","))
            raise TokenRefused(
                "malformed" if "exp" in missing else "issuer" if "iss" in missing else "audience"
            ) from None
        except ClaimError as e:
            raise TokenRefused(_CLAIM_REASONS.get(e.claim, "malformed")) from None

    # -- the cache ----------------------------------------------------------

    def _remember(self, token: bytes, claims: Claims, generation: int) -> None:
        size = len(token)
        if size > self._max_token_bytes or self._cache_entries <= 0:
            return
        self._cache[token] = _Verified(claims, float(claims["exp"]), generation, size)
        self._cached_bytes += size
        while len(self._cache) > self._cache_entries or self._cached_bytes > self._cache_bytes:
            _, oldest = self._cache.popitem(last=False)
            self._cached_bytes -= oldest.size

    def _forget(self, token: bytes) -> None:
        gone = self._cache.pop(token, None)
        if gone is not None:
            self._cached_bytes -= gone.size


_CLAIM_REASONS = {"nbf": "not_yet_valid", "iat": "not_yet_valid", "iss": "issuer", "aud": "audience"}


def _numeric_date(value: object) -> bool:
    # RFC 7519 NumericDate: a JSON number; NaN or infinite never expires
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and math.isfinite(value)
