"""
Matching request paths to routes and building upstream paths.
"""

import pytest

from apicache.cache.keys import InvalidParameter
from apicache.cache.routes import Router
from apicache.config import parse_config

ROUTES = [
    {"type": "object", "path": "/server/object(<id>)/header", "upstream": "/object({id})/header"},
    {"type": "template", "path": "/server/templates/<id>", "upstream": "/templates/{id}"},
    {"type": "pair", "path": "/a/<x>/b/<int:y>", "upstream": "/pair/{y}/{x}"},
]


@pytest.fixture
def router():
    cfg = parse_config(
        {"server": {"allow_anonymous": True}, "upstream": {"base_url": "http://u"}, "routes": ROUTES}, "t.toml", {}
    )
    return Router(cfg.routes)


def match(router, raw):
    found = router.match(raw)
    assert found is not None, raw
    route, params = found
    return route.type, route.decode(params)


def test_literal_parentheses_match(router):
    assert match(router, b"/server/object(42)/header") == ("object", ("42",))


def test_several_parameters_in_path_order(router):
    assert match(router, b"/a/x1/b/7") == ("pair", ("x1", "7"))


def test_unknown_path_matches_nothing(router):
    assert router.match(b"/server/other/1") is None
    assert router.match(b"/server/templates/1/extra") is None


def test_encoded_slash_stays_in_the_parameter_and_is_rejected(router):
    route, raw = router.match(b"/server/templates/..%2Fetc")
    with pytest.raises(InvalidParameter):
        route.decode(raw)


def test_escapes_are_decoded_once(router):
    assert match(router, b"/server/templates/%2541") == ("template", ("%41",))
    assert match(router, b"/server/templates/a%20b") == ("template", ("a b",))


def test_bare_percent_does_not_make_an_escape(router):
    assert match(router, b"/server/templates/%%34%31") == ("template", ("%41",))
    assert match(router, b"/server/templates/50%") == ("template", ("50%",))


def test_upstream_path_escapes_parameters_and_appends_query(router):
    route = router.routes["object"]
    assert route.upstream_path(("a b/?",), "") == "/object(a%20b%2F%3F)/header"
    assert route.upstream_path(("1",), "a=1&b=2") == "/object(1)/header?a=1&b=2"
    assert router.routes["pair"].upstream_path(("x", "7"), "") == "/pair/7/x"


def test_no_routes_match_nothing():
    assert Router([]).match(b"/anything") is None
