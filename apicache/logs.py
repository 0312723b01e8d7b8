"""
Logging: one JSON object per line (time, level, message, then the event's
own fields), filtered by level.

The observer is installed on the twistd application by the root service
(L{apicache.service.ApiCacheService}), so twistd's own lines are JSON too.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    formatEvent,
)
from zope.interface import implementer

from apicache.tracing import current_trace_id

__all__ = ["AcceptErrorsOncePerSecond", "JSONLineObserver", "json_log_observer", "SECRET_FIELDS", "capture_stdlib_logging"]

#: Event fields that are never written, whatever logged them.
SECRET_FIELDS = frozenset(
    {
        "authorization",
        "api_key",
        "token",
        "access_token",
        "password",
        "sasl_password",
        "client_secret",
        "credentials",
        "redis_url",
    }
)

_LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warn": LogLevel.warn,
    "warning": LogLevel.warn,
    "error": LogLevel.error,
    "critical": LogLevel.critical,
}
_SCALARS = (str, int, float, bool, type(None))


@implementer(ILogObserver)
class JSONLineObserver:
    """
    Writes each event as one JSON line: ``time`` (ISO 8601 UTC), ``level``,
    ``message``, ``system``, the event's own scalar fields, and
    ``traceback`` for failures.
    """

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    def __call__(self, event: dict[str, Any]) -> None:
        level = event.get("log_level", LogLevel.info)
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(event.get("log_time") or 0, UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": getattr(level, "name", str(level)),
            "message": (formatEvent(event) or "").strip(),
        }
        system = event.get("log_system") or event.get("log_namespace")
        if system:
            out["system"] = system
        for k, v in event.items():
            if k.startswith("log_") or k in out or k in SECRET_FIELDS:
                continue
            if k in ("message", "format", "isError", "why", "failure", "time", "system", "printed"):
                continue
            if isinstance(v, _SCALARS):
                out[k] = v
        if "trace_id" not in out:
            trace_id = current_trace_id()
            if trace_id is not None:
                out["trace_id"] = trace_id
        failure = event.get("log_failure") or event.get("failure")
        if failure is not None:
            try:
                out["traceback"] = failure.getTraceback()
            except Exception:  # noqa: BLE001 - logging must not fail
                out["traceback"] = repr(failure)
        try:
            line = json.dumps(out, default=str, ensure_ascii=False)
        except (TypeError, ValueError):
            line = json.dumps({"time": out["time"], "level": out["level"], "message": repr(out["message"])})
        self._stream.write(line + "\n")
        self._stream.flush()


@implementer(ILogFilterPredicate)
class AcceptErrorsOncePerSecond:
    """
    Lets through at most one event a second about a listening port that
    can't accept (``EMFILE`` and the like; Twisted recovers by itself, with
    a reserved descriptor, but logs every attempt: under a connection flood
    that is thousands of lines a second).  The event let through carries
    ``suppressed``, the number dropped since the last one.

    Times are the events' own ``log_time``: no clock to inject.
    """

    _NAMESPACE = "twisted.internet.tcp"
    _FORMATS = ("EMFILE", "Re-reserving EMFILE", "Could not accept new connection")

    def __init__(self) -> None:
        self._last = float("-inf")
        self._suppressed = 0

    def __call__(self, event: dict[str, Any]) -> PredicateResult:
        namespace = event.get("log_namespace") or ""
        text = event.get("log_format") or ""
        if not (namespace.startswith(self._NAMESPACE) and text.startswith(self._FORMATS)):
            return PredicateResult.maybe
        now = event.get("log_time") or 0.0
        if now - self._last < 1.0:
            self._suppressed += 1
            return PredicateResult.no
        self._last = now
        event["suppressed"] = self._suppressed
        self._suppressed = 0
        return PredicateResult.maybe


def json_log_observer(level: str = "info", stream: IO[str] | None = None) -> ILogObserver:
    """
    Return an observer writing JSON lines to ``stream`` (stdout) for events
    at ``level`` or above, accept errors at most once a second.
    """
    predicate = LogLevelFilterPredicate(defaultLogLevel=_LEVELS[level])
    return FilteringLogObserver(JSONLineObserver(stream or sys.stdout), [predicate, AcceptErrorsOncePerSecond()])


class _ToTwistedLogger(logging.Handler):
    """Hands standard-library log records to Twisted's logging (so they are JSON lines too)."""

    _levels = {
        logging.DEBUG: LogLevel.debug,
        logging.INFO: LogLevel.info,
        logging.WARNING: LogLevel.warn,
        logging.ERROR: LogLevel.error,
        logging.CRITICAL: LogLevel.critical,
    }

    def emit(self, record: logging.LogRecord) -> None:
        level = self._levels.get(record.levelno, LogLevel.warn if record.levelno > logging.INFO else LogLevel.info)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad log call must not fail the caller
            message = str(record.msg)
        Logger(namespace=record.name).emit(level, "{stdlib_message}", stdlib_message=message)


def capture_stdlib_logging(level: str = "info") -> None:
    """
    Send the standard library's log records (libraries such as the
    OpenTelemetry exporter use it) to Twisted's logging at ``level`` or
    above, instead of plain text on stderr.
    """
    root = logging.getLogger()
    if not any(isinstance(h, _ToTwistedLogger) for h in root.handlers):
        root.addHandler(_ToTwistedLogger())
    root.setLevel({"debug": logging.DEBUG, "info": logging.INFO, "warn": logging.WARNING}.get(level, logging.ERROR))

