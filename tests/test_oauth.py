"""
The Kafka OAuth token provider against a real loopback token endpoint.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.web.client import Agent

from apicache.oauth import NoTokenYet, TokenProvider
from apicache.token_endpoint import TokenEndpoint


@pytest.fixture
def endpoint() -> Iterator[TokenEndpoint]:
    e = TokenEndpoint().start()
    yield e
    e.stop()


def provider(endpoint: TokenEndpoint, **kwargs: float) -> TokenProvider:
    return TokenProvider(endpoint.url, "client-id", "s3cret", reactor, Agent(reactor), **kwargs)


async def until(condition, timeout: float = 5.0) -> None:
    waited = 0.0
    while not condition():
        if waited > timeout:
            raise AssertionError("condition not met in time")
        await deferLater(reactor, 0.05, lambda: None)
        waited += 0.05


@pytest_twisted.ensureDeferred
async def test_first_token_is_fetched_with_client_credentials(endpoint):
    p = provider(endpoint)
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


@pytest_twisted.ensureDeferred
async def test_token_is_renewed_before_it_expires(endpoint):
    """A 2 s token is renewed after 1.6 s; subscribers get the new one."""
    endpoint.expires_in = 2
    p = provider(endpoint)
    renewed: list[str] = []
    renewed_at: list[float] = []
    p.subscribe(lambda token: (renewed.append(token), renewed_at.append(reactor.seconds())))
    p.startService()
    try:
        first = await p.when_ready()
        expires_at = p.expires_at
        await until(lambda: len(renewed) >= 1)
    finally:
        p.stopService()
    assert expires_at - 1.0 < renewed_at[0] < expires_at  # renewed shortly before expiry
    assert renewed[0] == endpoint.tokens[1] != first
    assert p.password() == renewed[0]


@pytest_twisted.ensureDeferred
async def test_failed_fetch_is_retried(endpoint):
    endpoint.failures = [500]
    p = provider(endpoint)
    p.startService()
    try:
        token = await p.when_ready()
    finally:
        p.stopService()
    assert p.failures == 1
    assert token == endpoint.tokens[0]
    assert len(endpoint.requests) == 2


@pytest_twisted.ensureDeferred
async def test_stopped_provider_fetches_no_more(endpoint):
    endpoint.expires_in = 1
    p = provider(endpoint)
    p.startService()
    await p.when_ready()
    p.stopService()
    await deferLater(reactor, 1.2, lambda: None)
    assert len(endpoint.requests) == 1
