"""
Configured routes: matching request paths (werkzeug rules, as Klein uses)
and building the upstream path from a route's template.

Matching works on the raw request path with every percent-escape decoded
except ``%2F``, ``%5C``, ``%25`` and those of control characters: an
encoded slash can't split a parameter into two path segments, so
``..%2Fetc`` reaches the parameter check (and is rejected there) instead of
being routed somewhere else, and ``%0a`` is a rejected parameter rather
than a path no rule matches.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from urllib.parse import quote

from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule, UnicodeConverter

from apicache.cache.keys import InvalidParameter, decode_parameter, encode_parameter
from apicache.config import ConfigError, RouteConfig

__all__ = ["Route", "Router", "RESERVED_PATHS"]

#: How many matched paths L{Router.resolve} remembers (then forgets at once).
MEMO_SIZE = 8192
#: Longer paths are not remembered: the memo stays a small fixed overhead.
MEMO_PATH_BYTES = 512

#: Paths that win over any route.
RESERVED_PATHS = frozenset({b"/", b"/healthz", b"/readyz", b"/metrics", b"/clear"})

_ESCAPE_OR_PERCENT = re.compile(rb"%([0-9A-Fa-f]{2})?")
# '/', '\\', '%' and the controls: a decoded control (``%0a``) would make
# the rule fail to match (404) instead of reaching the parameter check (400)
_KEEP_ENCODED = frozenset({0x2F, 0x5C, 0x25, *range(0x20), 0x7F})
_TEMPLATE_PARAM = re.compile(r"\{([^{}]*)\}")
# what may stand unescaped in a path segment (RFC 3986 pchar) plus '/'
_PATH_SAFE = "/:@!$&'()*+,;=-._~"


def _partly_unquote(raw: bytes) -> bytes:
    # A bare '%' is escaped as %25 first: otherwise "%%34%31" would become
    # "%41" here and "A" once the parameter is decoded (decoded twice).
    if b"%" not in raw:
        return raw

    def one(m: re.Match[bytes]) -> bytes:
        if m.group(1) is None:
            return b"%25"
        c = int(m.group(1), 16)
        return m.group(0) if c in _KEEP_ENCODED else bytes((c,))

    return _ESCAPE_OR_PERCENT.sub(one, raw)


class _MaybeEmpty(UnicodeConverter):
    """
    The default (string) converter, matching an empty segment too: an empty
    path parameter is then rejected by the parameter check (400
    ``invalid_parameter``, SPEC.md section 3) instead of matching no route.
    """

    def __init__(self, map: Map, minlength: int = 0, maxlength: int | None = None, length: int | None = None) -> None:
        super().__init__(map, minlength, maxlength, length)


class Route:
    """
    One configured route, compiled.
    """

    def __init__(self, config: RouteConfig) -> None:
        self.config = config
        self.type = config.type
        self.params = config.params
        self._template: list[tuple[str, bool]] = []
        pos = 0
        for m in _TEMPLATE_PARAM.finditer(config.upstream):
            self._template.append((quote(config.upstream[pos : m.start()], safe=_PATH_SAFE), False))
            self._template.append((m.group(1), True))
            pos = m.end()
        self._template.append((quote(config.upstream[pos:], safe=_PATH_SAFE), False))

    def decode(self, raw: Mapping[str, str]) -> tuple[str, ...]:
        """
        Return the decoded path parameters in the route's order.

        @raise InvalidParameter: one is rejected (SPEC.md section 3).
        """
        return tuple(decode_parameter(name, raw[name]) for name in self.params)

    def upstream_path(self, params: Sequence[str], query: str) -> str:
        """
        Return the upstream path (to append to ``base_url``) with each
        parameter re-encoded with every reserved character escaped, and the
        canonical query.
        """
        values = dict(zip(self.params, params, strict=True))
        path = "".join(encode_parameter(values[s]) if is_param else s for s, is_param in self._template)
        return f"{path}?{query}" if query else path


class Router:
    """
    Matches request paths against the configured routes.
    """

    def __init__(self, routes: Sequence[RouteConfig], source: str = "<config>") -> None:
        self.routes = {r.type: Route(r) for r in routes}
        self._memo: dict[bytes, tuple[Route, tuple[str, ...]]] = {}
        rules = []
        for i, r in enumerate(routes):
            try:
                rules.append(Rule(r.path, endpoint=r.type, methods=None))
            except (ValueError, TypeError) as e:
                raise ConfigError(source, f"routes[{i}].path", f"not a valid route rule: {e}") from None
        try:
            self._map = Map(
                rules,
                strict_slashes=False,
                merge_slashes=False,
                redirect_defaults=False,
                converters={"default": _MaybeEmpty, "string": _MaybeEmpty},
            )
            self._adapter = self._map.bind("apicache", "/")
        except (ValueError, TypeError) as e:
            raise ConfigError(source, "routes", f"not valid route rules: {e}") from None

    def resolve(self, raw_path: bytes) -> tuple[Route, tuple[str, ...]] | None:
        """
        Return the route matching ``raw_path`` and its decoded parameters,
        or ``None``.  Successful answers are remembered (a bounded memo of
        a pure function), so that a path seen before is neither matched nor
        decoded again.

        @raise InvalidParameter: the path is not UTF-8 once decoded, or a
            parameter is rejected (SPEC.md section 3).
        """
        found = self._memo.get(raw_path)
        if found is not None:
            return found
        matched = self.match(raw_path)
        if matched is None:
            return None
        route, raw = matched
        found = (route, route.decode(raw))
        if len(raw_path) <= MEMO_PATH_BYTES:
            if len(self._memo) >= MEMO_SIZE:
                self._memo.clear()
            self._memo[raw_path] = found
        return found

    def match(self, raw_path: bytes) -> tuple[Route, dict[str, str]] | None:
        """
        Return the route matching ``raw_path`` (as sent, percent-encoded) and
        its parameters (still percent-encoded where it matters), or ``None``.

        @raise InvalidParameter: the path is not UTF-8 once decoded.
        """
        if not self.routes:
            return None
        try:
            path = _partly_unquote(raw_path).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidParameter("the path is not UTF-8 once decoded") from None
        try:
            endpoint, args = self._adapter.match(path)
        except HTTPException:
            return None
        return self.routes[endpoint], {k: str(v) for k, v in args.items()}
