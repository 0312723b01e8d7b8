"""
The JSON Web Key Set that bearer tokens are verified against (SPEC.md
section 2, C{[auth] jwks}).

A L{JWKSSource} reads the key set from a file, or from an C{https://} URL
(C{http://} only on loopback) with twisted.web's C{Agent}: at start-up,
every C{jwks_refresh} seconds, and when a token names a C{kid} it does not
know (L{JWKSSource.refresh_for_unknown_kid}, at most once per 10 s).  A read
that fails never drops the keys already known; failed reads are retried with
Twisted's C{backoffPolicy} and logged once per change of state (failing,
readable again), not once per attempt.

Only public signature keys are kept: RSA, EC and the OKP signature curves
(Ed25519, Ed448).  Symmetric (C{oct}) keys, encryption keys (C{use: enc})
and keys published with their private part are skipped: a symmetric key in
a public key set could only serve an algorithm-confusion attack, and a
published private key is a leak, not a key to trust.

What the daemon reads for C{/readyz} and C{/metrics}: L{JWKSSource.is_ready}
(a key set was loaded at least once), L{JWKSSource.key_count}
(C{apicache_jwks_keys}) and L{JWKSSource.refresh_failures}
(C{apicache_jwks_refresh_failures_total}).

The JOSE library is joserfc: see L{apicache.auth.tokens} for why.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

from joserfc.errors import JoseError
from joserfc.jwk import JWKRegistry, Key
from twisted.application.internet import backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IResponse

__all__ = [
    "JWKSError",
    "VerificationKeys",
    "JWKSSource",
    "check_jwks_location",
    "parse_jwks",
    "UNKNOWN_KID_INTERVAL",
    "DEFAULT_MAX_JWKS_BYTES",
    "UNREADY_RETRY_INTERVAL",
]

#: At most one read of the key set per this many seconds is caused by tokens
#: with an unknown ``kid`` (SPEC.md section 2), so forged kids can't turn
#: apicache into a flood against the identity provider.
UNKNOWN_KID_INTERVAL = 10.0
#: A key set larger than this is refused.  Real ones hold a handful of keys
#: (a few KiB); the bound keeps a wrong URL from filling memory.
DEFAULT_MAX_JWKS_BYTES = 256 * 1024
#: Connect plus the whole answer.
DEFAULT_FETCH_TIMEOUT = 10.0
#: Until a key set has loaded once, failed reads are retried at least this
#: often: C{/readyz} names C{jwks} meanwhile and must follow a change within
#: 5 s (SPEC.md section 4), so the backoff stops growing here.
UNREADY_RETRY_INTERVAL = 4.0

#: Key types (and OKP curves) that can verify a signature.
_SIGNATURE_KEY_TYPES = frozenset({"RSA", "EC", "OKP"})
_SIGNATURE_CURVES_OKP = frozenset({"Ed25519", "Ed448"})
#: JWK members that only a private key has (RFC 7518 section 6).
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth"})
_LOOPBACK_NAMES = frozenset({"localhost"})


class JWKSError(Exception):
    """
    The key set could not be read, or held no usable key.  The message is
    ours (a status, a size, a reason): never a body or a key.
    """


def check_jwks_location(location: str) -> str:
    """
    Check an C{[auth] jwks} value: an C{https://} URL, an C{http://} URL
    whose host is loopback, or a file path.

    @return: C{location}, unchanged.
    @raise ValueError: an empty value, another scheme, an C{http://} URL to
        a host that is not loopback, or a URL without a host.
    """
    if not location:
        raise ValueError("jwks is empty")
    scheme, _, rest = location.partition("://")
    if not rest:
        return location
    scheme = scheme.lower()
    parts = urlsplit(location)
    host = parts.hostname
    if not host:
        raise ValueError(f"jwks URL has no host: {_shown(location)}")
    if scheme == "https":
        return location
    if scheme == "http":
        if _is_loopback(host):
            return location
        raise ValueError(f"jwks over http:// is only allowed on loopback (use https://): {_shown(location)}")
    raise ValueError(f"jwks must be a file path or an https:// URL, not {scheme}://")


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _shown(location: str) -> str:
    """
    Return C{location} as it may be logged: a URL without its query,
    fragment or user information (they may carry a secret).
    """
    if "://" not in location:
        return location
    parts = urlsplit(location)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port is not None else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class VerificationKeys(Mapping[str | None, Key]):
    """
    An immutable set of public keys by C{kid} (C{None} for a key published
    without one).

    @ivar generation: grows by one whenever the keys change, so that what
        was verified with an older set (the token cache) can tell.
    """

    __slots__ = ("_by_kid", "generation")

    def __init__(self, keys: Mapping[str | None, Key], generation: int = 0) -> None:
        self._by_kid = dict(keys)
        self.generation = generation

    def __getitem__(self, kid: str | None) -> Key:
        return self._by_kid[kid]

    def __iter__(self) -> Iterator[str | None]:
        return iter(self._by_kid)

    def __len__(self) -> int:
        return len(self._by_kid)

    def find(self, kid: str | None) -> Key | None:
        """
        Return the key a token with this C{kid} header names, or C{None}.
        A token without a C{kid} gets the only key of a one-key set (some
        providers publish one key and leave C{kid} out); with several keys
        it must say which.
        """
        key = self._by_kid.get(kid)
        if key is None and kid is None and len(self._by_kid) == 1:
            return next(iter(self._by_kid.values()))
        return key

    def fingerprint(self) -> str:
        """
        Return a text that differs whenever the public keys or kids differ.
        """
        return json.dumps(
            sorted(((kid or ""), key.as_dict(private=False)) for kid, key in self._by_kid.items()),
            sort_keys=True,
        )

    def __repr__(self) -> str:
        return f"<VerificationKeys generation={self.generation} kids={sorted(k or '' for k in self._by_kid)}>"


def parse_jwks(data: bytes) -> tuple[dict[str | None, Key], int]:
    """
    Parse a JSON Web Key Set (RFC 7517 section 5).

    @return: the usable signature keys by C{kid}, and how many members were
        skipped (not a public signature key, unreadable, or a repeated
        C{kid}).
    @raise JWKSError: not JSON, no C{keys} array, or no usable key in it.
    """
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        raise JWKSError("not JSON") from None
    members = document.get("keys") if isinstance(document, dict) else None
    if not isinstance(members, list):
        raise JWKSError('not a JSON Web Key Set (no "keys" array)')
    keys: dict[str | None, Key] = {}
    skipped = 0
    for member in members:
        key = _signature_key(member)
        if key is None or key.kid in keys:
            skipped += 1
            continue
        keys[key.kid] = key
    if not keys:
        raise JWKSError(f"no usable signature key among {len(members)}")
    return keys, skipped


def _signature_key(member: Any) -> Key | None:
    if not isinstance(member, dict):
        return None
    if member.get("kty") not in _SIGNATURE_KEY_TYPES:
        return None
    if member.get("kty") == "OKP" and member.get("crv") not in _SIGNATURE_CURVES_OKP:
        return None
    if member.get("use", "sig") != "sig" or _PRIVATE_MEMBERS & member.keys():
        return None
    kid = member.get("kid")
    if kid is not None and not isinstance(kid, str):
        return None
    try:
        return JWKRegistry.import_key(member)
    except (JoseError, ValueError, TypeError, KeyError):
        return None


class _LimitedBody(Protocol):
    """
    Collects a response body up to a limit; past it, stops the transfer and
    fails.
    """

    def __init__(self, limit: int, finished: Deferred[bytes]) -> None:
        self._limit = limit
        self._finished = finished
        self._parts: list[bytes] = []
        self._size = 0

    def dataReceived(self, data: bytes) -> None:
        if self._finished.called:
            return
        self._size += len(data)
        if self._size > self._limit:
            self._finished.errback(JWKSError(f"key set over {self._limit} bytes"))
            self.transport.stopProducing()  # type: ignore[union-attr]
            return
        self._parts.append(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:
        if self._finished.called:
            return
        # without a length or chunking the end is the connection's close;
        # the JSON parse catches a truncated set
        if reason.check(ResponseDone, PotentialDataLoss):
            self._finished.callback(b"".join(self._parts))
        else:
            self._finished.errback(JWKSError(f"answer cut short ({type(reason.value).__name__})"))


def _read_body(response: IResponse, limit: int) -> Deferred[bytes]:
    reader: _LimitedBody

    def cancel(d: Deferred[bytes]) -> None:
        if reader.transport is not None:
            reader.transport.stopProducing()  # type: ignore[attr-defined]

    finished: Deferred[bytes] = Deferred(cancel)
    reader = _LimitedBody(limit, finished)
    response.deliverBody(reader)
    return finished


class JWKSSource(Service):
    """
    Keeps the key set current.  See the module docstring.

    @ivar keys: the current L{VerificationKeys} (empty until the first read).
    @ivar refresh_failures: failed reads so far.
    @ivar last_error: why the last read failed (our words), or C{None}
        once a read succeeded.
    @ivar reads: reads started so far (successful or not).
    """

    log = Logger()

    def __init__(
        self,
        location: str,
        clock: IReactorTime,
        agent: IAgent | None = None,
        refresh_interval: float = 300.0,
        timeout: float = DEFAULT_FETCH_TIMEOUT,
        max_bytes: int = DEFAULT_MAX_JWKS_BYTES,
        unknown_kid_interval: float = UNKNOWN_KID_INTERVAL,
        retry_policy: Callable[[int], float] | None = None,
    ) -> None:
        """
        @param location: a file path or URL (see L{check_jwks_location}).
        @param clock: the reactor's time (timers, rate limit, timeouts).
        @param agent: the HTTP client for a URL (twisted.web C{Agent}, which
            verifies the certificate of an C{https://} URL); unused for a file.
        @param refresh_interval: seconds between reads while all is well.
        @param timeout: seconds for one read from a URL, connect included.
        @param max_bytes: the largest key set read.
        @param unknown_kid_interval: the least time between two reads caused
            by unknown kids.
        @param retry_policy: seconds to wait before retry number C{n}
            (from 0) after failed reads; default Twisted's C{backoffPolicy}
            from 1 s up to 60 s (or C{refresh_interval} if less).
        @raise ValueError: a bad C{location}, or a URL without an C{agent}.
        """
        self.location = check_jwks_location(location)
        self._is_url = "://" in location
        if self._is_url and agent is None:
            raise ValueError("a jwks URL needs an HTTP agent")
        self._clock = clock
        self._agent = agent
        self._refresh_interval = refresh_interval
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._unknown_kid_interval = unknown_kid_interval
        self._retry_policy = retry_policy or backoffPolicy(initialDelay=1.0, maxDelay=min(60.0, refresh_interval))
        self.keys = VerificationKeys({})
        self._fingerprint = self.keys.fingerprint()
        self._loaded = False
        self._failing = False
        self._attempt = 0
        self._last_unknown_kid_read: float | None = None
        self._timer: IDelayedCall | None = None
        self._in_flight: Deferred[bytes] | None = None
        self._stopped = False
        self._waiters: list[Deferred[bool]] = []
        self.refresh_failures = 0
        self.last_error: str | None = None
        self.reads = 0

    def __repr__(self) -> str:
        return f"JWKSSource({_shown(self.location)!r}, {len(self.keys)} keys)"

    # -- what readiness and metrics read ------------------------------------

    def is_ready(self) -> bool:
        """
        Return whether a key set was ever loaded (C{/readyz} names C{jwks}
        while not).
        """
        return self._loaded

    @property
    def key_count(self) -> int:
        """
        The number of keys held now (C{apicache_jwks_keys}).
        """
        return len(self.keys)

    # -- the service --------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._stopped = False
        self.refresh()

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        self._stopped = True
        self._cancel_timer()
        if self._in_flight is not None:
            self._in_flight.cancel()
        return None

    # -- reads --------------------------------------------------------------

    def refresh(self) -> Deferred[bool]:
        """
        Read the key set now, or join the read in progress.

        @return: a Deferred firing with C{True} when that read loaded a key
            set, C{False} when it failed (it never fails itself).
        """
        waiter: Deferred[bool] = Deferred()
        self._waiters.append(waiter)
        if self._in_flight is None:
            self._cancel_timer()
            self.reads += 1
            self._in_flight = Deferred.fromCoroutine(self._read())
            self._in_flight.addBoth(self._read_done)
        return waiter

    def refresh_for_unknown_kid(self) -> Deferred[bool] | None:
        """
        Ask for a read because a token named a C{kid} that is not known.

        @return: the Deferred of L{refresh} (the read in progress, or a new
            one), or C{None} when an unknown kid caused a read less than
            C{unknown_kid_interval} seconds ago and none is in progress.
        """
        if self._in_flight is not None:
            return self.refresh()
        now = self._clock.seconds()
        last = self._last_unknown_kid_read
        if last is not None and now - last < self._unknown_kid_interval:
            return None
        self._last_unknown_kid_read = now
        return self.refresh()

    async def _read(self) -> bytes:
        if not self._is_url:
            return self._read_file()
        # one deadline for connect, headers and body together
        download = Deferred.fromCoroutine(self._download())
        expired: list[bool] = []

        def deadline() -> None:
            expired.append(True)
            download.cancel()

        timer = self._clock.callLater(self._timeout, deadline)
        try:
            return await download
        except Exception as e:
            if expired:
                raise JWKSError(f"no answer within {self._timeout:g} s") from None
            if isinstance(e, (JWKSError, CancelledError)):
                raise
            raise JWKSError(_describe(e)) from None
        finally:
            if timer.active():
                timer.cancel()

    async def _download(self) -> bytes:
        assert self._agent is not None
        headers = Headers({b"accept": [b"application/jwk-set+json, application/json"]})
        response = await self._agent.request(b"GET", self.location.encode("ascii"), headers)
        if response.code != 200:
            response.deliverBody(_Discard())
            raise JWKSError(f"HTTP {response.code}")
        return await _read_body(response, self._max_bytes)

    def _read_file(self) -> bytes:
        try:
            with open(self.location, "rb") as f:
                data = f.read(self._max_bytes + 1)
        except OSError as e:
            raise JWKSError(e.strerror or type(e).__name__) from None
        if len(data) > self._max_bytes:
            raise JWKSError(f"key set over {self._max_bytes} bytes")
        return data

    def _read_done(self, result: bytes | Failure) -> None:
        self._in_flight = None
        loaded = False
        if isinstance(result, Failure):
            if self._stopped:
                # cancelled by stopService (Agent reports it as a lost request)
                self._fire_waiters(False)
                return
            error = result.getErrorMessage() if result.check(JWKSError) else type(result.value).__name__
            self._failed(error)
        else:
            try:
                keys, skipped = parse_jwks(result)
            except JWKSError as e:
                self._failed(str(e))
            else:
                self._loaded_keys(keys, skipped)
                loaded = True
        self._fire_waiters(loaded)

    def _fire_waiters(self, loaded: bool) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(loaded)

    def _loaded_keys(self, keys: dict[str | None, Key], skipped: int) -> None:
        candidate = VerificationKeys(keys, self.keys.generation + 1)
        fingerprint = candidate.fingerprint()
        recovered = self._failing
        self.last_error = None
        self._loaded = True
        self._failing = False
        self._attempt = 0
        if fingerprint != self._fingerprint:
            before = set(self.keys)
            self.keys = candidate
            self._fingerprint = fingerprint
            self.log.info(
                "JSON Web Key Set from {location}: {count} keys ({added} new, {removed} gone, {skipped} skipped)",
                location=_shown(self.location),
                count=len(candidate),
                added=len(set(candidate) - before),
                removed=len(before - set(candidate)),
                skipped=skipped,
            )
        elif recovered:
            self.log.info(
                "JSON Web Key Set from {location} readable again: {count} keys",
                location=_shown(self.location),
                count=len(self.keys),
            )
        self._schedule(self._refresh_interval)

    def _failed(self, error: str) -> None:
        self.refresh_failures += 1
        self.last_error = error
        delay = min(self._retry_policy(self._attempt), self._refresh_interval)
        if not self._loaded:
            delay = min(delay, UNREADY_RETRY_INTERVAL)
        self._attempt += 1
        if not self._failing:
            self._failing = True
            self.log.warn(
                "could not read the JSON Web Key Set from {location}: {error}; "
                "keeping the {count} keys known, retrying with backoff (logged again once readable)",
                location=_shown(self.location),
                error=error,
                count=len(self.keys),
            )
        self._schedule(delay)

    def _schedule(self, delay: float) -> None:
        self._cancel_timer()
        if self.running:
            self._timer = self._clock.callLater(delay, self._timed_read)

    def _timed_read(self) -> None:
        self._timer = None
        self.refresh()

    def _cancel_timer(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


def _describe(error: Exception) -> str:
    """
    Return what went wrong with a request, in Twisted's words (connection
    refused, TLS verification, DNS), never the answer's bytes.
    """
    reasons = getattr(error, "reasons", None)  # ResponseFailed and its kin wrap the cause
    if reasons:
        error = reasons[0].value
    return f"{type(error).__name__}: {error}".rstrip(": ")


class _Discard(Protocol):
    """Reads and drops the body of an answer that is not used."""

    def dataReceived(self, data: bytes) -> None:
        # an error page could be large: stop at once rather than read it
        self.transport.stopProducing()  # type: ignore[union-attr]
