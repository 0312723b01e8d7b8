"""
OAuth client-credentials tokens used as the Kafka SASL PLAIN password, as
the original service did on Cloud Foundry: a token is fetched at start-up
and again before it expires.

The Kafka listener uses a L{TokenProvider} like this::

    creds.username                 # the SASL PLAIN username
    password = await creds.when_ready()   # the first token (a Deferred)
    creds.password()               # the current token, at any later time
    creds.subscribe(on_renewal)    # on_renewal(new_password), in the reactor
                                   # thread, after each renewal

On renewal the listener hands the new password to its client on the
client's own thread: confluent-kafka's ``set_sasl_credentials(username,
password)`` makes every new broker connection use it, but keeps existing ones;
to reconnect at once, close the consumer (after committing) and create it
again with ``sasl.password`` set to the new token.  Start the consumer only
after ``when_ready()`` fires, and stop it before this service stops (add this
service to the daemon before the listener: it then stops after it).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer
from zope.interface import implementer

from apicache.upstream.client import read_body

__all__ = ["TokenProvider", "TokenError", "NoTokenYet"]


class TokenError(Exception):
    """The token endpoint gave no usable token."""


class NoTokenYet(Exception):
    """No token has been fetched yet."""


#: A token whose answer gives no ``expires_in`` is renewed after this.
DEFAULT_EXPIRES_IN = 3600.0
#: Renewal starts this share of the lifetime before expiry, at most 60 s
#: before it.
_EARLY_SHARE = 0.2
_EARLY_MAX = 60.0


class TokenProvider(Service):
    """
    Keeps an OAuth 2 client-credentials token fresh.

    @ivar username: the SASL username (the OAuth client id).
    @ivar renewals: tokens fetched so far (for metrics and tests).
    @ivar failures: failed fetches so far.
    """

    log = Logger()

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        clock: IReactorTime,
        agent: IAgent,
        timeout: float = 10.0,
        max_retry_delay: float = 60.0,
    ) -> None:
        self.token_url = token_url
        self.username = client_id
        self._secret = client_secret
        self._clock = clock
        self._agent = agent
        self._timeout = timeout
        self._max_retry = max_retry_delay
        self._token: str | None = None
        self._expires_at = 0.0
        self._subscribers: list[Callable[[str], None]] = []
        self._ready: list[Deferred[str]] = []
        self._next: IDelayedCall | None = None
        self._retry_delay = 1.0
        self.renewals = 0
        self.failures = 0

    def __repr__(self) -> str:
        return f"TokenProvider({self.token_url!r}, client {self.username!r})"

    # -- what the Kafka listener uses --------------------------------------

    def password(self) -> str:
        """
        Return the current token.

        @raise NoTokenYet: none has been fetched yet.
        """
        if self._token is None:
            raise NoTokenYet(self.token_url)
        return self._token

    def when_ready(self) -> Deferred[str]:
        """
        Return a Deferred firing with the current token, at once if there is
        one, else after the first successful fetch.
        """
        d: Deferred[str] = Deferred()
        if self._token is not None:
            d.callback(self._token)
        else:
            self._ready.append(d)
        return d

    def subscribe(self, callback: Callable[[str], None]) -> None:
        """
        Call ``callback(token)`` after each renewal (not for the first token:
        see L{when_ready}).
        """
        self._subscribers.append(callback)

    @property
    def expires_at(self) -> float:
        """When the current token expires (``clock.seconds()`` time)."""
        return self._expires_at

    # -- the service ---------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._schedule(0)

    def stopService(self) -> None:
        super().stopService()
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None

    def _schedule(self, delay: float) -> None:
        if not self.running:
            return
        self._next = self._clock.callLater(delay, self._renew)

    def _renew(self) -> None:
        self._next = None
        d = Deferred.fromCoroutine(self.fetch())
        d.addCallbacks(self._got, self._failed)

    def _got(self, result: tuple[str, float]) -> None:
        token, expires_in = result
        first = self._token is None
        self._token = token
        now = self._clock.seconds()
        self._expires_at = now + expires_in
        self._retry_delay = 1.0
        self.renewals += 1
        self.log.info(
            "got a Kafka OAuth token from {url}, valid for {expires_in} s",
            url=self.token_url,
            expires_in=expires_in,
        )
        if first:
            ready, self._ready = self._ready, []
            for d in ready:
                d.callback(token)
        else:
            for callback in list(self._subscribers):
                try:
                    callback(token)
                except Exception:
                    self.log.failure("a token renewal subscriber failed")
        self._schedule(expires_in - min(expires_in * _EARLY_SHARE, _EARLY_MAX))

    def _failed(self, failure: Any) -> None:
        self.failures += 1
        delay = self._retry_delay
        self._retry_delay = min(self._retry_delay * 2, self._max_retry)
        # the error text is ours (status, reason): never the body or a secret
        self.log.warn(
            "could not get a Kafka OAuth token from {url}: {error}; retrying in {delay} s",
            url=self.token_url,
            error=failure.getErrorMessage(),
            delay=delay,
        )
        self._schedule(delay)

    # -- the fetch ----------------------------------------------------------

    async def fetch(self) -> tuple[str, float]:
        """
        POST a client-credentials grant to the token URL.  Returns the token
        and its lifetime in seconds.

        @raise TokenError: no usable answer.
        """
        basic = base64.b64encode(f"{self.username}:{self._secret}".encode()).decode("ascii")
        headers = Headers(
            {
                b"authorization": [b"Basic " + basic.encode("ascii")],
                b"content-type": [b"application/x-www-form-urlencoded"],
                b"accept": [b"application/json"],
            }
        )
        body = _Bytes(b"grant_type=client_credentials")
        try:
            request = self._agent.request(b"POST", self.token_url.encode("ascii"), headers, body)
            response = await request.addTimeout(self._timeout, self._clock)
            data = await read_body(response, 65536).addTimeout(self._timeout, self._clock)
        except DeferredTimeout:
            raise TokenError(f"no answer within {self._timeout:g} s") from None
        except TokenError:
            raise
        except Exception as e:
            raise TokenError(f"{type(e).__name__}: {e}") from None
        if response.code != 200:
            raise TokenError(f"HTTP {response.code}")
        try:
            answer = json.loads(data)
            token = answer["access_token"]
            if not isinstance(token, str) or not token:
                raise ValueError("empty token")
            expires_in = float(answer.get("expires_in", DEFAULT_EXPIRES_IN))
        except (ValueError, KeyError, TypeError) as e:
            raise TokenError(f"not a token answer ({type(e).__name__})") from None
        return token, max(expires_in, 1.0)


@implementer(IBodyProducer)
class _Bytes:
    """A request body held in memory."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        consumer.write(self._data)
        return succeed(None)

    def stopProducing(self) -> None:
        pass

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass
