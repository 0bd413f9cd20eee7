"""The connection state machine.

Everything that changes a client's connection state lives in this module: the states, the events that
move between them and the one transition table. It does no I/O and knows nothing of asyncio, so it can
be tested exhaustively and reasoned about on its own (the same idea as h11's ``_state.py``).

The lifecycle::

    IDLE --start--> CONNECTING --connected--> OPEN
                       |  ^                    |
          connect_failed  retry          connection_lost
                       v  |                    |
                    RECONNECTING <-------------+
    any live state --close--> CLOSING --closed--> CLOSED
    any live state --give_up--> FAILED

An event that the table does not allow in the current state is a bug in the caller, not a runtime
condition: it raises :class:`IllegalTransitionError` naming both.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping

__all__ = [
    "TRANSITIONS",
    "ConnectionState",
    "Event",
    "IllegalTransitionError",
    "StateMachine",
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


class Event(enum.Enum):
    """What can happen to a connection."""

    START = "start"
    CONNECTED = "connected"
    CONNECT_FAILED = "connect_failed"
    CONNECTION_LOST = "connection_lost"
    RETRY = "retry"
    GIVE_UP = "give_up"
    CLOSE = "close"
    CLOSED = "closed"


S = ConnectionState
E = Event

#: The single source of truth: ``(state, event) -> next state``. A pair missing here is illegal.
TRANSITIONS: Mapping[tuple[ConnectionState, Event], ConnectionState] = {
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


class IllegalTransitionError(RuntimeError):
    """An event arrived in a state that does not allow it. Always a bug in wsclient or its caller."""

    def __init__(self, state: ConnectionState, event: Event) -> None:
        allowed = sorted(e.value for (s, e) in TRANSITIONS if s is state)
        super().__init__(
            f"illegal transition: event {event.value!r} in state {state.value!r} "
            f"(allowed here: {', '.join(allowed) or 'none, the state is terminal'})"
        )
        self.state = state
        self.event = event


Listener = Callable[[ConnectionState, Event, ConnectionState], None]


class StateMachine:
    """Holds the current :class:`ConnectionState` and applies events through :data:`TRANSITIONS`.

    ``listener``, when given, is called after every transition with ``(old, event, new)``; the client
    uses it for logging and to wake waiters, never to decide anything.
    """

    __slots__ = ("_listener", "_state")

    def __init__(
        self, state: ConnectionState = ConnectionState.IDLE, listener: Listener | None = None
    ) -> None:
        self._state = state
        self._listener = listener

    @property
    def state(self) -> ConnectionState:
        """The current state."""
        return self._state

    def can(self, event: Event) -> bool:
        """Whether ``event`` is legal in the current state."""
        return (self._state, event) in TRANSITIONS

    def handle(self, event: Event) -> ConnectionState:
        """Apply ``event`` and return the new state; raise :class:`IllegalTransitionError` if illegal."""
        old = self._state
        try:
            new = TRANSITIONS[(old, event)]
        except KeyError:
            raise IllegalTransitionError(old, event) from None
        self._state = new
        if self._listener is not None:
            self._listener(old, event, new)
        return new
