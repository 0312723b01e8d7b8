"""
Bearer token verification (issue 21): what is accepted, every refusal and
its reason, the cache of verified tokens, and reads of the key set on an
unknown kid.  Synchronous: the key set is a real file read by a real
L{JWKSSource}, time is a task.Clock; keys are generated with cryptography.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from joserfc import jwt
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from apicache.auth.jwks import JWKSSource
from apicache.auth.tokens import (
    REASONS,
    TokenRefused,
    TokenVerifier,
    bearer_token,
    check_algorithms,
    claim_text,
    www_authenticate,
)
from apicache.testing import TOKEN_AUDIENCE as AUDIENCE
from apicache.testing import TOKEN_ISSUER as ISSUER
from apicache.testing import TOKEN_NOW as NOW
from apicache.testing import TokenSigner as Signer
from apicache.testing import b64url as b64
from apicache.testing import hmac_token as hmac_signed
from apicache.testing import jwt_segment as segment
from apicache.testing import token_claims as claims_of
from apicache.testing import unsigned_token as unsigned
from apicache.testing import write_jwks

LEEWAY = 30


def rs256_by_hand(header: dict[str, Any], claims: dict[str, Any]) -> bytes:
    """
    Sign with RSA's key without joserfc, which would refuse to sign some of
    the headers these tests need.
    """
    signing_input = f"{segment({'alg': 'RS256', 'kid': RSA.kid, **header})}.{segment(claims)}".encode()
    signature = RSA.native.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    return signing_input + b"." + b64(signature).encode()


# one key of each kind for the whole module: RSA generation is slow
RSA = Signer("RS256", "rsa-1")
EC = Signer("ES256", "ec-1")
ED = Signer("EdDSA", "ed-1")


class VerifierTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(NOW)
        folder = tempfile.mkdtemp(prefix="apicache-jwks-")
        self.addCleanup(shutil.rmtree, folder)
        self.path = Path(folder) / "jwks.json"
        write_jwks(self.path, RSA.jwk(), EC.jwk(), ED.jwk())
        self.source = JWKSSource(str(self.path), self.clock, refresh_interval=300)
        self.source.startService()
        self.addCleanup(self.source.stopService)
        self.verifier = self.make_verifier()

    def make_verifier(self, **options: Any) -> TokenVerifier:
        settings: dict[str, Any] = {"issuers": [ISSUER], "audiences": [AUDIENCE], "leeway": LEEWAY}
        settings.update(options)
        return TokenVerifier(self.source, self.clock, **settings)

    def refused(self, token: bytes | str | None, verifier: TokenVerifier | None = None) -> str:
        with pytest.raises(TokenRefused) as caught:
            (verifier if verifier is not None else self.verifier).verify(token)
        return caught.value.reason

    # -- accepted -----------------------------------------------------------

    def test_rs256_es256_and_eddsa_are_accepted(self) -> None:
        for signer in (RSA, EC, ED):
            claims = self.verifier.verify(signer.token())
            assert claims["sub"] == "alice", signer.alg
            assert claims["iss"] == ISSUER
        assert self.verifier.signature_checks == 3
        assert sum(self.verifier.failures.values()) == 0

    def test_claims_are_read_only(self) -> None:
        claims = self.verifier.verify(RSA.token())
        with pytest.raises(TypeError):
            claims["zid"] = "tenant-b"  # type: ignore[index]

    def test_a_token_as_text_is_accepted_too(self) -> None:
        assert self.verifier.verify(RSA.token().decode())["zid"] == "tenant-a"

    def test_audience_list_holding_one_accepted_value(self) -> None:
        assert self.verifier.verify(RSA.token(aud=["other", AUDIENCE]))["sub"] == "alice"

    def test_any_issuer_and_audience_when_none_configured(self) -> None:
        open_verifier = self.make_verifier(issuers=[], audiences=[])
        assert open_verifier.verify(RSA.token(iss="https://elsewhere", aud="someone"))["sub"] == "alice"
        assert open_verifier.verify(RSA.token(iss=None, aud=None))["sub"] == "alice"

    def test_kidless_token_uses_the_only_key(self) -> None:
        write_jwks(self.path, {k: v for k, v in RSA.jwk().items() if k != "kid"})
        self.source.refresh()
        token = jwt.encode({"alg": "RS256"}, claims_of(RSA.token()), RSA.key, algorithms=["RS256"])
        assert self.verifier.verify(token)["sub"] == "alice"

    # -- refused ------------------------------------------------------------

    def test_alg_none_is_refused(self) -> None:
        assert self.refused(unsigned(RSA.kid, claims_of(RSA.token()))) == "algorithm"
        assert self.verifier.signature_checks == 0

    def test_none_and_hmac_algorithms_cannot_be_configured(self) -> None:
        for bad in (["none"], ["RS256", "HS256"], ["HS512"], ["rs256"], []):
            with pytest.raises(ValueError):
                check_algorithms(bad)
            with pytest.raises(ValueError):
                self.make_verifier(algorithms=bad)
        assert check_algorithms(["RS256", "ES256", "RS256"]) == ("RS256", "ES256")

    def test_a_wrong_key_with_a_known_kid_is_refused(self) -> None:
        impostor = Signer("RS256", RSA.kid)
        assert self.refused(impostor.token()) == "bad_signature"
        assert self.verifier.failures["bad_signature"] == 1

    def test_hs256_key_confusion_token_is_refused(self) -> None:
        """HMAC-SHA256 keyed with the RSA public key's PEM, under the RSA key's kid."""
        token = hmac_signed(RSA.public_pem(), {"alg": "HS256", "kid": RSA.kid}, claims_of(RSA.token()))
        assert self.refused(token) == "algorithm"
        # even a verifier that allows RS256 only for that kid never runs HMAC
        assert self.verifier.signature_checks == 0

    def test_an_algorithm_that_does_not_fit_the_kids_key_is_refused(self) -> None:
        """An ES256 signature presented under the RSA key's kid."""
        token = EC.token(header={"kid": RSA.kid})
        assert self.refused(token) == "algorithm"

    def test_a_key_published_for_another_algorithm_is_refused(self) -> None:
        write_jwks(self.path, RSA.jwk(alg="RS512"))
        self.source.refresh()
        assert self.refused(RSA.token()) == "algorithm"

    def test_an_algorithm_not_configured_is_refused(self) -> None:
        only_rsa = self.make_verifier(algorithms=["RS256"])
        assert self.refused(EC.token(), only_rsa) == "algorithm"

    def test_expiry_just_inside_and_just_outside_leeway(self) -> None:
        inside = RSA.token(exp=int(NOW) - LEEWAY + 1)
        outside = RSA.token(exp=int(NOW) - LEEWAY)
        assert self.verifier.verify(inside)["sub"] == "alice"
        assert self.refused(outside) == "expired"

    def test_not_before_just_inside_and_just_outside_leeway(self) -> None:
        assert self.verifier.verify(RSA.token(nbf=int(NOW) + LEEWAY))["sub"] == "alice"
        assert self.refused(RSA.token(nbf=int(NOW) + LEEWAY + 1)) == "not_yet_valid"

    def test_issued_at_just_inside_and_just_outside_leeway(self) -> None:
        assert self.verifier.verify(RSA.token(iat=int(NOW) + LEEWAY))["sub"] == "alice"
        assert self.refused(RSA.token(iat=int(NOW) + LEEWAY + 1)) == "not_yet_valid"

    def test_a_token_without_exp_is_refused(self) -> None:
        assert self.refused(RSA.token(exp=None)) == "malformed"

    def test_time_claims_that_are_not_numbers_are_refused(self) -> None:
        assert self.refused(RSA.token(exp="tomorrow")) == "malformed"
        assert self.refused(RSA.token(nbf=True)) == "malformed"

    def test_a_wrong_issuer_is_refused(self) -> None:
        assert self.refused(RSA.token(iss="https://evil.example")) == "issuer"
        assert self.refused(RSA.token(iss=None)) == "issuer"

    def test_a_wrong_audience_is_refused(self) -> None:
        assert self.refused(RSA.token(aud="someone-else")) == "audience"
        assert self.refused(RSA.token(aud=["a", "b"])) == "audience"
        assert self.refused(RSA.token(aud=None)) == "audience"

    def test_a_missing_token_is_refused(self) -> None:
        assert self.refused(None) == "missing"
        assert self.refused(b"") == "missing"
        assert self.verifier.failures["missing"] == 2

    def test_an_oversized_token_is_refused_unparsed_and_never_cached(self) -> None:
        token = RSA.token(pad="x" * 9000)
        assert len(token) > 8192
        assert self.refused(token) == "too_large"
        assert self.refused(token.decode()) == "too_large"
        assert self.verifier.signature_checks == 0
        assert len(self.verifier) == 0
        # a larger limit takes it, and the size rule still holds for caching
        roomy = self.make_verifier(max_token_bytes=len(token))
        assert roomy.verify(token)["sub"] == "alice"

    def test_a_crit_header_naming_an_unknown_extension_is_refused(self) -> None:
        claims = claims_of(RSA.token())
        assert self.verifier.verify(rs256_by_hand({}, claims))["sub"] == "alice"
        token = rs256_by_hand({"crit": ["x-unheard-of"], "x-unheard-of": 1}, claims)
        assert self.refused(token) == "malformed"
        assert self.refused(rs256_by_hand({"crit": ["x-absent"]}, claims)) == "malformed"

    def test_unknown_header_parameters_are_ignored(self) -> None:
        """RFC 7515 section 4: only what crit names must be understood."""
        assert self.verifier.verify(rs256_by_hand({"x-trace": "1"}, claims_of(RSA.token())))["sub"] == "alice"

    def test_garbage_is_malformed(self) -> None:
        good = RSA.token()
        head, payload, signature = good.split(b".")
        for bad in (
            b"not-a-jwt",
            b"a.b",
            b"a.b.c.d",
            b"!!!." + payload + b"." + signature,
            segment({"alg": "RS256", "kid": ["rsa-1"]}).encode() + b"." + payload + b"." + signature,
            segment({"kid": RSA.kid}).encode() + b"." + payload + b"." + signature,
            "tökén",
        ):
            assert self.refused(bad) == "malformed", bad
        assert self.verifier.signature_checks == 0

    def test_a_tampered_payload_is_refused(self) -> None:
        head, _, signature = RSA.token().split(b".")
        forged = claims_of(RSA.token())
        forged["zid"] = "tenant-b"
        assert self.refused(head + b"." + segment(forged).encode() + b"." + signature) == "bad_signature"

    def test_every_reason_is_counted_from_zero(self) -> None:
        assert set(self.verifier.failures) == set(REASONS)
        assert set(self.verifier.failures.values()) == {0}
        self.refused(RSA.token(exp=int(NOW) - 3600))
        self.refused(None)
        assert self.verifier.failures["expired"] == 1
        assert self.verifier.failures["missing"] == 1

    # -- the cache of verified tokens ----------------------------------------

    def test_a_repeated_token_costs_no_signature_check(self) -> None:
        token = RSA.token()
        first = self.verifier.verify(token)
        for _ in range(5):
            assert self.verifier.verify(token) == first
        assert self.verifier.signature_checks == 1
        assert self.verifier.cache_hits == 5

    def test_a_cached_token_expires_at_its_exp(self) -> None:
        token = RSA.token(exp=int(NOW) + 60)
        self.verifier.verify(token)
        self.clock.advance(60 + LEEWAY - 1)
        assert self.verifier.verify(token)["sub"] == "alice"
        self.clock.advance(1)
        assert self.refused(token) == "expired"
        assert self.verifier.signature_checks == 1
        assert len(self.verifier) == 0

    def test_the_cache_is_keyed_by_the_whole_token(self) -> None:
        token = RSA.token()
        self.verifier.verify(token)
        # same header and payload, another signature: not a hit
        assert self.refused(token[:-4] + (b"AAAA" if not token.endswith(b"AAAA") else b"BBBB")) == "bad_signature"

    def test_the_cache_is_bounded_in_entries(self) -> None:
        small = self.make_verifier(cache_entries=3)
        tokens = [RSA.token(jti=str(i)) for i in range(5)]
        for token in tokens:
            small.verify(token)
        assert len(small) == 3
        # the most recent three are hits, the oldest costs a check again
        small.verify(tokens[4])
        assert small.signature_checks == 5
        small.verify(tokens[0])
        assert small.signature_checks == 6
        assert len(small) == 3

    def test_the_cache_is_bounded_in_bytes(self) -> None:
        tokens = [RSA.token(jti=str(i)) for i in range(4)]
        small = self.make_verifier(cache_bytes=len(tokens[0]) * 2 + 10)
        for token in tokens:
            small.verify(token)
        assert len(small) == 2

    def test_cached_tokens_are_checked_again_after_the_keys_change(self) -> None:
        token = RSA.token()
        self.verifier.verify(token)
        write_jwks(self.path, EC.jwk())  # the RSA key is withdrawn
        self.source.refresh()
        assert self.refused(token) == "unknown_kid"

    # -- unknown kids --------------------------------------------------------

    def test_key_rotation_through_the_file(self) -> None:
        new = Signer("ES256", "ec-2")
        token = new.token()
        reads = self.source.reads
        write_jwks(self.path, RSA.jwk(), new.jwk())
        result = self.verifier.verify_or_refresh(token)
        assert isinstance(result, Deferred)
        assert self.successResultOf(result)["sub"] == "alice"
        assert self.source.reads == reads + 1
        # now known: answered at once, and from the cache
        assert self.verifier.verify_or_refresh(token)["sub"] == "alice"  # type: ignore[index]
        assert self.verifier.cache_hits == 1

    def test_known_kid_is_answered_without_a_deferred(self) -> None:
        result = self.verifier.verify_or_refresh(RSA.token())
        assert not isinstance(result, Deferred)

    def test_unknown_kid_reads_the_key_set_at_most_once_per_10_s(self) -> None:
        stranger = Signer("ES256", "nobody-knows")
        reads = self.source.reads
        failure = self.failureResultOf(self.verifier.verify_or_refresh(stranger.token()), TokenRefused)
        assert failure.value.reason == "unknown_kid"
        assert self.source.reads == reads + 1
        for _ in range(20):
            self.clock.advance(0.45)
            assert self.refused(stranger.token(jti=str(self.clock.seconds()))) == "unknown_kid"
            with pytest.raises(TokenRefused):
                self.verifier.verify_or_refresh(stranger.token())
        assert self.source.reads == reads + 1
        self.clock.advance(1.0)  # 10 s after the first read
        self.failureResultOf(self.verifier.verify_or_refresh(stranger.token()), TokenRefused)
        assert self.source.reads == reads + 2
        # one request, one count
        assert self.verifier.failures["unknown_kid"] == 20 * 2 + 2

    def test_verify_alone_asks_for_a_read_too(self) -> None:
        new = Signer("EdDSA", "ed-2")
        write_jwks(self.path, ED.jwk(), new.jwk())
        assert self.refused(new.token()) == "unknown_kid"
        # the read it caused (a file: done at once) lets the next request in
        assert self.verifier.verify(new.token())["sub"] == "alice"


def test_bearer_token_from_the_authorization_header() -> None:
    assert bearer_token(None) is None
    assert bearer_token([]) is None
    assert bearer_token([b"Basic dXNlcjpwdw=="]) is None
    assert bearer_token([b"Bearer abc.def.ghi"]) == b"abc.def.ghi"
    assert bearer_token([b"bearer   abc.def.ghi  "]) == b"abc.def.ghi"
    for bad in ([b"Bearer"], [b"Bearer   "], [b"Bearer a.b.c", b"Bearer d.e.f"]):
        with pytest.raises(TokenRefused) as caught:
            bearer_token(bad)
        assert caught.value.reason == "malformed"


def test_www_authenticate_says_invalid_token_only_when_one_was_sent() -> None:
    assert www_authenticate(TokenRefused("missing")) == b"Bearer"
    for reason in REASONS[1:]:
        assert www_authenticate(TokenRefused(reason)) == b'Bearer error="invalid_token"'


def test_refusal_messages_never_quote_the_token() -> None:
    for reason in REASONS:
        refused = TokenRefused(reason)
        assert refused.message and "eyJ" not in refused.message
        assert str(refused) == reason


def test_claim_text_reads_strings_and_integers() -> None:
    claims = {"zid": "tenant-a", "org": 42, "flag": True, "list": ["a"]}
    assert claim_text(claims, "zid") == "tenant-a"
    assert claim_text(claims, "org") == "42"
    assert claim_text(claims, "flag") is None
    assert claim_text(claims, "list") is None
    assert claim_text(claims, "absent") is None
