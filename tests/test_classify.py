"""``Reconnect(classify=...)`` against a real server: a venue's own close codes, on both backends."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest

from wsclient import (
    Client,
    ClientConfig,
    ConnectFailed,
    ConnectionState,
    Decision,
    Disconnected,
    Failure,
    GaveUp,
    GaveUpError,
    Heartbeat,
    Reconnect,
    Reconnecting,
)
from wsclient.testing import FeedServer

from .conftest import Recorder

pytestmark = pytest.mark.usefixtures("backend")

TRADES = {"op": "subscribe", "channel": "trades", "symbol": "BTC-USD"}


def centrifuge(failure: Failure) -> Decision | None:
    """Centrifuge's convention: 3500-3999 and 4500-4999 mean "do not reconnect"."""
    code = failure.close_code
    if code is None or not failure.by_peer:
        return None
    if 3500 <= code < 4000 or 4500 <= code < 5000:
        return Decision.fatal(f"the venue said not to reconnect (code {code})")
    if code == 3000:
        return Decision.retry(after=0.05)
    return None


def config(classify: object) -> ClientConfig:
    # A long default backoff: a reconnect within the test's bounds is the classifier's delay.
    return ClientConfig(
        heartbeat=Heartbeat(mode="off"),
        reconnect=Reconnect(initial_delay=5.0, max_delay=10.0, classify=classify),  # type: ignore[arg-type]
    )


@pytest.fixture
async def feed() -> AsyncIterator[FeedServer]:
    async with FeedServer(rate=50) as server:
        yield server


async def ended(client: Client, timeout: float = 5.0) -> GaveUpError | None:
    try:
        async with asyncio.timeout(timeout):
            await client.wait_closed()
    except GaveUpError as exc:
        return exc
    return None


async def test_a_venue_close_code_is_fatal_through_the_classifier(feed: FeedServer) -> None:
    client = Client(feed.url, config=config(centrifuge))
    client.subscribe(TRADES)
    events = Recorder(client)
    async with client:
        await client.wait_open(timeout=5)
        await feed.wait_for_subscriptions("anonymous", 1)
        await feed.close_all(4501, "banned")
        failure = await ended(client)
        assert client.state is ConnectionState.FAILED
    assert isinstance(failure, GaveUpError) and failure.fatal and failure.attempts == 1
    reason = "the venue said not to reconnect (code 4501) (connection closed with code 4501 (banned))"
    assert events.of(GaveUp) == [GaveUp(1, reason, True)]
    (lost,) = events.of(Disconnected)
    assert isinstance(lost, Disconnected) and (lost.code, lost.will_retry) == (4501, False)
    assert str(failure) == f"fatal error: {reason}"
    assert feed.total_connections == 1 and not events.of(Reconnecting)


async def test_a_venue_close_code_is_retried_after_the_classifiers_delay(feed: FeedServer) -> None:
    client = Client(feed.url, config=config(centrifuge))
    client.subscribe(TRADES)
    events = Recorder(client)
    async with client:
        await client.wait_open(timeout=5)
        await feed.wait_for_subscriptions("anonymous", 1)
        await feed.close_all(3000, "come back soon")
        # The backoff alone would wait 2.5-5 s; the classifier asked for 0.05 s.
        await feed.wait_for_connections(2, timeout=2)
        await feed.wait_for_subscriptions("anonymous", 1)
        await client.wait_open(timeout=5)
    (lost,) = events.of(Disconnected)
    assert isinstance(lost, Disconnected)
    assert (lost.code, lost.will_retry, lost.delay) == (3000, True, 0.05)
    assert events.of(Reconnecting) == [Reconnecting(2, 0.05)]
    assert client.state is ConnectionState.CLOSED


async def test_other_codes_fall_through_to_the_default_rules(feed: FeedServer) -> None:
    client = Client(feed.url, config=config(centrifuge))
    events = Recorder(client)
    async with client:
        await client.wait_open(timeout=5)
        await feed.close_all(4000, "retry me")  # not the venue's: the default rule retries it
        await events.wait_for(Reconnecting)
        (lost,) = events.of(Disconnected)
        assert isinstance(lost, Disconnected) and lost.will_retry and lost.delay is not None
        assert 2.5 <= lost.delay <= 5.0  # the backoff's own delay
    assert feed.total_connections == 1


async def test_a_classifier_that_raises_falls_back_to_the_default_rule(
    feed: FeedServer, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int | None] = []

    def broken(failure: Failure) -> Decision | None:
        calls.append(failure.close_code)
        raise RuntimeError("bug in the classifier")

    client = Client(feed.url, config=config(broken))
    events = Recorder(client)
    with caplog.at_level(logging.ERROR, logger="wsclient"):
        async with client:
            await client.wait_open(timeout=5)
            await feed.close_all(4501, "banned")  # fatal for centrifuge, retried by the default rule
            await events.wait_for(Reconnecting)
            lost = events.of(Disconnected)[0]
            assert isinstance(lost, Disconnected) and (lost.code, lost.will_retry) == (4501, True)
            assert client.state is ConnectionState.RECONNECTING
    assert calls == [4501]
    (record,) = [r for r in caplog.records if "reconnect.classify" in r.getMessage()]
    assert "the default rule applies" in record.getMessage()
    assert record.exc_info is not None and str(record.exc_info[1]) == "bug in the classifier"


async def test_a_raising_classifier_keeps_the_default_fatal_codes(feed: FeedServer) -> None:
    def broken(failure: Failure) -> Decision | None:
        raise RuntimeError("bug in the classifier")

    client = Client(feed.url, config=config(broken))
    async with client:
        await client.wait_open(timeout=5)
        await feed.close_all(1008, "policy violation")
        failure = await ended(client)
    assert isinstance(failure, GaveUpError) and failure.fatal
    assert str(failure) == "fatal error: connection closed with code 1008 (policy violation)"


async def test_the_classifier_sees_a_rejected_handshake_with_its_headers(feed: FeedServer) -> None:
    seen: list[Failure] = []

    def no_maintenance_retries(failure: Failure) -> Decision | None:
        seen.append(failure)
        if failure.status == 503 and failure.headers.get("retry-after") == "3600":
            return Decision.fatal("venue in maintenance for an hour")
        return None

    feed.reject(503, retry_after=3600)
    client = Client(feed.url, config=config(no_maintenance_retries))
    events = Recorder(client)
    async with client:
        failure = await ended(client)
    assert isinstance(failure, GaveUpError) and failure.fatal
    (attempt,) = events.of(ConnectFailed)
    assert isinstance(attempt, ConnectFailed)
    assert (attempt.status, attempt.will_retry, attempt.retry_after) == (503, False, 3600.0)
    assert attempt.reason.startswith("venue in maintenance for an hour (")
    assert [(f.status, f.retry_after, f.close_code) for f in seen] == [(503, 3600.0, None)]
