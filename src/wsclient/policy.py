"""What a failure means, and how long to wait before the next attempt.

``classify`` maps a failure to a :class:`Verdict` (retry or give up, and any server-imposed delay);
:class:`Backoff` turns consecutive failures into delays with tenacity's wait and stop strategies.
Both are plain objects with no I/O, so the supervisor stays a thin loop around them.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

from tenacity import RetryCallState, stop_after_attempt, stop_after_delay, stop_any, stop_never
from tenacity.stop import stop_base
from tenacity.wait import wait_base, wait_exponential, wait_random_exponential

from .config import Reconnect
from .errors import (
    ConfigError,
    HandshakeFailed,
    HandshakeRejected,
    LinkDead,
    ProxyError,
    TransportClosed,
    UnsafeRedirect,
)

__all__ = ["Backoff", "Verdict", "classify", "describe"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """The policy's answer for one failure."""

    retry: bool
    reason: str
    retry_after: float | None = None
    close_code: int | None = None
    status: int | None = None


def classify(cause: BaseException, policy: Reconnect) -> Verdict:
    """Decide whether ``cause`` is worth another attempt.

    Fatal: configuration errors, TLS verification failures, redirects to plain text, a proxy refusing
    the credentials (HTTP 407 or 401, SOCKS authentication), handshake
    statuses in ``policy.fatal_statuses`` (401/403/404 by default) and close codes in
    ``policy.fatal_close_codes`` (1002/1003/1007/1008/1010 by default) when the server sent them.
    Everything else is retried: refused or reset connections, timeouts, dead links, other close codes
    (a server's 1000 included, since the application did not ask to close), 5xx, malformed handshakes
    and too many redirects. ``Retry-After`` on a rejection is carried along.
    """
    reason = describe(cause)
    if isinstance(cause, TransportClosed):
        # The fatal codes are the server's verdict on us. A close the client sent itself (1007 for
        # a server's invalid UTF-8, 1002 for garbage, 1009 for an oversized frame) says the server
        # misbehaved once, which a new connection may well not repeat.
        fatal = cause.by_peer and cause.code in policy.fatal_close_codes
        return Verdict(retry=not fatal, reason=reason, close_code=cause.code)
    if isinstance(cause, HandshakeRejected):
        return Verdict(
            retry=cause.status not in policy.fatal_statuses,
            reason=reason,
            retry_after=cause.retry_after,
            status=cause.status,
        )
    if isinstance(cause, ProxyError):
        # The proxy's statuses are not the server's: its 403 or 502 is often a passing state (a
        # rule reloading, an upstream down), retried; only refused credentials are fatal.
        return Verdict(retry=not cause.fatal, reason=reason, retry_after=cause.retry_after)
    if isinstance(cause, ssl.SSLCertVerificationError | ConfigError | UnsafeRedirect):
        return Verdict(retry=False, reason=reason)
    if isinstance(cause, LinkDead | HandshakeFailed | OSError | TimeoutError | EOFError):
        return Verdict(retry=True, reason=reason)
    # An unexpected error (an on_connect hook raising, say) is retried: giving up would leave a feed
    # dead for a transient bug, and the error hook has already been told.
    return Verdict(retry=True, reason=reason)


def describe(cause: BaseException) -> str:
    """A one-line, user-facing description of a failure."""
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"TLS certificate verification failed: {getattr(cause, 'verify_message', None) or cause}"
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused"
    if isinstance(cause, TimeoutError):
        return f"timed out{': ' + str(cause) if str(cause) else ''}"
    text = str(cause)
    return text if text else type(cause).__name__


class Backoff:
    """Consecutive-failure bookkeeping on top of tenacity strategies.

    ``next_delay()`` is called once per failure; it returns the delay before the next attempt, or
    ``None`` when the stop strategy says to give up. ``reset()`` starts a new series (after a
    connection that stayed up long enough).

    The wait is tenacity's capped exponential split in two: a fixed share ``1 - jitter`` of it, plus
    ``wait_random_exponential`` ("full jitter") over the remaining share. Both parts are capped
    before they are added, so the jitter survives at ``max_delay``: the n-th delay is drawn from
    ``[d·(1 - jitter), d]`` with ``d = min(max_delay, initial_delay · multiplier^(n-1))``.
    """

    def __init__(self, policy: Reconnect, clock: Callable[[], float] | None = None) -> None:
        self._policy = policy
        # The supervisor passes the event loop's clock: max_elapsed is measured on the clock its
        # sleeps run on (a virtual one in tests).
        self._clock = clock if clock is not None else time.monotonic
        share = policy.jitter
        fixed = 1.0 - share
        self._wait: wait_base = wait_exponential(
            multiplier=policy.initial_delay * fixed, exp_base=policy.multiplier, max=policy.max_delay * fixed
        ) + wait_random_exponential(
            multiplier=policy.initial_delay * share, exp_base=policy.multiplier, max=policy.max_delay * share
        )
        stops: list[stop_base] = []
        if policy.max_attempts is not None:
            stops.append(stop_after_attempt(policy.max_attempts))
        if policy.max_elapsed is not None:
            stops.append(stop_after_delay(policy.max_elapsed))
        self._stop: stop_base = stop_any(*stops) if stops else stop_never
        self._state = self._new_state()
        self._failures = 0

    def _new_state(self) -> RetryCallState:
        # tenacity's strategies read only attempt_number, start_time and outcome_timestamp.
        state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
        state.start_time = self._clock()
        return state

    @property
    def failures(self) -> int:
        """Consecutive failures in the current series."""
        return self._failures

    def reset(self) -> None:
        """Forget past failures: the next one is attempt 1 again."""
        self._state = self._new_state()
        self._failures = 0

    def next_delay(self, retry_after: float | None = None) -> float | None:
        """Record one failure; return the delay before the next attempt, or None to give up.

        A server's ``retry_after`` raises the delay, even above ``max_delay`` (retrying earlier only
        earns another 429), but never above ``Reconnect.retry_after_cap``.
        """
        self._failures += 1
        state = self._state
        state.attempt_number = self._failures
        state.outcome_timestamp = self._clock()
        if self._stop(state):
            return None
        # Float rounding in the sum of the two capped shares must not poke above the cap.
        delay = min(self._policy.max_delay, self._wait(state))
        if retry_after is not None:
            delay = max(delay, min(retry_after, self._policy.retry_after_cap))
        return delay
