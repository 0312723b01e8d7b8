"""
Link rewriting (SPEC.md section 3): an absolute URL in ``Location``,
``Content-Location`` or ``Link`` that starts with ``upstream.base_url`` and
whose path matches a route's upstream template is rewritten to that route's
path, a path-absolute reference with the query (and fragment) kept, so
that callers following links never go around apicache.

L{rewrite_links} is a pure function of the answer's headers and the
L{LinkTargets} compiled once from the configuration.  Its output is checked
against the L{Router}: a URL is only ever rewritten to a path that resolves
to the same route and parameters, so it never produces a URL outside the
routes; anything it does not recognise (relative references, other hosts,
garbage) is left as it was.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import SplitResult, quote, urlsplit

from apicache.cache.keys import InvalidParameter, decode_parameter, encode_parameter
from apicache.cache.routes import Router
from apicache.config import RouteConfig

__all__ = ["LinkTargets", "rewrite_links", "rewrite_url", "LINK_HEADERS"]

#: The response headers whose URLs are rewritten.
LINK_HEADERS = frozenset({b"location", b"content-location", b"link"})

_DEFAULT_PORTS = {"http": 80, "https": 443}
_TEMPLATE_PARAM = re.compile(r"\{([^{}]*)\}")
_RULE_PARAM = re.compile(r"<([^<>]*)>")
# what may stand unescaped in a path (RFC 3986 pchar plus '/'), as routes.py
_PATH_SAFE = "/:@!$&'()*+,;=-._~"
# a URI-Reference inside a Link field value (RFC 8288 section 3)
_LINK_URI = re.compile(rb"<([^<>]*)>")
_UNSAFE = re.compile(rb"[\x00-\x20\x7f-\xff]")


class _Target:
    """One route: its upstream template as a pattern, its rule as a recipe."""

    __slots__ = ("type", "params", "pattern", "recipe")

    def __init__(self, route: RouteConfig) -> None:
        self.type = route.type
        self.params = route.params
        parts: list[str] = []
        pos = 0
        for m in _TEMPLATE_PARAM.finditer(route.upstream):
            parts.append(re.escape(quote(route.upstream[pos : m.start()], safe=_PATH_SAFE)))
            parts.append(f"(?P<{m.group(1)}>[^/?#]+)")
            pos = m.end()
        parts.append(re.escape(quote(route.upstream[pos:], safe=_PATH_SAFE)))
        self.pattern = re.compile("".join(parts))
        # the rule, as literal text and parameter names in turn
        self.recipe: list[tuple[str, bool]] = []
        pos = 0
        for m in _RULE_PARAM.finditer(route.path):
            self.recipe.append((quote(route.path[pos : m.start()], safe=_PATH_SAFE), False))
            self.recipe.append((m.group(1).rpartition(":")[2].strip(), True))
            pos = m.end()
        self.recipe.append((quote(route.path[pos:], safe=_PATH_SAFE), False))

    def route_path(self, upstream_path: str) -> tuple[str, tuple[str, ...]] | None:
        """
        Return the route path for an upstream path this template matches,
        and the decoded parameters, or ``None``.
        """
        m = self.pattern.fullmatch(upstream_path)
        if m is None:
            return None
        try:
            values = {name: decode_parameter(name, m.group(name)) for name in self.params}
        except (InvalidParameter, IndexError):
            return None
        path = "".join(encode_parameter(values[s]) if is_param else s for s, is_param in self.recipe)
        return path, tuple(values[name] for name in self.params)


class LinkTargets:
    """
    ``upstream.base_url`` and the routes, compiled for L{rewrite_links}.
    """

    def __init__(self, base_url: str, routes: Sequence[RouteConfig], router: Router | None = None) -> None:
        base = urlsplit(base_url)
        self.scheme = base.scheme.lower()
        self.host = (base.hostname or "").lower()
        self.port = base.port or _DEFAULT_PORTS.get(self.scheme)
        self.path = base.path.rstrip("/")
        self.targets = [_Target(r) for r in routes]
        self.router = router if router is not None else Router(routes)

    def route_path(self, url: str) -> str | None:
        """
        Return the path-absolute reference (query and fragment kept) that
        ``url`` is rewritten to, or ``None`` to leave it alone.
        """
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            return None
        if not self._same_origin(parts, port):
            return None
        path = parts.path
        if not path.startswith(self.path + "/"):
            return None
        upstream_path = path[len(self.path) :]
        for target in self.targets:
            found = target.route_path(upstream_path)
            if found is None:
                continue
            route_path, params = found
            if not self._routes_to(route_path, target.type, params):
                continue
            if parts.query:
                route_path += "?" + parts.query
            if parts.fragment:
                route_path += "#" + parts.fragment
            return route_path
        return None

    def _same_origin(self, parts: SplitResult, port: int | None) -> bool:
        if parts.scheme.lower() != self.scheme or parts.username is not None or parts.password is not None:
            return False
        if (parts.hostname or "") != self.host:
            return False
        return (port or _DEFAULT_PORTS.get(self.scheme)) == self.port

    def _routes_to(self, path: str, route_type: str, params: tuple[str, ...]) -> bool:
        # the guarantee: a rewritten link reaches the same route and
        # parameters through apicache, or it is not rewritten
        try:
            found = self.router.resolve(path.encode("ascii"))
        except (InvalidParameter, UnicodeEncodeError):
            return False
        return found is not None and found[0].type == route_type and found[1] == params


def rewrite_url(value: bytes, targets: LinkTargets) -> bytes:
    """
    Return ``value`` (one URL) rewritten to a route's path, or unchanged.
    """
    if not value or _UNSAFE.search(value):
        return value
    rewritten = targets.route_path(value.decode("ascii"))
    return value if rewritten is None else rewritten.encode("ascii")


def rewrite_links(headers: Sequence[tuple[bytes, bytes]], targets: LinkTargets) -> list[tuple[bytes, bytes]]:
    """
    Return ``headers`` (names in lower case) with the URLs of ``Location``,
    ``Content-Location`` and ``Link`` rewritten by L{rewrite_url}; every
    other header, and the order, unchanged.  Never raises on odd values.
    """
    if not any(name in LINK_HEADERS for name, _ in headers):
        return list(headers)
    out: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        if name == b"link":
            if b"\r" not in value and b"\n" not in value and b"\0" not in value:
                value = _LINK_URI.sub(lambda m: b"<" + rewrite_url(m.group(1), targets) + b">", value)
        elif name in LINK_HEADERS:
            value = rewrite_url(value, targets)
        out.append((name, value))
    return out
