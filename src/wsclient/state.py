"""Lifecycle tables: the client's connection states, a link's phases, and the rules that pick events.

Everything that changes a state lives in this module: the states, the events that move between
them, the transition tables and the few rules that decide which event a situation is. It does no I/O
and knows nothing of asyncio, so it is tested exhaustively and reasoned about on its own (the same
idea as h11's ``_state.py``).

A client's lifecycle::

    IDLE --start--> CONNECTING --connected--> OPEN
                       |  ^                    |
          connect_failed  retry          connection_lost
                       v  |                    |
                    RECONNECTING <-------------+
    any live state --close--> CLOSING --closed--> CLOSED
    any live state --give_up--> FAILED

A link's (one connection's) phases, in the order the supervisor drives them::

    HANDSHAKE --opened--> HOOKS --hooked--> REPLAY --replayed--> FLUSH --flushed--> OPEN
    any live phase --close--> CLOSING --closed--> CLOSED
    any live phase --lost--> CLOSED

An event that a table does not allow in the current state is a bug in the caller, not a runtime
condition: it raises :class:`IllegalTransitionError` naming both.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from typing import Generic, TypeVar

__all__ = [
    "LINK_TRANSITIONS",
    "TRANSITIONS",
    "ConnectionState",
    "Event",
    "IllegalTransitionError",
    "LinkEvent",
    "LinkPhase",
    "LinkPhaseMachine",
    "StateEvent",
    "StateMachine",
    "attempt_ended",
    "next_attempt",
]


class ConnectionState(enum.Enum):
    """Where a :class:`~wsclient.Client` is in its lifecycle."""

    IDLE = "idle"
    """Created, not started."""
    CONNECTING = "connecting"
    """Opening a connection: TCP, TLS, WebSocket handshake, ``on_connect`` hooks, subscription replay."""
    OPEN = "open"
    """Connected and ready: sends go straight to the socket."""
    RECONNECTING = "reconnecting"
    """The link is down; waiting out the backoff delay before the next attempt."""
    CLOSING = "closing"
    """``close()`` was called; the close handshake is under way."""
    CLOSED = "closed"
    """Closed by the application. Terminal."""
    FAILED = "failed"
    """Gave up: a fatal error or retries exhausted. Terminal."""

    @property
    def is_terminal(self) -> bool:
        """True for :attr:`CLOSED` and :attr:`FAILED`: no event leaves them."""
        return self in (ConnectionState.CLOSED, ConnectionState.FAILED)


class StateEvent(enum.Enum):
    """What can happen to a client's connection (not to be confused with the application-facing
    :data:`~wsclient.events.ClientEvent`)."""

    START = "start"
    CONNECTED = "connected"
    CONNECT_FAILED = "connect_failed"
    CONNECTION_LOST = "connection_lost"
    RETRY = "retry"
    GIVE_UP = "give_up"
    CLOSE = "close"
    CLOSED = "closed"


Event = StateEvent
"""The former name of :class:`StateEvent`, kept for existing imports."""

S = ConnectionState
E = StateEvent

#: The single source of truth: ``(state, event) -> next state``. A pair missing here is illegal.
TRANSITIONS: Mapping[tuple[ConnectionState, StateEvent], ConnectionState] = {
    (S.IDLE, E.START): S.CONNECTING,
    (S.IDLE, E.CLOSE): S.CLOSING,
    (S.CONNECTING, E.CONNECTED): S.OPEN,
    (S.CONNECTING, E.CONNECT_FAILED): S.RECONNECTING,
    (S.CONNECTING, E.GIVE_UP): S.FAILED,
    (S.CONNECTING, E.CLOSE): S.CLOSING,
    (S.OPEN, E.CONNECTION_LOST): S.RECONNECTING,
    (S.OPEN, E.GIVE_UP): S.FAILED,
    (S.OPEN, E.CLOSE): S.CLOSING,
    (S.RECONNECTING, E.RETRY): S.CONNECTING,
    (S.RECONNECTING, E.GIVE_UP): S.FAILED,
    (S.RECONNECTING, E.CLOSE): S.CLOSING,
    (S.CLOSING, E.CLOSED): S.CLOSED,
}


class LinkPhase(enum.Enum):
    """Where one link (one connection) is, from its handshake to its end."""

    HANDSHAKE = "handshake"
    """TCP, TLS and the WebSocket handshake (redirects included)."""
    HOOKS = "hooks"
    """The application's ``on_connect`` hooks run (a login, say)."""
    REPLAY = "replay"
    """The active subscriptions are sent, in order."""
    FLUSH = "flush"
    """The messages queued while disconnected are sent, in order."""
    OPEN = "open"
    """Ready: sends go straight to the socket."""
    CLOSING = "closing"
    """The close handshake is under way (the application closes, or the link is rotated out)."""
    CLOSED = "closed"
    """Ended: closed, lost or failed. Terminal."""

    @property
    def is_live(self) -> bool:
        """Not closing or closed."""
        return self not in (LinkPhase.CLOSING, LinkPhase.CLOSED)

    @property
    def replayed(self) -> bool:
        """The subscriptions have gone out on this link: a new one is sent like any message."""
        return self in (LinkPhase.FLUSH, LinkPhase.OPEN)


class LinkEvent(enum.Enum):
    """What can happen to a link."""

    OPENED = "opened"
    HOOKED = "hooked"
    REPLAYED = "replayed"
    FLUSHED = "flushed"
    CLOSE = "close"
    LOST = "lost"
    CLOSED = "closed"


P = LinkPhase
L = LinkEvent

#: A link's phases: ``(phase, event) -> next phase``. A pair missing here is illegal.
LINK_TRANSITIONS: Mapping[tuple[LinkPhase, LinkEvent], LinkPhase] = {
    (P.HANDSHAKE, L.OPENED): P.HOOKS,
    (P.HOOKS, L.HOOKED): P.REPLAY,
    (P.REPLAY, L.REPLAYED): P.FLUSH,
    (P.FLUSH, L.FLUSHED): P.OPEN,
    **{(phase, L.CLOSE): P.CLOSING for phase in P if phase.is_live},
    **{(phase, L.LOST): P.CLOSED for phase in P if phase is not P.CLOSED},
    (P.CLOSING, L.CLOSED): P.CLOSED,
}


def next_attempt(state: ConnectionState) -> StateEvent | None:
    """The event that begins a connect attempt in ``state``: ``None`` when ``start()`` already
    applied :attr:`StateEvent.START` (the first attempt), :attr:`StateEvent.RETRY` after a backoff."""
    if state is ConnectionState.RECONNECTING:
        return StateEvent.RETRY
    if state is ConnectionState.CONNECTING:
        return None
    raise IllegalTransitionError(state, StateEvent.RETRY)


def attempt_ended(*, opened: bool, retry: bool) -> StateEvent:
    """The event for the end of a connect attempt: a lost connection if it had opened, a failed
    connect otherwise, or giving up when the policy says not to retry."""
    if not retry:
        return StateEvent.GIVE_UP
    return StateEvent.CONNECTION_LOST if opened else StateEvent.CONNECT_FAILED


class IllegalTransitionError(RuntimeError):
    """An event arrived in a state that does not allow it. Always a bug in wsclient or its caller."""

    def __init__(self, state: enum.Enum, event: enum.Enum) -> None:
        table: Mapping[tuple[enum.Enum, enum.Enum], enum.Enum] = (
            TRANSITIONS if isinstance(state, ConnectionState) else LINK_TRANSITIONS  # type: ignore[assignment]
        )
        allowed = sorted(e.value for (s, e) in table if s is state)
        super().__init__(
            f"illegal transition: event {event.value!r} in state {state.value!r} "
            f"(allowed here: {', '.join(allowed) or 'none, the state is terminal'})"
        )
        self.state = state
        self.event = event


St = TypeVar("St", bound=enum.Enum)
Ev = TypeVar("Ev", bound=enum.Enum)


class _Machine(Generic[St, Ev]):
    """A state and the one table that moves it; ``listener(old, event, new)`` after each move."""

    __slots__ = ("_listener", "_state", "_table")

    def __init__(
        self,
        state: St,
        table: Mapping[tuple[St, Ev], St],
        listener: Callable[[St, Ev, St], None] | None = None,
    ) -> None:
        self._state = state
        self._table = table
        self._listener = listener

    @property
    def state(self) -> St:
        """The current state."""
        return self._state

    def can(self, event: Ev) -> bool:
        """Whether ``event`` is legal in the current state."""
        return (self._state, event) in self._table

    def handle(self, event: Ev) -> St:
        """Apply ``event`` and return the new state; raise :class:`IllegalTransitionError` if illegal."""
        old = self._state
        try:
            new = self._table[(old, event)]
        except KeyError:
            raise IllegalTransitionError(old, event) from None
        self._state = new
        if self._listener is not None:
            self._listener(old, event, new)
        return new


Listener = Callable[[ConnectionState, StateEvent, ConnectionState], None]


class StateMachine(_Machine[ConnectionState, StateEvent]):
    """Holds a client's :class:`ConnectionState` and applies events through :data:`TRANSITIONS`.

    ``listener``, when given, is called after every transition with ``(old, event, new)``; the client
    uses it for logging and to wake waiters, never to decide anything.
    """

    __slots__ = ()

    def __init__(
        self, state: ConnectionState = ConnectionState.IDLE, listener: Listener | None = None
    ) -> None:
        super().__init__(state, TRANSITIONS, listener)


class LinkPhaseMachine(_Machine[LinkPhase, LinkEvent]):
    """Holds a link's :class:`LinkPhase` and applies events through :data:`LINK_TRANSITIONS`."""

    __slots__ = ()

    def __init__(self, phase: LinkPhase = LinkPhase.HANDSHAKE) -> None:
        super().__init__(phase, LINK_TRANSITIONS)
