"""The single exit for data frames: encode → send → count, the outbox, the replay, the flush.

Every data frame the client writes leaves through :class:`Outbound`: the application's sends and
requests, the ``on_connect`` hooks' sends, the replayed subscriptions and the outbox. Order on a link
is replay → outbox → live sends: while the outbox is being flushed, new sends queue behind it. A
frame is counted as sent only once the socket took it; one lost in flight is reported and never
re-sent. A writer task exists only while the outbox holds frames for an open link.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pydantic import BaseModel

from .budget import LinkBudgets
from .callbacks import Callbacks
from .codec import Codec, Data
from .codec import encode as encode_frame
from .errors import ConnectionLostError, RequestTimeout, TransportClosed
from .events import MessageDropped
from .link import Link, LinkDown
from .policy import describe
from .redact import Redactor
from .session import Outgoing, Session, Subscription
from .state import LinkPhase, StateMachine
from .transport import Transport

__all__ = ["Outbound"]

M = TypeVar("M", bound=BaseModel)

LOST_IN_FLIGHT = "connection lost while sending"


class _SubscribeText(str):
    """A subscription's frame (text) waiting in the outbox: it counts against the venue's
    subscription budget when it leaves (``VenueLimits.subscribes_per_hour``)."""

    __slots__ = ()


class _SubscribeBytes(bytes):
    """A subscription's frame (binary) waiting in the outbox."""

    __slots__ = ()


def _subscribe_frame(data: Data) -> Data:
    return _SubscribeText(data) if isinstance(data, str) else _SubscribeBytes(data)


def _is_subscribe(data: Data) -> bool:
    return data.__class__ is _SubscribeText or data.__class__ is _SubscribeBytes


class Outbound:
    """Sends for one client, on whichever link is primary."""

    __slots__ = (
        "_callbacks",
        "_codec",
        "_flushing",
        "_opening_deltas",
        "_redactor",
        "_route",
        "_session",
        "_sm",
        "_writer",
        "link",
        "opening",
    )

    def __init__(
        self,
        session: Session,
        callbacks: Callbacks,
        codec: Codec | None,
        redactor: Redactor,
        *,
        sm: StateMachine,
        route: Callable[[], None],
    ) -> None:
        self._session = session
        self._callbacks = callbacks
        self._codec = codec
        self._redactor = redactor
        self._sm = sm
        self._route = route
        self.link: Link | None = None
        """The primary link, from its handshake to its end (set by the supervisor)."""
        self._flushing = False
        self._writer: asyncio.Task[None] | None = None
        self.opening: Link | None = None
        """A link being opened beside the primary one (a rotation), set by the supervisor."""
        # Made by the first change during a rotation: an idle client holds none (56 B).
        self._opening_deltas: list[Data] | None = None

    def encode(self, message: Outgoing) -> Data:
        """dict/list and models as JSON (or through the codec), str and bytes as they are."""
        return encode_frame(message, self._codec)

    # -- sending -----------------------------------------------------------------------------------

    async def send(self, message: Outgoing) -> None:
        """Send now on an open link with nothing queued ahead; otherwise queue in the outbox."""
        data = self.encode(message)
        link = self.link
        if (
            link is not None
            and link.phase is LinkPhase.OPEN
            and not self._session.outbox
            and not self._flushing
            and (link.budgets is None or self._budget_free(link.budgets))
        ):
            await self.send_on(link, data)
        else:
            self.enqueue(data)

    async def send_on(self, link: Link, data: Data, *, subscribe: bool = False) -> None:
        """Write ``data`` on ``link`` as soon as the link's budget allows; count it once the socket
        took it. ``subscribe`` counts it against the subscription budget too.

        Raises :class:`~wsclient.ConnectionLostError` if the link ends before (the frame is not
        re-sent).
        """
        transport = link.transport
        assert transport is not None
        if link.budgets is not None:
            await self._pace(link.budgets, subscribe)
        try:
            await transport.send(data)
        except TransportClosed as exc:
            raise ConnectionLostError(
                f"connection lost while sending: {self._redactor.text(describe(exc))}"
            ) from exc
        counters = self._session.counters
        counters.messages_out += 1
        counters.bytes_out += len(data)

    @staticmethod
    def _budget_free(budgets: LinkBudgets) -> bool:
        messages = budgets.messages
        return messages is None or messages.delay(_loop_time(), budgets.reserve) <= 0

    async def _pace(self, budgets: LinkBudgets, subscribe: bool) -> None:
        """Wait until the link's budgets take one more message, then count it in them."""
        messages = budgets.messages
        subscribes = budgets.subscribes if subscribe else None
        if messages is None and subscribes is None:
            return
        # Bounded: each pass waits for the oldest counted message to leave a window.
        for _ in range(64):
            now = _loop_time()
            delay = 0.0
            if messages is not None:
                delay = messages.delay(now, budgets.reserve)
            if subscribes is not None:
                delay = max(delay, subscribes.delay(now))
            if delay <= 0:
                break
            self._session.counters.budget_waits += 1
            await asyncio.sleep(delay)
        now = _loop_time()
        if messages is not None:
            messages.record(now)
        if subscribes is not None:
            subscribes.record(now)

    def write_now(self, transport: Transport, data: Data) -> None:
        """Write a frame that must not wait, not even behind a full send buffer: the heartbeat's
        application ping. Not queued, not counted as an application message."""
        transport.send_nowait(data)

    def enqueue(self, data: Data) -> None:
        """Queue ``data`` for the next flush (applies the outbox's overflow policy)."""
        self._session.outbox.put(data, self._sm.state.value)
        link = self.link
        if link is not None and link.phase is LinkPhase.OPEN and self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(
                self._write(link), name=f"wsclient-writer-{link.id}"
            )

    async def _write(self, link: Link) -> None:
        try:
            await self.flush(link)
        except LinkDown as down:
            link.fail(down.cause)
        finally:
            self._writer = None

    async def flush(self, link: Link) -> None:
        """Send the outbox in order; a frame lost in flight is reported, the rest stay queued.

        Raises :class:`~wsclient.link.LinkDown` when the link ends meanwhile.
        """
        outbox = self._session.outbox
        self._flushing = True
        try:
            while outbox:
                data = outbox.pop()
                try:
                    await self.send_on(link, data, subscribe=_is_subscribe(data))
                except ConnectionLostError as exc:
                    self.dropped(data, LOST_IN_FLIGHT)
                    raise LinkDown(exc.__cause__ or exc) from None
                except asyncio.CancelledError:
                    # The link died elsewhere (a dead-link verdict) while this frame was being
                    # written: it is reported like any frame lost in flight, never silently gone.
                    self.dropped(data, LOST_IN_FLIGHT)
                    raise
        finally:
            self._flushing = False

    async def idle(self) -> None:
        """Wait until the writer (if one runs) has sent what the outbox held."""
        writer = self._writer
        if writer is not None:
            await asyncio.shield(writer)

    async def stop_writer(self) -> None:
        """Stop the writer task, if one runs (its link is over)."""
        writer = self._writer
        if writer is not None:
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            self._writer = None

    def dropped(self, data: Data, reason: str) -> None:
        """Count and report a frame that will not be sent."""
        self._session.counters.dropped_out += 1
        self._callbacks.emit(MessageDropped("out", reason, data))

    # -- subscriptions -----------------------------------------------------------------------------

    def subscribe(self, message: Outgoing, unsubscribe: Outgoing | None) -> Subscription:
        """Remember a subscription; send it now if the current link has replayed already."""
        sub = Subscription(message, unsubscribe, self._cancel, self._delta)
        self._session.subscriptions.append(sub)
        link = self.link
        if link is not None and link.phase.replayed:
            # The current link has replayed already: send it like any other message.
            self.enqueue(_subscribe_frame(self.encode(sub.build())))
            sub.sent_on = link.id
        opening = self.opening
        if opening is not None and opening.phase.replayed:
            # A rotation's new link has replayed already too: it gets the subscription before it
            # takes over (an earlier replay cannot have included it).
            self._hold_for_opening(_subscribe_frame(self.encode(sub.build())))
            sub.previous_on, sub.sent_on = sub.sent_on, opening.id
        return sub

    def _delta(self, sub: Subscription, message: Outgoing) -> bool:
        queued = False
        opening = self.opening
        if opening is not None and sub.sent_on == opening.id:
            # Replayed already on a link opened beside the primary one (a rotation): it gets the
            # change before it takes over (see flush_opening()).
            self._hold_for_opening(_subscribe_frame(self.encode(message)))
            queued = True
        link = self.link
        if link is not None and link.id in (sub.sent_on, sub.previous_on) and link.phase.is_live:
            self.enqueue(_subscribe_frame(self.encode(message)))
            queued = True
        return queued

    def _hold_for_opening(self, data: Data) -> None:
        if self._opening_deltas is None:
            self._opening_deltas = []
        self._opening_deltas.append(data)

    def adopt_opening(self, *, keep: bool = True) -> None:
        """The rotation's new link became primary (``keep``: changes not yet sent on it join the
        outbox) or was abandoned (they are dropped: the primary link got its own copy)."""
        deltas, self._opening_deltas = self._opening_deltas or [], None
        if keep:
            for data in deltas:
                self.enqueue(data)

    async def flush_opening(self, link: Link) -> None:
        """Send, on a rotation's new link, the subscription changes made after its replay."""
        deltas = self._opening_deltas
        while deltas:  # bounded: each pass sends one
            data = deltas.pop(0)
            await self.send_on(link, data, subscribe=_is_subscribe(data))

    async def _cancel(self, sub: Subscription) -> None:
        self._session.subscriptions.remove(sub)
        link = self.link
        unsubscribe = sub.unsubscribe
        if unsubscribe is not None and link is not None and sub.sent_on == link.id and link.phase.is_live:
            await self.send(unsubscribe() if callable(unsubscribe) else unsubscribe)

    async def replay(self, link: Link, pause: float) -> None:
        """Send every active subscription in order on ``link``, including ones added meanwhile."""
        subscriptions = self._session.subscriptions
        sent: set[int] = set()
        while True:
            pending = [s for s in subscriptions if id(s) not in sent]
            if not pending:
                break
            for sub in pending:
                sent.add(id(sub))
                if not sub.active:
                    continue
                if pause and len(sent) > 1:
                    await asyncio.sleep(pause)
                    if not sub.active:  # cancelled during the pause: never sent, nothing to undo
                        continue
                data = self.encode(sub.build())
                # Marked before the send: a change made meanwhile (send_delta) must go out too.
                primary = self.link
                on_primary = (
                    primary is not None
                    and primary is not link
                    and primary.id in (sub.sent_on, sub.previous_on)
                )
                sub.previous_on = primary.id if on_primary and primary is not None else 0
                sub.sent_on = link.id
                await self.send_on(link, data, subscribe=True)

    # -- requests ----------------------------------------------------------------------------------

    async def request(
        self,
        message: Any,
        timeout: float,
        model: type[M] | None,
        send: Callable[[Data], Awaitable[None]],
    ) -> Any:
        """Send ``message`` with a fresh correlation id through ``send``; return the reply."""
        requests = self._session.requests
        request_id, frame = requests.prepare(message, self._codec)
        future = requests.create(request_id)
        self._route()
        try:
            await send(frame)
            async with asyncio.timeout(timeout):
                reply = await future
        except TimeoutError:
            raise RequestTimeout(f"no reply to request {request_id!r} within {timeout}s") from None
        finally:
            requests.forget(request_id)
        if model is not None:
            return model.model_validate(reply)
        return reply


def _loop_time() -> float:
    # The loop's clock (a virtual one in tests), read when needed: a client is made before its loop.
    return asyncio.get_running_loop().time()
