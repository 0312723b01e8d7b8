"""
Link rewriting (SPEC.md section 3): absolute URLs under ``base_url`` in
``Location``, ``Content-Location`` and ``Link`` become route paths.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from hypothesis import given
from hypothesis import strategies as st

from apicache.cache.keys import InvalidParameter, decode_parameter
from apicache.cache.links import LinkTargets, rewrite_links, rewrite_url
from apicache.cache.routes import Router
from apicache.config import parse_config

ROUTES = [
    {"type": "object", "path": "/server/object(<id>)/header", "upstream": "/object({id})/header"},
    {"type": "posts", "path": "/api/posts", "upstream": "/posts"},
    {"type": "post", "path": "/api/posts/<id>", "upstream": "/posts/{id}"},
    {"type": "comment", "path": "/api/p/<post>/c/<cid>", "upstream": "/posts/{post}/comments/{cid}"},
]
BASE = "http://up.example:9000/ext/api/v1"
CONFIG = parse_config(
    {"server": {"allow_anonymous": True}, "upstream": {"base_url": BASE}, "routes": ROUTES}, "t.toml", {}
)
TARGETS = LinkTargets(CONFIG.upstream.base_url, CONFIG.routes)
ROUTER = Router(CONFIG.routes)


def rewritten(url: str) -> str:
    return rewrite_url(url.encode("ascii"), TARGETS).decode("ascii")


class TestRewriteUrl:
    def test_url_under_base_url_becomes_the_route_path(self):
        assert rewritten(BASE + "/object(42)/header") == "/server/object(42)/header"
        assert rewritten(BASE + "/posts") == "/api/posts"
        assert rewritten(BASE + "/posts/7") == "/api/posts/7"
        assert rewritten(BASE + "/posts/7/comments/9") == "/api/p/7/c/9"

    def test_query_and_fragment_are_kept(self):
        assert rewritten(BASE + "/posts?_page=2&_limit=10") == "/api/posts?_page=2&_limit=10"
        assert rewritten(BASE + "/posts/7#top") == "/api/posts/7#top"

    def test_parameters_are_decoded_once_and_reencoded(self):
        assert rewritten(BASE + "/posts/a%20b") == "/api/posts/a%20b"
        assert rewritten(BASE + "/posts/caf%C3%A9") == "/api/posts/caf%C3%A9"

    def test_scheme_and_host_compare_without_case_and_default_ports(self):
        assert rewritten("HTTP://UP.example:9000/ext/api/v1/posts") == "/api/posts"
        targets = LinkTargets("https://h/api", CONFIG.routes)
        assert rewrite_url(b"https://h:443/api/posts", targets) == b"/api/posts"
        assert rewrite_url(b"http://h/api/posts", targets) == b"http://h/api/posts"

    def test_other_urls_are_left_alone(self):
        for url in (
            "http://up.example:9001/ext/api/v1/posts",  # another port
            "http://other:9000/ext/api/v1/posts",  # another host
            "https://up.example:9000/ext/api/v1/posts",  # another scheme
            "http://u:p@up.example:9000/ext/api/v1/posts",  # credentials
            "http://up.example:9000/ext/api/v2/posts",  # outside base_url
            "http://up.example:9000/ext/api/v1posts",  # not on a segment boundary
            "http://up.example:9000/ext/api/v1/posts/7/likes",  # no route's template
            "http://up.example:9000/ext/api/v1/posts/..",  # a rejected parameter
            "http://up.example:9000/ext/api/v1/posts/a%2Fb",  # a slash inside a parameter
            "http://up.example:9000/ext/api/v1/posts/%2E%2E",
            "/ext/api/v1/posts",  # relative references are not rewritten
            "posts/7",
            "http://[::1",
            "http://up.example:port/x",
            "",
        ):
            assert rewritten(url) == url, url

    def test_values_with_spaces_or_controls_are_left_alone(self):
        for value in (b" " + BASE.encode() + b"/posts", BASE.encode() + b"/posts\r\nx: y", b"\xff\xfe"):
            assert rewrite_url(value, TARGETS) == value


class TestRewriteLinks:
    def test_location_content_location_and_link(self):
        headers = [
            (b"content-type", b"application/json"),
            (b"location", (BASE + "/posts/105").encode()),
            (b"content-location", (BASE + "/posts/105?x=1").encode()),
            (
                b"link",
                b'<http://up.example:9000/ext/api/v1/posts?_page=1&_limit=10>; rel="first", '
                b'<http://up.example:9000/ext/api/v1/posts?_page=2&_limit=10>; rel="next", '
                b'<https://elsewhere/x>; rel="help"',
            ),
            (b"x-other", (BASE + "/posts").encode()),
        ]
        assert rewrite_links(headers, TARGETS) == [
            (b"content-type", b"application/json"),
            (b"location", b"/api/posts/105"),
            (b"content-location", b"/api/posts/105?x=1"),
            (
                b"link",
                b'</api/posts?_page=1&_limit=10>; rel="first", '
                b'</api/posts?_page=2&_limit=10>; rel="next", '
                b'<https://elsewhere/x>; rel="help"',
            ),
            (b"x-other", (BASE + "/posts").encode()),
        ]

    def test_headers_without_links_are_unchanged(self):
        headers = [(b"content-type", b"text/plain"), (b"etag", b'"e"')]
        assert rewrite_links(headers, TARGETS) == headers

    def test_a_link_with_crlf_is_left_for_the_filter(self):
        value = b"<" + BASE.encode() + b"/posts>\r\nx: 1"
        assert rewrite_links([(b"link", value)], TARGETS) == [(b"link", value)]


# parameter values: any text, including what the checks reject
values = st.text(min_size=1, max_size=20)


def _route_of(path: str):
    return ROUTER.resolve(urlsplit(path).path.encode("ascii"))


@given(st.binary(max_size=200), st.sampled_from([b"location", b"content-location", b"link", b"x"]))
def test_never_crashes_on_garbage(value, name):
    out = rewrite_links([(name, value)], TARGETS)
    assert len(out) == 1 and out[0][0] == name


@given(st.text(alphabet=st.characters(codec="ascii"), max_size=120))
def test_garbage_after_base_url_never_leaves_the_routes(tail):
    url = (BASE + tail).encode("ascii")
    out = rewrite_url(url, TARGETS)
    if out != url:
        # rewritten: a path-absolute reference to a configured route
        assert out.startswith(b"/") and not out.startswith(b"//")
        assert _route_of(out.decode("ascii")) is not None


@given(values, st.sampled_from(["", "a=1", "_page=2&_limit=10", "q=%2F"]))
def test_an_upstream_url_rewrites_to_the_route_with_the_same_parameter(value, query):
    route = ROUTER.routes["post"]
    upstream = BASE + route.upstream_path((value,), query)
    out = rewritten(upstream)
    try:
        decode_parameter("id", route.upstream_path((value,), "").rsplit("/", 1)[1])
    except InvalidParameter:
        assert out == upstream
        return
    found = _route_of(out)
    assert found is not None
    assert found[0].type == "post" and found[1] == (value,)
    assert urlsplit(out).query == query
