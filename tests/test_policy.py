"""Failure classification and backoff, without sockets."""

from __future__ import annotations

import random
import ssl

import pytest
from pydantic import ValidationError

from wsclient import HandshakeRejected, LinkDead, Reconnect, TransportClosed
from wsclient.errors import HandshakeFailed, parse_retry_after
from wsclient.policy import Backoff, classify

POLICY = Reconnect()


@pytest.mark.parametrize("code", [1002, 1003, 1007, 1008, 1010])
def test_fatal_close_codes(code: int) -> None:
    verdict = classify(TransportClosed(code), POLICY)
    assert not verdict.retry
    assert verdict.close_code == code


@pytest.mark.parametrize("code", [1000, 1001, 1005, 1006, 1009, 1011, 1012, 1013, 1014, 4000, 4999])
def test_retried_close_codes(code: int) -> None:
    assert classify(TransportClosed(code), POLICY).retry


def test_fatal_close_codes_are_configurable() -> None:
    policy = Reconnect(fatal_close_codes=frozenset({4001}))
    assert not classify(TransportClosed(4001), policy).retry
    assert classify(TransportClosed(1008), policy).retry


@pytest.mark.parametrize(
    ("status", "retry"),
    [(401, False), (403, False), (404, False), (429, True), (500, True), (502, True), (503, True)],
)
def test_handshake_statuses(status: int, retry: bool) -> None:
    verdict = classify(HandshakeRejected(status), POLICY)
    assert verdict.retry is retry
    assert verdict.status == status


def test_retry_after_is_carried() -> None:
    verdict = classify(HandshakeRejected(429, {"Retry-After": "7"}), POLICY)
    assert verdict.retry and verdict.retry_after == 7.0


def test_retry_after_http_date() -> None:
    value = parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT")
    assert value == 0.0  # in the past
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


def test_tls_verification_failure_is_fatal() -> None:
    exc = ssl.SSLCertVerificationError(1, "certificate verify failed")
    verdict = classify(exc, POLICY)
    assert not verdict.retry
    assert "TLS certificate verification failed" in verdict.reason


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(),
        ConnectionResetError(),
        TimeoutError("timed out during opening handshake"),
        LinkDead("pong", 0.2),
        HandshakeFailed("bad accept"),
        RuntimeError("a hook failed"),
    ],
)
def test_transient_errors_retry(exc: BaseException) -> None:
    assert classify(exc, POLICY).retry


def test_backoff_grows_and_caps() -> None:
    backoff = Backoff(Reconnect(initial_delay=0.1, max_delay=1.0, jitter=0))
    delays = [backoff.next_delay() for _ in range(8)]
    assert delays == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0, 1.0]


def test_backoff_jitter_is_bounded() -> None:
    backoff = Backoff(Reconnect(initial_delay=0.1, max_delay=10.0, jitter=0.25))
    for n in range(1, 6):
        delay = backoff.next_delay()
        assert delay is not None
        base = 0.1 * 2 ** (n - 1)
        assert 0.75 * base <= delay <= base


@pytest.mark.parametrize("jitter", [0.5, 1.0])
def test_jitter_survives_the_cap(jitter: float) -> None:
    """Once the exponential reaches max_delay, delays still spread over [cap·(1-jitter), cap]: a fleet
    that lost its server for long does not retry in lock-step."""
    random.seed(13)
    delays: list[float] = []
    for _ in range(200):
        backoff = Backoff(Reconnect(initial_delay=0.5, max_delay=4.0, jitter=jitter))
        for _ in range(9):  # 0.5 · 2^8 is far above the cap
            delay = backoff.next_delay()
        assert delay is not None
        delays.append(delay)
    assert all(4.0 * (1 - jitter) <= d <= 4.0 for d in delays)
    # Spread across the allowed band, not piled up at the cap.
    assert max(delays) - min(delays) > 0.8 * 4.0 * jitter
    assert len({round(d, 3) for d in delays}) > 150


def test_jitter_above_one_is_refused_with_the_fix() -> None:
    with pytest.raises(ValidationError) as info:
        Reconnect(jitter=2.0)
    assert "jitter" in str(info.value) and "between 0 and 1" in str(info.value)


def test_backoff_stops_after_max_attempts() -> None:
    backoff = Backoff(Reconnect(initial_delay=0.1, max_attempts=3, jitter=0))
    assert backoff.next_delay() == 0.1
    assert backoff.next_delay() == 0.2
    assert backoff.next_delay() is None
    assert backoff.failures == 3


def test_backoff_reset_starts_over() -> None:
    backoff = Backoff(Reconnect(initial_delay=0.1, max_attempts=3, jitter=0))
    backoff.next_delay()
    backoff.next_delay()
    backoff.reset()
    assert backoff.failures == 0
    assert backoff.next_delay() == 0.1


def test_backoff_stops_after_max_elapsed(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr("tenacity.time.monotonic", lambda: clock[0])
    monkeypatch.setattr("wsclient.policy.time.monotonic", lambda: clock[0])
    backoff = Backoff(Reconnect(initial_delay=0.1, max_elapsed=5.0, jitter=0))
    assert backoff.next_delay() is not None
    clock[0] += 4.9
    assert backoff.next_delay() is not None
    clock[0] += 0.2
    assert backoff.next_delay() is None


def test_retry_after_raises_the_delay_even_above_the_cap() -> None:
    backoff = Backoff(Reconnect(initial_delay=0.1, max_delay=1.0, jitter=0))
    assert backoff.next_delay(retry_after=3.0) == 3.0
    assert backoff.next_delay(retry_after=0.01) == 0.2


def test_retry_after_is_capped() -> None:
    # Default cap: 10 × max_delay, at least a minute. A server asking for a day gets 5 min, not a day.
    backoff = Backoff(Reconnect(initial_delay=0.1, max_delay=30.0, jitter=0))
    assert backoff.next_delay(retry_after=86400.0) == 300.0
    backoff = Backoff(Reconnect(initial_delay=0.1, max_delay=1.0, jitter=0))
    assert backoff.next_delay(retry_after=86400.0) == 60.0
    assert backoff.next_delay(retry_after=30.0) == 30.0
    backoff = Backoff(Reconnect(initial_delay=0.1, max_delay=1.0, jitter=0, max_retry_after=2.5))
    assert backoff.next_delay(retry_after=86400.0) == 2.5
    assert backoff.next_delay(retry_after=2.0) == 2.0


def test_fatal_codes_apply_to_server_closes_only() -> None:
    # The client itself closed with 1007 because the server sent invalid UTF-8: worth a retry.
    assert classify(TransportClosed(1007, "invalid start byte", by_peer=False), POLICY).retry
    assert not classify(TransportClosed(1007, "bad data", by_peer=True), POLICY).retry
