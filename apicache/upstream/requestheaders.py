"""
Every header an upstream request carries is decided here (SPEC.md sections
3 and 4), in the order it is sent:

 1. the caller's: those named by ``forward_headers`` (a pass-through write
    adds its write headers), ``traceparent`` set to this request's span;
 2. ``accept-encoding``: the normalised value (``gzip`` or ``identity``),
    never the caller's own;
 3. on a revalidation, the stored answer's validators (RFC 9111 section
    4.3.1);
 4. ``set_headers`` and ``Via`` (RFC 9110 section 7.6.3), which no caller
    value replaces.

The HTTP API builds 1 and 2 for a request (L{CallerHeaders}), the cache core
adds 3 when it revalidates (L{with_validators}), and the intermediary adds 4
to every fetch, cached and passed through alike (L{FixedHeaders}).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from twisted.web.http_headers import Headers

__all__ = ["VIA", "CallerHeaders", "FixedHeaders", "with_validators"]

#: The ``Via`` every upstream request carries (RFC 9110 section 7.6.3).
VIA = b"1.1 apicache"

_TRACEPARENT = b"traceparent"


class CallerHeaders:
    """
    The caller's part of an upstream request's headers.

    @param forward_headers: the names forwarded (``upstream.forward_headers``).
    """

    def __init__(self, forward_headers: Sequence[str]) -> None:
        self._forward = [h.encode("ascii") for h in forward_headers]

    def of(
        self, headers: Headers, traceparent: bytes | None, encoding: bytes, extra: Sequence[bytes] = ()
    ) -> list[tuple[bytes, bytes]]:
        """
        Return what a request with ``headers`` sends upstream of its own, as
        ``(name, value)`` pairs: the values of the forwarded names and of
        those in ``extra``, each in the caller's order, then
        ``accept-encoding: encoding``.

        @param traceparent: this request's span, sent instead of the
            caller's ``traceparent`` (``None``: the caller's, if any).
        @param encoding: the normalised ``Accept-Encoding``
            (L{apicache.cache.policy.normalise_accept_encoding}).
        """
        forwarded: list[tuple[bytes, bytes]] = []
        for names in (self._forward, extra):
            for name in names:
                if traceparent is not None and name.lower() == _TRACEPARENT:
                    forwarded.append((name, traceparent))
                    continue
                for value in headers.getRawHeaders(name, ()):
                    forwarded.append((name, value))
        # SPEC.md section 3: the normalised value, never the caller's own
        forwarded.append((b"accept-encoding", encoding))
        return forwarded


def with_validators(
    headers: Sequence[tuple[bytes, bytes]], validators: Sequence[tuple[bytes, bytes]]
) -> Sequence[tuple[bytes, bytes]]:
    """
    Return ``headers`` with a stored answer's ``validators`` added
    (L{apicache.cache.policy.validators}), or ``headers`` themselves
    without any.
    """
    return [*headers, *validators] if validators else headers


class FixedHeaders:
    """
    apicache's own part of every upstream request: ``set_headers`` and
    ``Via``.

    @param set_headers: never logged (the values may be secrets).
    """

    def __init__(self, set_headers: Mapping[str, str]) -> None:
        fixed = [(k.lower().encode("ascii"), v.encode("utf-8")) for k, v in set_headers.items()]
        self._fixed = [*fixed, (b"via", VIA)]
        #: names a caller's value is dropped for: apicache sets them
        self._own = frozenset(name for name, _ in self._fixed)

    def added_to(self, headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """
        Return ``headers`` without any of the names apicache sets, followed
        by ``set_headers`` and ``Via``.
        """
        own = self._own
        return [(n, v) for n, v in headers if n.lower() not in own] + self._fixed
