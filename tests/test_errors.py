"""
The one table from domain exceptions to API errors (apicache.http.errors).
"""

from __future__ import annotations

import pytest

from apicache.cache.keys import InvalidParameter, InvalidQuery, InvalidTenant
from apicache.http.errors import DOMAIN_ERRORS, ApiError, api_error
from apicache.store.interface import StoreUnavailable
from apicache.upstream.client import BodyTooLarge, Overloaded, UpstreamTimeout, UpstreamUnreachable


@pytest.mark.parametrize(
    "exception, status, code",
    [
        (InvalidParameter("p"), 400, "invalid_parameter"),
        (InvalidTenant("t"), 400, "invalid_tenant"),
        (InvalidQuery("q"), 400, "invalid_query"),
        (StoreUnavailable("down"), 503, "store_unavailable"),
        (Overloaded("busy"), 503, "overloaded"),
        (UpstreamTimeout("slow"), 504, "upstream_timeout"),
        (BodyTooLarge("big"), 502, "upstream_unreachable"),
        (UpstreamUnreachable("refused"), 502, "upstream_unreachable"),
        (ApiError(418, "teapot", "short and stout"), 418, "teapot"),
    ],
)
def test_each_domain_exception_has_its_api_error(exception, status, code):
    error = api_error(exception)
    assert error is not None and (error.status, error.code) == (status, code)
    assert isinstance(exception, DOMAIN_ERRORS)


def test_a_too_large_body_says_so():
    assert "too large" in api_error(BodyTooLarge("big")).message


def test_other_exceptions_are_not_domain_errors():
    assert api_error(RuntimeError("bug")) is None
    assert not isinstance(RuntimeError("bug"), DOMAIN_ERRORS)
