"""
The Kafka OAuth token provider: the HTTP exchange against a real loopback
token endpoint, then renewal, backoff and stopping on a task.Clock with the
same token logic behind an in-memory agent.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest
import pytest_twisted
from treq.testing import RequestTraversalAgent
from twisted.internet import reactor
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import Agent
from twisted.web.server import NOT_DONE_YET, Request

from apicache.events.oauth import NoTokenYet, TokenProvider
from apicache.harness.token_endpoint import TokenEndpoint
from apicache.testing import TokenIssuer, TokenResource


@pytest.fixture
def endpoint() -> Iterator[TokenEndpoint]:
    e = TokenEndpoint().start()
    yield e
    e.stop()


@pytest_twisted.ensureDeferred
async def test_first_token_is_fetched_with_client_credentials(endpoint):
    p = TokenProvider(endpoint.url, "client-id", "s3cret", reactor, Agent(reactor))
    with pytest.raises(NoTokenYet):
        p.password()
    p.startService()
    try:
        token = await p.when_ready()
    finally:
        p.stopService()
    assert token == endpoint.tokens[0] == p.password()
    auth, body = endpoint.requests[0]
    assert auth == "Basic " + base64.b64encode(b"client-id:s3cret").decode()
    assert body == "grant_type=client_credentials"
    assert p.username == "client-id"
    assert "s3cret" not in repr(p)


class ClockedIssuer(TokenIssuer):
    """
    A token issuer that notes the clock's time of each request.
    """

    def __init__(self, clock: Clock) -> None:
        super().__init__()
        self.clock = clock
        self.times: list[float] = []

    def issue(self, authorization: str, body: str) -> tuple[int, bytes]:
        self.times.append(self.clock.seconds())
        return super().issue(authorization, body)


class SilentResource(TokenResource):
    """
    A token endpoint that leaves its first ``silent`` requests unanswered.
    """

    silent = 0

    def render_POST(self, request: Request) -> bytes | int:
        if self.silent:
            self.silent -= 1
            return NOT_DONE_YET
        return super().render_POST(request)


class RenewalTests(SynchronousTestCase):
    """
    Time is the clock's: renewal, backoff and timeouts happen when the test
    advances it.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.issuer = ClockedIssuer(self.clock)
        self.resource = SilentResource(self.issuer)
        self.agent = RequestTraversalAgent(self.resource)

    def provider(self, **kwargs: float) -> TokenProvider:
        p = TokenProvider("http://token.example/oauth/token", "client-id", "s3cret", self.clock, self.agent, **kwargs)
        p.startService()
        self.addCleanup(p.stopService)
        return p

    def advance(self, seconds: float) -> None:
        """Move the clock on, then let the in-memory HTTP exchange run."""
        self.clock.advance(seconds)
        self.agent.flush()

    def test_first_token_is_fetched_at_start(self) -> None:
        p = self.provider()
        ready = p.when_ready()
        self.assertNoResult(ready)
        self.advance(0)
        self.assertEqual(self.successResultOf(ready), self.issuer.tokens[0])
        self.assertEqual(p.expires_at, 3600.0)
        auth, body = self.issuer.requests[0]
        self.assertEqual(auth, "Basic " + base64.b64encode(b"client-id:s3cret").decode())
        self.assertEqual(body, "grant_type=client_credentials")

    def test_token_is_renewed_before_it_expires(self) -> None:
        """A 2 s token is renewed after 1.6 s; subscribers get the new one."""
        self.issuer.expires_in = 2
        p = self.provider()
        renewed: list[str] = []
        renewed_at: list[float] = []
        p.subscribe(lambda token: (renewed.append(token), renewed_at.append(self.clock.seconds())))
        self.advance(0)
        first = self.successResultOf(p.when_ready())
        expires_at = p.expires_at
        self.assertEqual(renewed, [], "the first token is not a renewal")
        self.advance(1.59)
        self.assertEqual(len(self.issuer.requests), 1)
        self.advance(0.01)
        self.assertEqual(renewed_at, [1.6])
        assert expires_at - 1.0 < renewed_at[0] < expires_at  # renewed shortly before expiry
        assert renewed[0] == self.issuer.tokens[1] != first
        assert p.password() == renewed[0]
        self.assertEqual(p.renewals, 2)

    def test_long_lived_token_is_renewed_a_minute_before_it_expires(self) -> None:
        self.provider()
        self.advance(0)
        self.advance(3539.9)
        self.assertEqual(len(self.issuer.requests), 1)
        self.advance(0.1)
        self.assertEqual(self.issuer.times, [0.0, 3540.0])

    def test_failed_fetch_is_retried(self) -> None:
        self.issuer.failures = [500]
        p = self.provider()
        ready = p.when_ready()
        self.advance(0)
        self.assertNoResult(ready)
        self.assertRaises(NoTokenYet, p.password)
        self.advance(0.99)
        self.assertEqual(len(self.issuer.requests), 1)
        self.advance(0.01)
        token = self.successResultOf(ready)
        assert p.failures == 1
        assert token == self.issuer.tokens[0]
        assert len(self.issuer.requests) == 2

    def test_retries_back_off_up_to_the_maximum_and_reset_after_a_token(self) -> None:
        """Waits of 1, 2, 4, 4 s after failures; after a token, 1 s again."""
        self.issuer.expires_in = 100
        self.issuer.failures = [500, 503, 500, 500]
        p = self.provider(max_retry_delay=4)
        self.advance(0)
        for _ in range(16):
            self.advance(1)
        self.assertEqual(self.issuer.times, [0.0, 1.0, 3.0, 7.0, 11.0])
        self.assertEqual((p.failures, p.renewals), (4, 1))
        self.issuer.failures = [500]
        self.advance(11 + 80 - 16)  # the renewal, 20 s before expiry
        self.advance(1)
        self.assertEqual(self.issuer.times[5:], [91.0, 92.0])
        self.assertEqual((p.failures, p.renewals), (5, 2))

    def test_no_answer_within_the_timeout_is_a_failure(self) -> None:
        self.resource.silent = 1
        p = self.provider(timeout=5)
        ready = p.when_ready()
        self.advance(0)
        self.advance(4.9)
        self.assertEqual(p.failures, 0)
        self.advance(0.1)
        self.assertEqual(p.failures, 1)
        self.assertNoResult(ready)
        self.advance(1)
        self.assertEqual(self.successResultOf(ready), self.issuer.tokens[0])
        # the silent endpoint issued nothing at 0 s; the retry came 1 s after the timeout
        self.assertEqual(self.issuer.times, [6.0])

    def test_a_failing_subscriber_does_not_stop_renewals(self) -> None:
        self.issuer.expires_in = 10
        p = self.provider()
        got: list[str] = []
        p.subscribe(lambda token: 1 / 0)
        p.subscribe(got.append)
        self.advance(0)
        self.advance(8)
        self.advance(8)
        self.assertEqual(got, self.issuer.tokens[1:3])
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 2)

    def test_stopped_provider_fetches_no_more(self) -> None:
        self.issuer.expires_in = 1
        p = self.provider()
        self.advance(0)
        p.stopService()
        self.advance(10)
        assert len(self.issuer.requests) == 1

    def test_provider_stopped_while_waiting_to_retry_fetches_no_more(self) -> None:
        self.issuer.failures = [500]
        p = self.provider()
        self.advance(0)
        p.stopService()
        self.advance(10)
        self.assertEqual(len(self.issuer.requests), 1)
        self.assertEqual(self.clock.getDelayedCalls(), [])
