import pytest

# starts real processes (make test-fast leaves it out)
pytestmark = pytest.mark.integration
"""
The daemon as users start it: a miss, then a hit.
"""


def test_second_request_is_a_hit(make_daemon, upstream):
    d = make_daemon()
    first = d.get("/server/object(42)/header", authorization="Bearer abc")
    second = d.get("/server/object(42)/header", authorization="Bearer abc")
    assert (first.status, first.cache) == (200, "MISS")
    assert (second.status, second.cache) == (200, "HIT")
    assert second.body == first.body
    assert upstream.calls("/api/object(42)/header") == 1
    assert upstream.seen[0].headers["authorization"] == "Bearer abc"
    assert d.stop() in (0, -15)
