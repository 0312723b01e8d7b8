"""
Logging: one JSON object per line (time, level, message, then the event's
own fields), filtered by level.

The observer is installed on the twistd application by the root service
(L{apicache.daemon.service.ApiCacheService}), so twistd's own lines are JSON too.

Access lines take a shorter way (L{AccessLog}): built as one small dict,
encoded once, and written to stdout in batches, never through
twisted.logger (whose event machinery cost more than the request itself).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import stat
import sys
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii as _json_str  # type: ignore[attr-defined]
from typing import IO, Any
from urllib.parse import unquote_plus

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
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

from apicache.ops.tracing import current_trace_id, new_trace_id

__all__ = [
    "AcceptErrorsOncePerSecond",
    "JSONLineObserver",
    "json_log_observer",
    "SECRET_FIELDS",
    "capture_stdlib_logging",
    "AccessLog",
    "redact_query",
    "PIPE_BUF",
]

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



# -- the access log ------------------------------------------------------------

#: Query parameters whose name holds one of these have their value written
#: as ``***`` (SPEC.md section 4; v3: ``pass`` and ``jwt`` too, ``pass``
#: covering ``password``).
_SECRET_PARAM = re.compile(r"token|key|secret|pass|signature|auth|jwt", re.IGNORECASE)
#: (v3) ``;`` separates parameters too, as some servers read it
_SEPARATOR = re.compile(r"([&;])")
#: The largest write of lines to a regular file opened for appending
#: (L{AccessLog.flush}): fewer system calls than L{PIPE_BUF} bytes at a time.
FILE_CHUNK = 65536


def _chunk_size(fd: int) -> int:
    """
    Return how many bytes of whole lines one write to ``fd`` may hold
    without being interleaved with another process's: L{FILE_CHUNK} on a
    regular file opened for appending (every write goes whole to the end),
    else (a pipe, a socket, a terminal) L{PIPE_BUF}.
    """
    try:
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
        appending = bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND)
    except OSError:
        return PIPE_BUF
    return FILE_CHUNK if regular and appending else PIPE_BUF


#: Access lines of requests whose path and query are longer than this have
#: their repeating parts built each time, not remembered.
_PARTS_KEY_BYTES = 512
#: The query is logged up to this many bytes.
QUERY_LOG_BYTES = 256
#: POSIX: a write of at most this many bytes to a pipe is never interleaved
#: with another process's writes (Linux's value; POSIX's minimum is 512).
PIPE_BUF = 4096


def redact_query(query: bytes, limit: int = QUERY_LOG_BYTES) -> str:
    """
    Return the first ``limit`` bytes of a raw query string for the access
    log, the value of every parameter whose (percent-decoded) name contains
    ``token``, ``key``, ``secret``, ``pass``, ``signature``, ``auth`` or
    ``jwt`` replaced by ``***``; parameters are separated by ``&`` or ``;``.

    Cut before it is redacted: a cut inside a name leaves no value to hide,
    a cut inside a value leaves a name that is still matched.
    """
    if not query:
        return ""
    text = query[:limit].decode("utf-8", "replace")
    if "%" in text or "+" in text or _SECRET_PARAM.search(text) is not None:
        # the separators are kept at the odd indexes
        parts = _SEPARATOR.split(text)
        for i in range(0, len(parts), 2):
            name, eq, _ = parts[i].partition("=")
            if eq and _SECRET_PARAM.search(unquote_plus(name)) is not None:
                parts[i] = f"{name}=***"
        text = "".join(parts)
    return text


_LOGGED: dict[bytes, str] = {}
_LOGGED_MAX = 4096


def _logged_query(query: bytes) -> str:
    """
    Return L{redact_query}'s text as a JSON string, remembered (a bounded
    number of them) since hot keys repeat their queries.
    """
    found = _LOGGED.get(query)
    if found is None:
        found = _json_str(redact_query(query))
        if len(_LOGGED) >= _LOGGED_MAX:
            _LOGGED.clear()
        _LOGGED[query] = found
    return found


class AccessLog(Service):
    """
    The access log: one JSON object per line, written to a file descriptor
    (stdout) in batches, every ``interval`` seconds on ``clock``, whenever
    ``max_lines`` are waiting, and when the service stops (after HTTP has
    drained: the last requests' lines are in the last batch).  Once
    stopped, each line is written at once.

    Every ``os.write`` holds whole lines and at most L{PIPE_BUF} bytes
    (a longer line is written alone): with ``--workers N`` every worker
    writes to the same stdout, and writes that size are never interleaved
    on a pipe (nor, opened for appending, on a file).

    @param fd: where lines go, a blocking descriptor (stdout by default).
    """

    def __init__(
        self, clock: IReactorTime, fd: int = 1, interval: float = 0.2, max_lines: int = 64
    ) -> None:
        self.clock = clock
        self.fd = fd
        self.interval = interval
        self.max_lines = max_lines
        #: lines that could not be written (stdout gone)
        self.dropped = 0
        #: bytes per write, once the descriptor was looked at (L{flush})
        self._chunk = 0
        #: the fields of each line not written yet
        self._lines: list[tuple[Any, ...]] = []
        self._timer = LoopingCall(self.flush)
        self._timer.clock = clock
        self._second = -1
        self._stamp = ""
        self._millisecond = -1
        self._time = ""
        self._escaped: dict[str, str] = {}
        #: (method, path) -> (the message's start, the method and path fields)
        self._heads: dict[tuple[bytes, bytes], tuple[str, str]] = {}
        #: the fields of a line but time, duration and trace id -> the line's parts
        self._parts: dict[tuple[Any, ...], tuple[str, str]] = {}

    def timestamp(self, now: float) -> str:
        """
        Return ``now`` in ISO 8601 UTC with milliseconds, as the other log
        lines write it (the date part made once a second).
        """
        millisecond = int(now * 1000)
        if millisecond == self._millisecond:
            return self._time
        self._millisecond = millisecond
        second = millisecond // 1000
        if second != self._second:
            self._second = second
            self._stamp = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        self._time = f"{self._stamp}.{millisecond % 1000:03d}+00:00"
        return self._time

    def request(
        self,
        now: float,
        method: bytes,
        path: bytes,
        query: bytes,
        status: int,
        sent: int,
        duration: float,
        tenant: str,
        route: str,
        cache: str,
        client: str | None,
        trace_id: str | None,
        upstream: tuple[int | None, float, str | None] | None = None,
        worker: int | None = None,
    ) -> None:
        """
        Queue the access line of one request (SPEC.md section 4): ``time``,
        ``level``, ``message``, ``system``, ``method``, ``path``, ``query``
        (see L{redact_query}), ``status``, ``bytes`` (of body sent),
        ``duration_ms``, ``tenant``, ``route``, ``x_cache`` (and ``cache``,
        its name before), ``client``, ``trace_id``, then when the request
        called the upstream ``upstream_status`` (C{null} when the call
        failed), ``upstream_ms`` and ``upstream_error``, and ``worker``
        with ``--workers``.

        @param method: as received.
        @param path: as received, without the query (logged up to 512
            characters once decoded).
        @param trace_id: the request's trace id; L{NEW_TRACE_ID} for a new
            one drawn when the line is written; C{None} for none.
        @param upstream: the request's own upstream call: (status, seconds,
            kind of failure), or C{None} when it made none.
        """
        # kept as they are, formatted when written (L{flush}): the lines of a
        # batch are built together, in one tight loop, rather than each
        # between two requests' work
        self._lines.append((now, method, path, query, status, sent, duration, tenant, route, cache, client, trace_id, upstream, worker))
        if len(self._lines) >= self.max_lines or not self.running:
            self.flush()

    def _line(self, fields: tuple[Any, ...]) -> str:
        """
        Return the access line of one request: ``fields`` as L{request}
        queued them (its arguments, in order).
        """
        now, method, path, query, status, sent, duration, tenant, route, cache, client, trace_id, upstream, worker = fields
        # one f-string around the parts that repeat from request to request
        # (everything but the time, the duration and the trace id), built
        # once for each combination and remembered: hits of a hot key log
        # the same parts again and again
        key = (method, path, query, status, sent, tenant, route, cache, client)
        parts = self._parts.get(key)
        if parts is None:
            parts = self._line_parts(key)
        # the time as formatted for this millisecond, if it was
        stamp = self._time if int(now * 1000) == self._millisecond else self.timestamp(now)
        # hex digits, ours or checked by parse_traceparent: nothing to escape
        if trace_id:
            trace = f'"{trace_id}"'
        else:
            # NEW_TRACE_ID: a new trace, its id drawn now
            trace = "null" if trace_id is None else f'"{new_trace_id()}"'
        if upstream is None and worker is None:
            # a hit's line: one string built
            line = f'{{"time":"{stamp}",{parts[0]}{duration * 1000:.3f}{parts[1]}{trace}}}'
        else:
            line = f'{{"time":"{stamp}",{parts[0]}{duration * 1000:.3f}{parts[1]}{trace}'
            if upstream is not None:
                status_, took, error = upstream
                line += f',"upstream_status":{"null" if status_ is None else status_},"upstream_ms":{took * 1000:.3f}'
                if error is not None:
                    line += f',"upstream_error":{_json_str(error)}'
            if worker is not None:
                line += f',"worker":{worker}'
            line += "}"
        return line

    def _line_parts(self, key: tuple[Any, ...]) -> tuple[str, str]:
        """
        Return the parts of an access line around its duration, for the
        fields in ``key``: from ``level`` to ``duration_ms``'s name, and
        from ``tenant`` to ``trace_id``'s name.  Remembered when short
        (a bounded number of them).
        """
        method, path, query, status, sent, tenant, route, cache, client = key
        esc = self._escaped
        head = self._heads.get((method, path)) or self._head(method, path)
        c = esc.get(cache) or self._escape(cache)
        parts = (
            f'"level":"info","message":"{head[0]} {status}","system":"apicache.access",{head[1]},'
            f'"query":{_logged_query(query)},"status":{status},"bytes":{sent},"duration_ms":',
            f',"tenant":{esc.get(tenant) or self._escape(tenant)},"route":{esc.get(route) or self._escape(route)},'
            f'"x_cache":{c},"cache":{c},'
            f'"client":{"null" if client is None else esc.get(client) or self._escape(client)},"trace_id":',
        )
        if len(path) + len(query) <= _PARTS_KEY_BYTES:
            if len(self._parts) >= 4096:
                self._parts.clear()
            self._parts[key] = parts
        return parts

    def _head(self, method: bytes, path: bytes) -> tuple[str, str]:
        text = path.decode("utf-8", "replace")[:512]
        m = _json_str(method.decode("ascii", "replace")[:32])
        p = _json_str(text)
        if len(p) > 1024:
            # mostly escapes (up to 6 bytes a character): shorter, so that
            # a line stays within PIPE_BUF
            p = _json_str(text[:170])
        # the message's copy of the path is for people: its first 100 characters
        head = (f"{m[1:-1]} {_json_str(text[:100])[1:-1]}", f'"method":{m},"path":{p}')
        if len(self._heads) >= 4096:
            self._heads.clear()
        self._heads[(method, path)] = head
        return head

    def _escape(self, text: str) -> str:
        escaped: str = _json_str(text)
        if len(self._escaped) >= 4096:
            self._escaped.clear()
        self._escaped[text] = escaped
        return escaped

    def flush(self) -> None:
        """
        Write every queued line now, in writes of whole lines of at most
        L{PIPE_BUF} bytes (a longer line alone), or on a regular file
        opened for appending, whose writes are never interleaved whatever
        their size, of at most L{FILE_CHUNK} bytes.
        """
        pending, self._lines = self._lines, []
        if not pending:
            return
        line = self._line
        # ASCII (json.dumps escapes the rest): characters are bytes
        data = ("\n".join([line(fields) for fields in pending]) + "\n").encode("ascii")
        if self._chunk == 0:
            self._chunk = _chunk_size(self.fd)
        limit = self._chunk
        start, size = 0, len(data)
        while start < size:
            end = start + limit
            if end < size:
                # the last whole line within the limit, or a longer line alone
                cut = data.rfind(b"\n", start, end)
                end = (cut if cut >= 0 else data.index(b"\n", end)) + 1
            self._write(data[start:end])
            start = end

    def _write(self, data: bytes) -> None:
        try:
            while data:
                try:
                    data = data[os.write(self.fd, data) :]
                except BlockingIOError:
                    # a descriptor someone made non-blocking, and a full
                    # pipe: wait for the reader rather than drop or split lines
                    os.set_blocking(self.fd, True)
        except OSError:
            # stdout is gone: nothing can be written any more
            self.dropped += data.count(b"\n")

    def startService(self) -> None:
        super().startService()
        self._timer.start(self.interval, now=False)

    def stopService(self) -> None:
        """
        Write what is queued; from now on each line is written at once.
        """
        super().stopService()
        if self._timer.running:
            self._timer.stop()
        self.flush()
