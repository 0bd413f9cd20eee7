"""What outlives a connection: subscriptions, the outbox, pending requests, counters.

A :class:`Session` belongs to one client for its whole life; links come and go under it. Nothing here
does I/O: the outbound part sends what the session holds, the supervisor folds each ended link's
figures into the counters.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from .codec import Data
from .errors import OutboxFullError
from .routing import RequestTracker

__all__ = ["Counters", "Outbox", "Session", "Subscription"]

Outgoing = Any  # dict | list | pydantic model | str | bytes


class Counters:
    """The client's running totals (:class:`~wsclient.events.ClientStats` is a snapshot of them)."""

    __slots__ = (
        "budget_waits",
        "bytes_in",
        "bytes_out",
        "connect_failures",
        "connects",
        "dropped_in",
        "dropped_out",
        "handler_errors",
        "heartbeat_misses",
        "messages_in",  # and bytes_in: of ended links (the live one's are in its Liveness)
        "messages_out",
        "ping_replies",
        "rotations",
        "write_stalls",
    )

    def __init__(self) -> None:
        self.budget_waits = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.connect_failures = 0
        self.connects = 0
        self.dropped_in = 0
        self.dropped_out = 0
        self.handler_errors = 0
        self.heartbeat_misses = 0
        self.messages_in = 0
        self.messages_out = 0
        self.ping_replies = 0
        self.rotations = 0
        self.write_stalls = 0


class Subscription:
    """A remembered subscription, replayed in order after every reconnect.

    ``cancel()`` stops the replay and, if an unsubscribe message was given and the subscribe went out
    on the current connection, sends it.
    """

    __slots__ = ("_cancel", "_delta", "active", "message", "previous_on", "sent_on", "unsubscribe")

    def __init__(
        self,
        message: Outgoing,
        unsubscribe: Outgoing | None,
        cancel: Callable[[Subscription], Awaitable[None]],
        delta: Callable[[Subscription, Outgoing], bool] | None = None,
    ) -> None:
        self._delta = delta
        self.message = message
        self.unsubscribe = unsubscribe
        self.active = True
        self.sent_on = 0
        self.previous_on = 0
        """The connection it went out on before :attr:`sent_on` (still live during a rotation)."""
        """The connection id the subscribe message last went out on (or is queued for); 0: none."""
        self._cancel = cancel

    def build(self) -> Outgoing:
        """The message to send now: :attr:`message`, or what it returns when it is a function
        (called at every send and replay: fresh ids, the streams of the moment, a new signature)."""
        message = self.message
        return message() if callable(message) else message

    def send_delta(self, message: Outgoing) -> bool:
        """Queue ``message`` (a change to this subscription: streams added or removed) for the
        current connection if this subscription's message went out on it; otherwise do nothing, the
        next replay sends the whole (callable) message. Returns whether it was queued."""
        if not self.active or self._delta is None:
            return False
        return self._delta(self, message)

    async def cancel(self) -> None:
        """Forget this subscription; send its unsubscribe message if the subscribe went out on the
        current connection (while open, or already replayed on a connection being opened, in which
        case it follows the replay). Idempotent."""
        if not self.active:
            return
        self.active = False
        await self._cancel(self)

    def __repr__(self) -> str:
        return f"<Subscription active={self.active}>"


OverflowPolicy = Literal["raise", "drop_oldest", "drop_newest"]


def _ignore(data: Data, reason: str) -> None:
    return None


class Outbox:
    """Frames waiting for a connection: bounded, in order, with an overflow policy.

    :attr:`dropped` ``(data, reason)`` is told of every frame the policy drops (the client reports a
    :class:`~wsclient.events.MessageDropped`).
    """

    __slots__ = ("_frames", "_policy", "_size", "dropped")

    def __init__(self, size: int, policy: OverflowPolicy) -> None:
        self._size = size
        self._policy = policy
        self.dropped: Callable[[Data, str], None] = _ignore
        # Created by the first frame that must wait: an empty deque costs ~760 B per client.
        self._frames: deque[Data] | None = None

    def __len__(self) -> int:
        return len(self._frames or ())

    def __bool__(self) -> bool:
        return bool(self._frames)

    def put(self, data: Data, state: str) -> None:
        """Queue ``data``; when full, apply the policy (raise :class:`OutboxFullError` or drop)."""
        frames = self._frames
        if frames is None:
            frames = self._frames = deque()
        if len(frames) >= self._size:
            if self._policy == "raise":
                raise OutboxFullError(
                    f"outbox full ({self._size} messages) while {state}: "
                    "raise outbox_size or choose outbox_overflow='drop_oldest'"
                )
            if self._policy == "drop_newest":
                self.dropped(data, "outbox full")
                return
            self.dropped(frames.popleft(), "outbox full")
        frames.append(data)

    def pop(self) -> Data:
        """The oldest frame (the outbox must not be empty)."""
        assert self._frames
        return self._frames.popleft()

    def drop_all(self, reason: str) -> None:
        """Report every queued frame as dropped, oldest first."""
        frames = self._frames
        while frames:
            self.dropped(frames.popleft(), reason)


class Session:
    """What one client keeps across its connections."""

    __slots__ = ("counters", "last_inbound", "last_rtt", "outbox", "requests", "subscriptions")

    def __init__(self, outbox: Outbox, requests: RequestTracker) -> None:
        self.subscriptions: list[Subscription] = []
        """Active subscriptions, in replay order."""
        self.outbox = outbox
        self.requests = requests
        self.counters = Counters()
        self.last_inbound: float | None = None
        """When the last frame of an ended link arrived (the live link keeps its own)."""
        self.last_rtt: tuple[float, float] | None = None
        """``(rtt, when measured)`` of an ended link."""
