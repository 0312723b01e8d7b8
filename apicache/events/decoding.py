"""
Decoding: a Kafka message value becomes the cache actions its ``[[events]]``
rules ask for (SPEC.md section 5).  Pure and synchronous: no I/O, no reactor.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from apicache.cache.keys import MAX_PARAM_BYTES, InvalidTenant, validate_tenant
from apicache.cache.tags import InvalidTag, fill_template, template_names, validate_tag
from apicache.config import EventRule, RouteConfig

__all__ = ["BadEvent", "CacheAction", "EventDecoder", "MAX_EVENT_BYTES", "excerpt"]

#: A message value longer than this is skipped unread: events name a
#: resource, they don't carry it.
MAX_EVENT_BYTES = 65536
#: How much of a bad message's value a log line shows.
_LOGGED_BYTES = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class BadEvent(ValueError):
    """
    A message that can't be applied.  ``str(error)`` says why, in a few words.
    """


@dataclass(frozen=True)
class CacheAction:
    """
    One thing a message asks for: ``action`` (``"invalidate"`` or
    ``"refresh"``) on the resource (``tenant`` or every tenant when
    ``None``, ``route``, ``params``), or, when ``route`` is empty, on every
    entry carrying one of ``tags`` (SPEC.md section 5).
    """

    action: str
    tenant: str | None
    route: str
    params: tuple[str, ...]
    tags: tuple[str, ...] = ()


def _id_value(name: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise BadEvent(f"field {name!r} is not a string or an integer")
    text = value if isinstance(value, str) else str(value)
    if not text:
        raise BadEvent(f"field {name!r} is empty")
    if len(text.encode("utf-8", "surrogatepass")) > MAX_PARAM_BYTES:
        raise BadEvent(f"field {name!r} is longer than {MAX_PARAM_BYTES} bytes")
    return text


def _tags(kind: str, templates: Sequence[str], data: dict[str, Any]) -> tuple[str, ...]:
    """
    Return the tags of ``templates`` filled from the message's fields.

    @raise BadEvent: a field is missing, of the wrong type, or makes a tag
        that is not one.
    """
    values: dict[str, str] = {}
    tags: list[str] = []
    for template in templates:
        for name in template_names(template):
            if name not in values:
                if name not in data:
                    raise BadEvent(f"type {kind!r} lacks field {name!r}")
                values[name] = _id_value(name, data[name])
        try:
            tag = validate_tag(fill_template(template, values))
        except InvalidTag as e:
            raise BadEvent(f"a tag of type {kind!r} is not a tag: {e}") from None
        if tag not in tags:
            tags.append(tag)
    return tuple(tags)


def _tenant_value(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise BadEvent(f"field {name!r} is not a string or an integer")
    try:
        return validate_tenant(value if isinstance(value, str) else str(value))
    except InvalidTenant as e:
        raise BadEvent(f"field {name!r}: {e}") from None


class EventDecoder:
    """
    Turns message values into :class:`CacheAction` lists, following the
    ``[[events]]`` rules.  Pure and synchronous.
    """

    def __init__(self, rules: Sequence[EventRule], routes: Iterable[RouteConfig]) -> None:
        params = {r.type: r.params for r in routes}
        #: each rule with its route's parameter names in path order (none
        #: for a rule with tags only)
        self._rules = [(rule, params[rule.route] if rule.route else ()) for rule in rules]

    def decode(self, value: bytes | None) -> list[CacheAction]:
        """
        Return the actions ``value`` asks for, in rule order, without
        duplicates.  A field the rules name for a tenant may be absent (or
        ``null``): then the action is for every tenant.

        @raise BadEvent: not a JSON object in UTF-8 of at most
            L{MAX_EVENT_BYTES}, no rule matches its type, or a matching rule
            finds a field missing or of the wrong type.
        """
        if value is None or len(value) == 0:
            raise BadEvent("empty message")
        if len(value) > MAX_EVENT_BYTES:
            raise BadEvent(f"message of {len(value)} bytes is over {MAX_EVENT_BYTES}")
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError:
            raise BadEvent("not UTF-8") from None
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):
            raise BadEvent("not JSON") from None
        if not isinstance(data, dict):
            raise BadEvent("not a JSON object")
        actions: list[CacheAction] = []
        matched = False
        for rule, names in self._rules:
            kind = data.get(rule.type_field)
            if not isinstance(kind, str) or kind not in rule.types:
                continue
            matched = True
            params = []
            for name in names:
                field = rule.fields[name]
                if field not in data:
                    raise BadEvent(f"type {kind!r} lacks field {field!r}")
                params.append(_id_value(field, data[field]))
            tenant = _tenant_value(rule.tenant_field, data.get(rule.tenant_field)) if rule.tenant_field else None
            wanted: list[CacheAction] = []
            if rule.route:
                wanted.append(CacheAction(rule.action, tenant, rule.route, tuple(params)))
            if rule.tags:
                wanted.append(CacheAction(rule.action, tenant, "", (), _tags(kind, rule.tags, data)))
            for action in wanted:
                if action not in actions:
                    actions.append(action)
        if not matched:
            kinds = {rule.type_field for rule, _ in self._rules}
            found = [data.get(k) for k in kinds if k in data]
            if not found:
                raise BadEvent(f"no {' or '.join(sorted(repr(k) for k in kinds)) or 'type'} field")
            raise BadEvent(f"no [[events]] entry for type {excerpt(str(found[0]).encode('utf-8', 'replace'), 64)}")
        return actions


def excerpt(value: bytes | None, limit: int = _LOGGED_BYTES) -> str:
    """
    Return the start of ``value`` fit for a log line: at most ``limit``
    bytes, control characters escaped, ``...`` when cut.  Messages are
    logged this way, never in full.
    """
    if value is None:
        return ""
    text = value[:limit].decode("utf-8", "backslashreplace")
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return text + ("..." if len(value) > limit else "")
