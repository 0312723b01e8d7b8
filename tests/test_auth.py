"""
The api-key and bearer-claim checks (apicache.auth).
"""

from __future__ import annotations

import base64
import json

import pytest

from apicache.auth.apikey import ApiKeys, bearer_claim, claim_matches, matches_any


def jwt(claims) -> bytes:
    part = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=")
    return b"Bearer h." + part + b".s"


def test_a_configured_key_is_accepted_and_others_are_not():
    keys = ApiKeys(["k1", "k2"])
    assert keys.required
    assert keys.accepts(b"k1") and keys.accepts(b"k2")
    assert not keys.accepts(b"k3") and not keys.accepts(b"") and not keys.accepts(b"k1 ")


def test_no_keys_means_none_is_required():
    keys = ApiKeys([])
    assert not keys.required
    assert not keys.accepts(b"anything")


def test_every_secret_is_compared(monkeypatch):
    """No early exit: the time taken does not say which key matched."""
    import hmac

    seen = []
    real = hmac.compare_digest
    monkeypatch.setattr(hmac, "compare_digest", lambda a, b: seen.append(b) or real(a, b))
    assert matches_any(b"a", [b"a", b"b", b"c"])
    assert seen == [b"a", b"b", b"c"]


@pytest.mark.parametrize(
    "values, claim",
    [
        ([jwt({"zid": "t1"})], "t1"),
        ([jwt({"zid": 42})], "42"),
        ([jwt({"zid": ["t1"]})], None),
        ([jwt({})], None),
        ([b"Bearer nonsense"], None),
        ([b"Basic abc"], None),
        ([b"Bearer h.!!!.s"], None),
        ([b"Bearer h." + base64.urlsafe_b64encode(b"[1]") + b".s"], None),
        (None, None),
    ],
)
def test_bearer_claim_is_read_from_the_jwt_payload(values, claim):
    assert bearer_claim(values, "zid") == claim


def test_claim_matches_only_the_same_tenant():
    assert claim_matches([jwt({"zid": "t1"})], "zid", "t1")
    assert not claim_matches([jwt({"zid": "t1"})], "zid", "t2")
    assert not claim_matches(None, "zid", "t1")
