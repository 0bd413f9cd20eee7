"""Typed lifecycle events and the statistics snapshot.

Events are small frozen dataclasses delivered to ``client.on_event`` callbacks; match on their type::

    @client.on_event
    def watch(event: wsclient.ClientEvent) -> None:
        match event:
            case wsclient.Disconnected(code=code, will_retry=True, delay=delay):
                pause_trading()
            case wsclient.Connected():
                resume_trading()
"""

from __future__ import annotations

from dataclasses import dataclass

from .state import ConnectionState

__all__ = [
    "ClientEvent",
    "ClientStats",
    "Closed",
    "ConnectFailed",
    "Connected",
    "Disconnected",
    "GaveUp",
    "HeartbeatMissed",
    "MessageDropped",
    "Reconnecting",
    "StateChanged",
]


@dataclass(frozen=True, slots=True)
class Connected:
    """A connection is open and ready: hooks ran, subscriptions were replayed, the outbox flushed."""

    connection_id: int
    url: str
    """The URL with credentials masked."""
    subprotocol: str | None
    reconnect: bool
    """False for the first connection of this client."""
    proxy: str | None = None
    """The proxy the connection goes through, its password masked; None: direct."""


@dataclass(frozen=True, slots=True)
class Disconnected:
    """An open connection was lost (never sent for ``close()``: see :class:`Closed`)."""

    connection_id: int
    code: int | None
    """The close code (1006 for a drop without a close frame); None for a dead-link verdict."""
    reason: str
    will_retry: bool
    delay: float | None
    """Seconds until the next attempt, when ``will_retry``."""


@dataclass(frozen=True, slots=True)
class ConnectFailed:
    """An attempt to connect failed before the connection was open."""

    attempt: int
    reason: str
    status: int | None
    """The HTTP status of a rejected handshake."""
    will_retry: bool
    delay: float | None
    retry_after: float | None = None
    """Seconds the server asked to wait (``Retry-After``), as asked: ``delay`` is shorter when it
    was above ``Reconnect.max_retry_after``."""


@dataclass(frozen=True, slots=True)
class Reconnecting:
    """The client waits ``delay`` seconds, then makes attempt number ``attempt``."""

    attempt: int
    delay: float


@dataclass(frozen=True, slots=True)
class HeartbeatMissed:
    """A pong did not come in time (``kind="pong"``), or the feed was silent (``kind="silence"``).

    ``fatal`` is False when the miss was forgiven because the link visibly made progress.
    """

    connection_id: int
    kind: str
    waited: float
    fatal: bool


@dataclass(frozen=True, slots=True)
class GaveUp:
    """The client stopped reconnecting and is now ``FAILED``."""

    attempts: int
    reason: str
    fatal: bool


@dataclass(frozen=True, slots=True)
class Closed:
    """``close()`` finished: the client is ``CLOSED``."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class MessageDropped:
    """A message was not delivered; ``direction`` is ``"out"`` (a send) or ``"in"`` (a frame)."""

    direction: str
    reason: str
    data: str | bytes


@dataclass(frozen=True, slots=True)
class StateChanged:
    """The client moved from one state to another (every transition of its state table)."""

    old: ConnectionState
    new: ConnectionState
    cause: str
    """What made it move: a :class:`~wsclient.state.StateEvent` value (``"connection_lost"``, ...)."""


ClientEvent = (
    StateChanged
    | Connected
    | Disconnected
    | ConnectFailed
    | Reconnecting
    | HeartbeatMissed
    | GaveUp
    | Closed
    | MessageDropped
)
"""Any event a client gives its ``on_event`` callbacks (and ``client.events()``): match on the type."""


@dataclass(frozen=True, slots=True)
class ClientStats:
    """A snapshot of a client's counters (``client.stats``)."""

    connects: int
    """Successful connections, the first included."""
    reconnects: int
    """Successful connections that replaced a lost one (after the first; the planned replacements
    are counted in :attr:`rotations`, not here)."""
    connect_failures: int
    messages_in: int
    bytes_in: int
    messages_out: int
    bytes_out: int
    last_rtt: float | None
    """Round-trip time of the last answered ping, in seconds; kept across reconnects (see
    :attr:`last_rtt_age`)."""
    seconds_since_last_inbound: float | None
    dropped_in: int
    """Inbound frames dropped by the overflow policy."""
    dropped_out: int
    """Sends dropped by the outbox policy, by a lost connection, or by close()."""
    handler_errors: int
    invalid_messages: int
    """Frames that failed to decode or to validate into the model their tag names."""
    unknown_messages: int
    """Frames no registered model claimed."""
    sequence_gaps: int
    """Gaps and resets seen in streams with a ``seq_key``."""
    requests_pending: int
    heartbeat_misses: int
    inbound_queued: int
    outbox_queued: int
    last_rtt_age: float | None = None
    """Seconds since :attr:`last_rtt` was measured (it may come from an earlier connection)."""
    write_stalls: int = 0
    """Links the client closed because the peer stopped reading while it kept the client writing
    (pongs to a ping flood piling up): :class:`~wsclient.errors.PeerNotReading`."""
    budget_waits: int = 0
    """Messages that waited for the venue's message budget (``VenueLimits.messages_per_second``)."""
    rotations: int = 0
    """Connections replaced make-before-break (``VenueLimits.max_connection_age``, or on purpose)."""
    ping_replies: int = 0
    """Venue application pings answered by ``ClientConfig.ping_replies`` rules."""
    duplicates_dropped: int = 0
    """Messages not delivered because their sequence number was already delivered (``dedup_key``)."""
