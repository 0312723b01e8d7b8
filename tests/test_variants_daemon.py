"""
Variants through the real daemon (twistd) in front of the loopback upstream
(SPEC.md section 3, v3; RFC 9111 section 4.1): an upstream answering
C{Vary: Accept-Language} is stored once per language under one key, a new
language is a C{vary-miss}, a purge drops every language; C{Vary:
Authorization} gives one variant per token; an identity answer serves gzip
callers too.
"""

from __future__ import annotations

PATH = "/server/object(42)/header"
UP = "/api/object(42)/header"
#: accept-language forwarded but not keyed: languages are told apart by
#: the upstream's Vary alone
UNKEYED_LANGUAGE = {"upstream": {"unkeyed_headers": ["authorization", "x-correlationid", "accept-language"]}}


def test_vary_accept_language_variants_in_the_daemon(make_daemon, upstream):
    """RFC 9111 section 4.1: one key, one stored variant per Accept-Language."""
    upstream.set(UP, headers={"Content-Type": "application/json", "Vary": "Accept-Language"})
    d = make_daemon(UNKEYED_LANGUAGE)
    en = d.get(PATH, accept_language="en")
    assert (en.status, en.cache, en.json()["accept_language"]) == (200, "MISS", "en")
    assert en.headers["cache-status"] == "apicache;fwd=uri-miss;fwd-status=200;stored"
    de = d.get(PATH, accept_language="de")
    assert (de.cache, de.json()["accept_language"]) == ("MISS", "de")
    assert de.headers["cache-status"] == "apicache;fwd=vary-miss;fwd-status=200;stored"
    assert upstream.seen[-1].headers["accept-language"] == "de"
    for lang, served in (("EN", "en"), ("de", "de"), ("en", "en")):
        r = d.get(PATH, accept_language=lang)
        assert (r.cache, r.json()["accept_language"]) == ("HIT", served)
        assert r.headers["vary"] == "Accept-Language"
    # the identity answer without Vary: accept-encoding serves gzip callers too
    assert d.get(PATH, accept_language="en", accept_encoding="gzip").cache == "HIT"
    assert upstream.calls(UP) == 2
    purged = d.delete(PATH, tenant="t1")
    assert (purged.status, purged.json()) == (200, {"invalidated": 2})
    assert d.get(PATH, accept_language="de").cache == "MISS"
    assert upstream.calls(UP) == 3


def test_vary_authorization_is_one_variant_per_token(make_daemon, upstream):
    """
    SPEC.md section 3 (v3): a Vary on a forwarded unkeyed header
    (authorization) is stored, one variant per value, compared byte for byte.
    """
    upstream.set(UP, headers={"Content-Type": "application/json", "Vary": "Authorization"})
    d = make_daemon()
    assert d.get(PATH, authorization="Bearer a").cache == "MISS"
    b = d.get(PATH, authorization="Bearer b")
    assert (b.cache, b.headers["cache-status"]) == ("MISS", "apicache;fwd=vary-miss;fwd-status=200;stored")
    assert d.get(PATH, authorization="Bearer a").cache == "HIT"
    assert d.get(PATH, authorization="Bearer b").cache == "HIT"
    assert d.get(PATH, authorization="bearer a").cache == "MISS"
    assert upstream.calls(UP) == 3
