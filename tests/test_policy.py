"""Failure classification and backoff, without sockets."""

from __future__ import annotations

import random
import ssl

import pytest
from pydantic import ValidationError

from wsclient import Decision, Failure, HandshakeRejected, LinkDead, Reconnect, TransportClosed
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


# ------------------------------------------------------------------------------------- classify hook


def centrifuge(failure: Failure) -> Decision | None:
    """Centrifuge's convention: 3500-3999 and 4500-4999 mean "do not reconnect"; 3000 "come back soon"."""
    code = failure.close_code
    if code is None or not failure.by_peer:
        return None
    if 3500 <= code < 4000 or 4500 <= code < 5000:
        return Decision.fatal(f"the venue said not to reconnect (code {code})")
    if code == 3000:
        return Decision.retry(after=0.05)
    return None


CENTRIFUGE = Reconnect(classify=centrifuge)


@pytest.mark.parametrize("code", [3500, 3999, 4500, 4501, 4999])
def test_the_hook_makes_a_venue_code_fatal(code: int) -> None:
    verdict = classify(TransportClosed(code, "banned"), CENTRIFUGE)
    assert not verdict.retry and verdict.close_code == code
    assert verdict.reason == (
        f"the venue said not to reconnect (code {code}) (connection closed with code {code} (banned))"
    )
    assert classify(TransportClosed(code, "banned"), POLICY).retry  # the default rule retries these


def test_the_hook_chooses_the_delay_and_none_falls_through() -> None:
    verdict = classify(TransportClosed(3000), CENTRIFUGE)
    assert verdict.retry and verdict.delay == 0.05
    # None: the default rules, fatal codes included.
    assert not classify(TransportClosed(1008), CENTRIFUGE).retry
    assert classify(TransportClosed(4000), CENTRIFUGE).retry
    assert classify(TransportClosed(4501, by_peer=False), CENTRIFUGE).retry  # the client's own close
    assert classify(HandshakeRejected(503), CENTRIFUGE).delay is None


def test_the_hook_may_retry_what_the_default_rule_calls_fatal() -> None:
    policy = Reconnect(classify=lambda f: Decision.retry() if f.status == 403 else None)
    verdict = classify(HandshakeRejected(403), policy)
    assert verdict.retry and verdict.delay is None and verdict.status == 403
    assert not classify(HandshakeRejected(401), policy).retry


def test_the_failure_object_carries_the_close_the_handshake_and_the_exception() -> None:
    seen: list[Failure] = []
    policy = Reconnect(classify=lambda f: seen.append(f))
    closed = TransportClosed(4001, "kicked")
    rejected = HandshakeRejected(429, {"Retry-After": "7", "X-Venue": "busy"}, b"slow down")
    refused = ConnectionRefusedError()
    for cause in (closed, rejected, refused, LinkDead("pong", 0.5)):
        classify(cause, policy)
    close, status, other, dead = seen
    assert close.exception is closed
    assert (close.close_code, close.close_reason, close.by_peer) == (4001, "kicked", True)
    assert close.status is None and dict(close.headers) == {}
    assert (status.status, status.retry_after, status.close_code) == (429, 7.0, None)
    assert status.headers["x-venue"] == "busy" and status.reason.endswith("HTTP 429")
    with pytest.raises(TypeError):
        status.headers["x-venue"] = "changed"  # type: ignore[index]
    assert isinstance(other.exception, ConnectionRefusedError) and other.reason == "connection refused"
    assert other.close_code is None and other.status is None
    assert isinstance(dead.exception, LinkDead)
    # The server's Retry-After still raises the backoff of a plain retry decision.
    policy = Reconnect(classify=lambda f: Decision.retry())
    assert classify(rejected, policy).retry_after == 7.0


def test_a_classifier_that_raises_is_logged_and_the_default_rule_applies(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(failure: Failure) -> Decision | None:
        raise KeyError(failure.close_code)

    policy = Reconnect(classify=broken)
    with caplog.at_level("ERROR", logger="wsclient"):
        assert not classify(TransportClosed(1008, "policy"), policy).retry
        assert classify(TransportClosed(4501), policy).retry
    records = [r for r in caplog.records if "reconnect.classify" in r.getMessage()]
    assert len(records) == 2
    assert "broken" in records[0].getMessage() and "the default rule applies" in records[0].getMessage()
    assert records[0].exc_info is not None and records[0].exc_info[0] is KeyError


def test_a_classifier_returning_something_else_is_logged_and_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    policy = Reconnect(classify=lambda f: "fatal")
    with caplog.at_level("ERROR", logger="wsclient"):
        verdict = classify(TransportClosed(1008), policy, redact=lambda text: text.replace("1008", "****"))
    assert not verdict.retry and verdict.delay is None
    (record,) = caplog.records
    assert record.exc_info is not None and "it returned str" in str(record.exc_info[1])
    assert "****" in record.getMessage() and "1008" not in record.getMessage()


def test_decisions_refuse_bad_values_with_the_fix() -> None:
    assert Decision.retry() == Decision("retry")
    assert Decision.retry(after=0) == Decision("retry", 0)
    with pytest.raises(ValueError, match="takes seconds, 0 or more"):
        Decision.retry(after=-1)
    with pytest.raises(ValueError, match="takes seconds"):
        Decision.retry(after=float("nan"))
    with pytest.raises(ValueError, match="needs a reason"):
        Decision.fatal("")
    with pytest.raises(ValueError, match='"retry" or "fatal"'):
        Decision("later")  # type: ignore[arg-type]


def test_the_classifier_is_checked_at_construction() -> None:
    with pytest.raises(ValidationError, match=r"reconnect.classify must be a function .* got int"):
        Reconnect(classify=3)  # type: ignore[arg-type]

    async def slow(failure: Failure) -> Decision | None:
        return None

    with pytest.raises(ValidationError, match="must be a plain \\(sync\\) function"):
        Reconnect(classify=slow)  # type: ignore[arg-type]

    class Rules:
        async def __call__(self, failure: Failure) -> None:
            return None

    with pytest.raises(ValidationError, match="must be a plain"):
        Reconnect(classify=Rules())  # type: ignore[arg-type]


def test_a_chosen_delay_is_exact_and_still_counts_towards_the_attempt_budget() -> None:
    backoff = Backoff(Reconnect(initial_delay=5.0, max_delay=10.0, max_attempts=3))
    assert backoff.next_delay(exact=0.05) == 0.05
    assert backoff.next_delay(retry_after=30.0, exact=0.05) == 0.05
    assert backoff.next_delay(exact=0.05) is None
