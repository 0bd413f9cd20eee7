"""What a failure means, and how long to wait before the next attempt.

``classify`` maps a failure to a :class:`Verdict` (retry or give up, and any server-imposed delay),
asking the application's ``Reconnect.classify`` hook first (a :class:`Failure` in, a
:class:`Decision` or ``None`` out); :class:`Backoff` turns consecutive failures into delays with
tenacity's wait and stop strategies. All are plain objects with no I/O, so the supervisor stays a
thin loop around them.
"""

from __future__ import annotations

import logging
import math
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Literal

from tenacity import RetryCallState, stop_after_attempt, stop_after_delay, stop_any, stop_never
from tenacity.stop import stop_base
from tenacity.wait import wait_base, wait_exponential, wait_random_exponential

from .errors import (
    ConfigError,
    HandshakeFailed,
    HandshakeRejected,
    LinkDead,
    ProxyError,
    TransportClosed,
    UnsafeRedirect,
)

if TYPE_CHECKING:
    # Only for annotations: config imports Failure and Decision from here for Reconnect.classify.
    from .config import Reconnect
    from .logs import Log

__all__ = ["Backoff", "Decision", "Failure", "Verdict", "classify", "describe"]

_log = logging.getLogger("wsclient")
_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Verdict:
    """The policy's answer for one failure."""

    retry: bool
    reason: str
    retry_after: float | None = None
    """What the server asked for (``Retry-After``): raises the backoff's delay."""
    close_code: int | None = None
    status: int | None = None
    delay: float | None = None
    """The delay the ``Reconnect.classify`` hook chose, used as is instead of the backoff's."""


@dataclass(frozen=True, slots=True)
class Failure:
    """One failed attempt or lost connection, as ``Reconnect.classify`` sees it.

    Exactly one of the groups is filled in, depending on what failed: a close (``close_code``,
    ``close_reason``, ``by_peer``), a rejected handshake (``status``, ``headers``, ``retry_after``), or
    neither (a refused connection, a timeout, a dead link: look at ``exception``).
    """

    exception: BaseException
    """The error itself: :class:`~wsclient.TransportClosed`, :class:`~wsclient.HandshakeRejected`,
    :class:`~wsclient.LinkDead`, ``ConnectionRefusedError``, ``TimeoutError``…"""
    reason: str
    """A one-line description (what the default rule would report)."""
    close_code: int | None = None
    """The close code, when the connection was closed (1006: dropped without a close frame)."""
    close_reason: str | None = None
    """The close frame's reason text."""
    by_peer: bool = False
    """Whether the server sent the close (False: the client closed, e.g. 1009 for a frame too big)."""
    status: int | None = None
    """The HTTP status of a rejected handshake."""
    headers: Mapping[str, str] = field(default_factory=lambda: _NO_HEADERS)
    """The rejected handshake's response headers, names in lower case."""
    retry_after: float | None = None
    """Seconds the server asked to wait (``Retry-After`` of a rejected handshake)."""

    @classmethod
    def of(cls, cause: BaseException) -> Failure:
        """The failure object for ``cause``."""
        reason = describe(cause)
        if isinstance(cause, TransportClosed):
            return cls(cause, reason, cause.code, cause.reason, cause.by_peer)
        if isinstance(cause, HandshakeRejected):
            return cls(
                cause,
                reason,
                status=cause.status,
                headers=MappingProxyType(dict(cause.headers)),
                retry_after=cause.retry_after,
            )
        return cls(cause, reason)


@dataclass(frozen=True, slots=True)
class Decision:
    """What ``Reconnect.classify`` decided about a failure; build it with :meth:`retry` or
    :meth:`fatal`.

    * ``Decision.retry()``: reconnect after the usual backoff delay;
    * ``Decision.retry(after=2.0)``: reconnect after exactly 2 seconds (not the backoff's delay);
    * ``Decision.fatal("banned")``: do not reconnect; the client ends ``FAILED`` with this reason.

    A retry still counts towards ``max_attempts`` and ``max_elapsed``.
    """

    action: Literal["retry", "fatal"]
    after: float | None = None
    reason: str | None = None

    def __post_init__(self) -> None:
        if self.action not in ("retry", "fatal"):
            raise ValueError(f'Decision.action must be "retry" or "fatal", got {self.action!r}')
        if self.after is not None and (
            not isinstance(self.after, int | float) or not math.isfinite(self.after) or self.after < 0
        ):
            raise ValueError(
                f"Decision.retry(after=...) takes seconds, 0 or more, got {self.after!r}: "
                "e.g. Decision.retry(after=1.5), or Decision.retry() for the usual backoff"
            )
        if self.action == "fatal" and self.after is not None:
            raise ValueError("a fatal Decision has no delay: use Decision.fatal(reason)")

    @classmethod
    def retry(cls, after: float | None = None, reason: str | None = None) -> Decision:
        """Reconnect: after ``after`` seconds, or after the backoff's delay when ``None``."""
        return cls("retry", after, reason)

    @classmethod
    def fatal(cls, reason: str) -> Decision:
        """Do not reconnect: the client ends ``FAILED``, and ``GaveUp`` carries ``reason``."""
        if not isinstance(reason, str) or not reason:
            raise ValueError("Decision.fatal(reason) needs a reason: say why the client must stop")
        return cls("fatal", None, reason)


def classify(
    cause: BaseException,
    policy: Reconnect,
    log: Log | None = None,
    redact: Callable[[str], str] = str,
) -> Verdict:
    """Decide whether ``cause`` is worth another attempt.

    ``policy.classify``, when set, decides first (see :class:`Decision`); when it returns ``None`` or
    raises (logged on ``log``, the failure's text through ``redact``), the default rules below apply.

    Fatal: configuration errors, TLS verification failures, redirects to plain text, a proxy refusing
    the credentials (HTTP 407 or 401, SOCKS authentication), handshake
    statuses in ``policy.fatal_statuses`` (401/403/404 by default) and close codes in
    ``policy.fatal_close_codes`` (1002/1003/1007/1008/1010 by default) when the server sent them.
    Everything else is retried: refused or reset connections, timeouts, dead links, other close codes
    (a server's 1000 included, since the application did not ask to close), 5xx, malformed handshakes
    and too many redirects. ``Retry-After`` on a rejection is carried along.
    """
    if policy.classify is not None:
        verdict = _ask(policy.classify, cause, log if log is not None else _log, redact)
        if verdict is not None:
            return verdict
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


def _ask(
    hook: Callable[[Failure], Decision | None], cause: BaseException, log: Log, redact: Callable[[str], str]
) -> Verdict | None:
    """The hook's decision as a verdict; ``None`` for the default rule (also when the hook fails)."""
    failure = Failure.of(cause)
    try:
        decision = hook(failure)
        if decision is not None and not isinstance(decision, Decision):
            raise TypeError(
                f"it returned {type(decision).__name__}: return Decision.retry(...), "
                "Decision.fatal(reason) or None"
            )
    except Exception as exc:
        # The classifier is the application's code: a bug in it must not stop the reconnect loop,
        # and the default rule is what the client would do without it.
        log.error(
            "reconnect.classify %s failed on %r; the default rule applies",
            getattr(hook, "__qualname__", repr(hook)),
            redact(failure.reason),
            exc_info=exc,
        )
        return None
    if decision is None:
        return None
    reason = failure.reason if decision.reason is None else f"{decision.reason} ({failure.reason})"
    return Verdict(
        retry=decision.action == "retry",
        reason=reason,
        retry_after=failure.retry_after,
        close_code=failure.close_code,
        status=failure.status,
        delay=decision.after,
    )


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

    def next_delay(self, retry_after: float | None = None, *, exact: float | None = None) -> float | None:
        """Record one failure; return the delay before the next attempt, or None to give up.

        A server's ``retry_after`` raises the delay, even above ``max_delay`` (retrying earlier only
        earns another 429), but never above ``Reconnect.retry_after_cap``. ``exact`` (a delay the
        application's classifier chose) replaces the computed delay; the stop strategy still applies.
        """
        self._failures += 1
        state = self._state
        state.attempt_number = self._failures
        state.outcome_timestamp = self._clock()
        if self._stop(state):
            return None
        if exact is not None:
            return exact
        # Float rounding in the sum of the two capped shares must not poke above the cap.
        delay = min(self._policy.max_delay, self._wait(state))
        if retry_after is not None:
            delay = max(delay, min(retry_after, self._policy.retry_after_cap))
        return delay
