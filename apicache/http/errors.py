"""
The API's errors (SPEC.md section 4): L{ApiError} and the one table that
turns a domain exception (a rejected parameter, an unreachable store, an
upstream failure) into the JSON error a caller gets.  The Klein handlers
in L{apicache.http.api} and the checks made before routing in
L{apicache.http.channel} both answer through it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import cast

from apicache.auth.tokens import TokenRefused, www_authenticate
from apicache.cache.keys import InvalidParameter, InvalidQuery, InvalidTenant
from apicache.store.interface import StoreUnavailable
from apicache.upstream.client import BodyTooLarge, Overloaded, UpstreamTimeout, UpstreamUnreachable

__all__ = ["ApiError", "DOMAIN_ERRORS", "api_error", "error_body", "invalid_token"]

JSON = b"application/json"


class ApiError(Exception):
    """
    An error answered as ``{"error": code, "message": message}``.

    @ivar headers: further header fields of the answer, as ``(name, value)``
        byte pairs (a 401's C{WWW-Authenticate}).
    """

    def __init__(
        self, status: int, code: str, message: str, headers: tuple[tuple[bytes, bytes], ...] = ()
    ) -> None:
        super().__init__(status, code, message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def invalid_token(refused: TokenRefused) -> ApiError:
    """
    Return the C{401 invalid_token} answering a refused bearer token, with
    its C{WWW-Authenticate} challenge (RFC 6750 section 3).
    """
    return ApiError(401, "invalid_token", refused.message, ((b"WWW-Authenticate", www_authenticate(refused)),))


def _invalid_tenant(e: Exception) -> ApiError:
    # a tenant header that is not even ASCII fails before validate_tenant
    msg = str(e) if isinstance(e, InvalidTenant) else "the tenant may only hold A-Z a-z 0-9 . _ : -"
    return ApiError(400, "invalid_tenant", msg)


#: Each domain exception, with the API error it is answered with.
_TABLE: dict[type[Exception], Callable[[Exception], ApiError]] = {
    InvalidParameter: lambda e: ApiError(400, "invalid_parameter", str(e)),
    InvalidTenant: _invalid_tenant,
    InvalidQuery: lambda e: ApiError(400, "invalid_query", str(e)),
    StoreUnavailable: lambda e: ApiError(503, "store_unavailable", "the store could not be reached; nothing was invalidated"),
    Overloaded: lambda e: ApiError(503, "overloaded", "too many upstream fetches in flight"),
    UpstreamTimeout: lambda e: ApiError(504, "upstream_timeout", str(e)),
    BodyTooLarge: lambda e: ApiError(502, "upstream_unreachable", f"the upstream answer is too large: {e}"),
    UpstreamUnreachable: lambda e: ApiError(502, "upstream_unreachable", str(e)),
    TokenRefused: lambda e: invalid_token(cast(TokenRefused, e)),
}

#: The exception types L{api_error} maps, for C{Klein.handle_errors}.
DOMAIN_ERRORS: tuple[type[Exception], ...] = (ApiError, *_TABLE)


def api_error(e: BaseException) -> ApiError | None:
    """
    Return the L{ApiError} answering ``e``, or ``None`` when ``e`` is not a
    domain exception (a bug: answered 500).
    """
    if isinstance(e, ApiError):
        return e
    # most specific first: BodyTooLarge is an UpstreamUnreachable
    for cls in type(e).__mro__:
        make = _TABLE.get(cls)  # type: ignore[call-overload]
        if make is not None:
            return make(e)  # type: ignore[arg-type]
    return None


def error_body(code: str, message: str, **extra: str) -> bytes:
    """
    Return the JSON body of an error answer.
    """
    return json.dumps({"error": code, "message": message, **extra}).encode()
