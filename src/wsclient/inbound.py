"""Inbound: the receiver each link feeds, the bounded queue, the dispatcher, the overflow policy.

The reader never waits on application code, frames reach the handlers in arrival order, and one link
at a time feeds them:

* While nothing is queued, a frame is delivered as soon as the transport has parsed it: the link's
  :class:`Receiver` exposes the client's target as its inline shortcut, and sync callbacks and
  handlers run right there (they block the loop wherever they run, so this changes neither order
  nor liveness, and saves a queue hop per frame).
* What must be awaited (an async or ``in_thread`` handler) comes back as an awaitable and goes into
  the queue; a dispatcher task then runs, in order, that and the frames read meanwhile, and ends when
  the queue is empty. So there is a dispatcher task only while there is async work.
* When the queue is full, ``inbound_overflow="block"`` stops reading (lossless; the dead-link verdict
  is suspended meanwhile), ``drop_oldest`` / ``drop_newest`` drop and report.
* With a metrics recorder attached (:meth:`Inbound.set_recorder`), the target is wrapped in a
  :class:`_Timed` one and the receiver's class becomes :class:`_StampingReceiver`, which queues frames
  with their arrival time: the timings cost nothing while no recorder is attached, since no code on
  the hot path tests for one.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from collections.abc import Awaitable, Callable, Generator, Hashable
from time import perf_counter
from typing import TYPE_CHECKING, Any

from .callbacks import Callbacks
from .codec import Data
from .config import ClientConfig
from .dedup import Dedup
from .events import MessageDropped
from .heartbeat import Liveness, PongWatch
from .logs import Log, LogLimiter
from .redact import Redactor
from .routing import (
    SYNC_HANDLER_FAILURES,
    RequestTracker,
    Router,
    SeqKey,
    SequenceGap,
    handler_failed,
)
from .session import Counters
from .transport import InlineTarget

if TYPE_CHECKING:
    from .metrics import MetricsRecorder

__all__ = ["Inbound", "Receiver"]


class _ReconnectMark:
    """Put in the queue where one link's frames end and the next one's begin."""

    __slots__ = ()


_RECONNECT = _ReconnectMark()


class _Secondary:
    """A queued frame of the second of two overlapping links (a rotation's overlap)."""

    __slots__ = ("data",)

    def __init__(self, data: Data) -> None:
        self.data = data


class _Release:
    """Put in the queue where held messages are to be delivered (the end of an overlap or a move)."""

    __slots__ = ("stream",)

    def __init__(self, stream: Hashable | None) -> None:
        self.stream = stream


class Overlapping:
    """A rotation's overlap, as the inbound part runs it: the old link's receiver, the new one's, and
    the router's record of which streams each delivered (:attr:`ready` once the new one caught up)."""

    __slots__ = ("new", "old", "ready")

    def __init__(self, old: Receiver | None, new: Receiver, ready: asyncio.Future[None]) -> None:
        self.old = old
        self.new = new
        self.ready = ready


class _Process:
    """The inline target of a client with ``on_message`` callbacks: :meth:`Inbound.process`."""

    __slots__ = ("dispatch",)

    def __init__(self, dispatch: Callable[[Data], Awaitable[None] | None]) -> None:
        self.dispatch = dispatch


class _Timed:
    """The inline target while a metrics recorder is attached: the client's target, timed."""

    __slots__ = ("_handler_time", "_inner", "_queue_wait", "dispatch")

    def __init__(self, inner: InlineTarget, recorder: MetricsRecorder) -> None:
        # The target, not its dispatch: the router rebinds its own after registrations change.
        self._inner = inner
        # Bound once: two fewer lookups per frame.
        self._handler_time = recorder.handler_time
        self._queue_wait = recorder.queue_wait
        # An attribute, as InlineTarget wants it: what the transport calls for a frame it just read.
        self.dispatch: Callable[[Data], Awaitable[None] | None] = self._unqueued

    def _unqueued(self, data: Data) -> Awaitable[None] | None:
        # run(data, 0.0) written out: this is the per-frame path of sync handlers.
        self._queue_wait(0.0)
        start = perf_counter()
        pending = self._inner.dispatch(data)
        if pending is None:
            self._handler_time(perf_counter() - start)
            return None
        return self._finish(pending, perf_counter() - start)

    def run(self, data: Data, waited: float) -> Awaitable[None] | None:
        """Deliver a frame that waited ``waited`` seconds in the queue, timed."""
        self._queue_wait(waited)
        start = perf_counter()
        pending = self._inner.dispatch(data)
        if pending is None:
            self._handler_time(perf_counter() - start)
            return None
        return self._finish(pending, perf_counter() - start)

    async def _finish(self, pending: Awaitable[None], spent: float) -> None:
        # Timed from when the dispatcher gets to it: the time it sat in the queue is not the handler's.
        start = perf_counter()
        try:
            await pending
        finally:
            self._handler_time(spent + perf_counter() - start)


class _Stamped:
    """A frame queued with its arrival time (while a metrics recorder is attached).

    It is awaitable, so the dispatcher runs it where it runs deferred work, unchanged: the untimed
    dispatch loop pays nothing for it.
    """

    __slots__ = ("at", "data", "inbound")

    def __init__(self, inbound: Inbound, data: Data, at: float) -> None:
        self.inbound = inbound
        self.data = data
        self.at = at

    def __await__(self) -> Generator[Any, None, None]:
        target = self.inbound._target
        if target is None:
            return
        if isinstance(target, _Timed):
            pending = target.run(self.data, perf_counter() - self.at)
        else:  # the recorder left while this frame waited
            pending = target.dispatch(self.data)
        if pending is not None:
            yield from pending.__await__()


class Receiver:
    """What one link's transport delivers to (a :class:`~wsclient.transport.Sink`)."""

    __slots__ = ("_inbound", "active", "answer", "defer", "inline", "liveness", "pong_watch", "secondary")

    def __init__(
        self,
        inbound: Inbound,
        pong_watch: PongWatch | None,
        answer: Callable[[Data], bool] | None = None,
    ) -> None:
        self._inbound = inbound
        self.answer = answer
        """The link's ping-reply rules (True: a venue's ping answered, not delivered)."""
        # Bound once: the transport calls it for every frame an async handler leaves behind.
        self.defer = inbound.defer
        self.pong_watch = pong_watch
        self.liveness: Liveness | None = None
        self.inline: InlineTarget | None = None
        self.active = False
        """Whether this receiver's link feeds the handlers (see :meth:`Inbound.activate`)."""
        self.secondary = False
        """Whether this inactive link's keyed messages go to the de-duplicator (an overlap)."""

    def __call__(self, data: Data) -> Awaitable[None] | None:
        watch = self.pong_watch
        if watch is not None and watch.waiting and watch.check(data):
            return None
        answer = self.answer
        if answer is not None and answer(data):
            return None  # a venue's ping, answered as it was read: ahead of anything queued
        if not self.active:
            # A link beside the primary one (rotation): with a de-duplicator, its keyed messages
            # count; otherwise it delivers nothing (yet).
            return self._inbound.receive_secondary(data) if self.secondary else None
        inbound = self._inbound
        queue = inbound._queue
        if queue and len(queue) + 1 < inbound._limit:
            # The common case under async handlers: queue behind the dispatcher (Inbound.receive
            # written out, a call less per frame).
            queue.append(data)
            return None
        return inbound.receive(data)


class _StampingReceiver(Receiver):
    """A :class:`Receiver` that queues frames with their arrival time, for the queue-wait timing.

    A live receiver's class is switched to this one when a recorder is attached (and back), since
    the transport holds the receiver object itself: the plain receiver keeps its hot path untouched.
    """

    __slots__ = ()

    def __call__(self, data: Data) -> Awaitable[None] | None:
        watch = self.pong_watch
        if watch is not None and watch.waiting and watch.check(data):
            return None
        answer = self.answer
        if answer is not None and answer(data):
            return None
        if not self.active:
            return self._inbound.receive_secondary(data) if self.secondary else None
        inbound = self._inbound
        queue = inbound._queue
        if queue and len(queue) + 1 < inbound._limit:
            queue.append(_Stamped(inbound, data, perf_counter()))
            return None
        if inbound._dispatcher is None and not queue:
            return inbound.receive(data)  # delivered now, through the timed target
        return inbound.receive(_Stamped(inbound, data, perf_counter()))  # type: ignore[arg-type]


class Inbound:
    """Delivery of one client's inbound frames to its callbacks and router."""

    __slots__ = (
        "_callbacks",
        "_config",
        "_counters",
        "_dedup",
        "_dedup_key",
        "_dispatcher",
        "_limit",
        "_limiter",
        "_log",
        "_low",
        "_policy",
        "_queue",
        "_receiver",
        "_recorder",
        "_redactor",
        "_requests",
        "_router",
        "_routing",
        "_space",
        "_target",
        "closed",
        "message_callbacks",
    )

    def __init__(
        self,
        config: ClientConfig,
        callbacks: Callbacks,
        counters: Counters,
        requests: RequestTracker,
        redactor: Redactor,
        limiter: LogLimiter,
        log: Log,
        *,
        dedup: Dedup | None = None,
        dedup_key: SeqKey | None = None,
    ) -> None:
        self._config = config
        self._dedup = dedup
        self._dedup_key = dedup_key
        self._requests = requests
        # Made by the first model, on_unknown hook or request: a client reading raw frames only
        # never pays for one (~1 KiB).
        self._router: Router | None = None
        self._limiter = limiter
        self._callbacks = callbacks
        self._counters = counters
        self._redactor = redactor
        self._log = log
        self._policy = config.inbound_overflow
        self._limit = config.inbound_queue
        self._low = max(0, self._limit // 2)
        self.message_callbacks: tuple[Callable[[Data], Any], ...] = ()
        # Typed routing is opt-in: until a model, an on_unknown hook or a request needs it, frames go
        # only to on_message callbacks and the router costs nothing.
        self._routing = False
        self._target: InlineTarget | None = None
        # Created on first use: an empty deque costs ~760 B, and a client whose handlers are all
        # sync may never queue a frame.
        self._queue: deque[Any] | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._space: asyncio.Future[None] | None = None
        self._receiver: Receiver | None = None
        self._recorder: MetricsRecorder | None = None
        self.closed = False

    # -- what listens --------------------------------------------------------------------------------

    @property
    def router(self) -> Router:
        """The typed router (made on first use)."""
        router = self._router
        if router is None:
            config = self._config
            router = self._router = Router(
                discriminator=config.discriminator,
                codec=config.codec,
                on_error=self.routing_error,
                on_unknown=self.unknown,
                on_gap=self.gap,
                requests=self._requests,
                log_limiter=self._limiter,
                redact=self._redactor.text,
                dedup=self._dedup,
                default_seq_key=self._dedup_key,
            )
        return router

    @property
    def has_router(self) -> bool:
        """Whether the router was made (its figures are zero otherwise)."""
        return self._router is not None

    def add_message_callback(self, callback: Callable[[Data], Any]) -> None:
        """Register an ``on_message`` callback (they run before typed handlers)."""
        self.message_callbacks = (*self.message_callbacks, callback)
        self._update_target()

    def remove_message_callback(self, callback: Callable[[Data], Any]) -> None:
        """Unregister an ``on_message`` callback (the first registration of it)."""
        callbacks = list(self.message_callbacks)
        if callback in callbacks:
            callbacks.remove(callback)
            self.message_callbacks = tuple(callbacks)
            self._update_target()

    def route(self) -> None:
        """Turn typed routing on (a model, an ``on_unknown`` hook or a request needs it)."""
        if not self._routing:
            self.router  # noqa: B018 - made now: process() reads _router on the hot path
            self._routing = True
            self._update_target()

    def _update_target(self) -> None:
        target: InlineTarget | None
        if self.message_callbacks:
            target = _Process(self.process)
        elif self._routing:
            target = self.router
        else:
            target = None
        recorder = self._recorder
        if target is not None and recorder is not None:
            target = _Timed(target, recorder)
        self._target = target
        self._set_inline()

    @property
    def recorder(self) -> MetricsRecorder | None:
        """The metrics recorder the timings go to (None: none are taken)."""
        return self._recorder

    def set_recorder(self, recorder: MetricsRecorder | None) -> None:
        """Time every frame's delivery and queue wait into ``recorder`` (None: stop timing)."""
        self._recorder = recorder
        receiver = self._receiver
        if receiver is not None:
            receiver.__class__ = Receiver if recorder is None else _StampingReceiver
        self._update_target()

    def _set_inline(self) -> None:
        receiver = self._receiver
        if receiver is not None:
            # In message heartbeat mode every frame must pass the pong check of Receiver.__call__.
            idle = self._dispatcher is None and not self._queue and not self.closed
            # Pongs and venue pings must be looked at in Receiver.__call__: no shortcut then.
            plain = receiver.pong_watch is None and receiver.answer is None
            receiver.inline = self._target if idle and plain else None

    # -- links ---------------------------------------------------------------------------------------

    def attach(self, pong_watch: PongWatch | None, answer: Callable[[Data], bool] | None = None) -> Receiver:
        """A receiver for a new link; it delivers nothing until :meth:`activate` (venue pings are
        answered from the start)."""
        if self._recorder is not None:
            return _StampingReceiver(self, pong_watch, answer)
        return Receiver(self, pong_watch, answer)

    def activate(self, receiver: Receiver, *, reconnect: bool) -> None:
        """Make ``receiver``'s link the one feeding the handlers (one link at a time).

        The previous receiver stops delivering. ``reconnect`` marks where the earlier links' frames
        end, in arrival order: frames of an old link still queued must not count as the new one's.
        """
        previous = self._receiver
        if previous is not None:
            previous.active = False
            previous.inline = None
            # During an overlap the old link goes on feeding the de-duplicator until it has closed.
            previous.secondary = self._router is not None and self._router.merging
        receiver.secondary = False
        receiver.active = True
        # A recorder attached while this link was being opened (a rotation's new link) times it too.
        receiver.__class__ = Receiver if self._recorder is None else _StampingReceiver
        self._receiver = receiver
        if reconnect and self._router is not None:
            if self._queue:
                self._queue.append(_RECONNECT)
            else:
                self._router.mark_reconnect()
        self._set_inline()

    def started(self, receiver: Receiver, liveness: Liveness) -> None:
        """The link of ``receiver`` reads now, into ``liveness``."""
        receiver.liveness = liveness

    # -- overlapping links (rotation) ------------------------------------------------------------------

    def begin_overlap(self, new: Receiver) -> Overlapping | None:
        """A second link opens beside the primary one. With a de-duplicator (``dedup_key``) its keyed
        messages are judged with the primary's from now on, and what runs ahead is held; without
        one, it delivers nothing until :meth:`activate` (None is returned)."""
        router = self._router
        if router is None or router.dedup is None or not self._routing:
            return None
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        router.begin_overlap(ready)
        new.secondary = True
        return Overlapping(self._receiver, new, ready)

    def end_overlap(self, overlap: Overlapping) -> None:
        """Only one link is left: deliver what was held, in order (after what is queued)."""
        if overlap.old is not None:
            overlap.old.secondary = False
        overlap.new.secondary = False
        if not overlap.ready.done():
            overlap.ready.cancel()
        self._release(None)

    def end_move(self, stream: Hashable) -> None:
        """A stream moved here from another connection has left the other one: what this one held
        for it follows, in order."""
        dedup = self._dedup
        if dedup is None:
            return
        if self._router is None:
            dedup.end_move(stream)
            return
        self._release(stream)

    def _release(self, stream: Hashable | None) -> None:
        router = self._router
        if router is None:
            return
        queue = self._queue
        if queue or self._dispatcher is not None:
            assert queue is not None
            queue.append(_Release(stream))
            return
        pending = router.end_overlap() if stream is None else router.end_move(stream)
        if pending is not None and not self.closed:
            self.defer(pending)

    def receive_secondary(self, data: Data) -> Awaitable[None] | None:
        """A frame of the second of two overlapping links: judged by the de-duplicator, in arrival
        order with the primary link's frames."""
        router = self._router
        if router is None or self.closed:
            return None
        queue = self._queue
        if self._dispatcher is None and not queue:
            pending = router.dispatch_secondary(data)
            if pending is not None:
                self.defer(pending)
            return None
        assert queue is not None
        queue.append(_Secondary(data))
        if len(queue) >= self._limit:
            return self._full()
        return None

    # -- the hot path ----------------------------------------------------------------------------------

    def receive(self, data: Data) -> Awaitable[None] | None:
        """A frame the inline shortcut did not take: deliver it now if nothing waits, else queue it.

        Returns an awaitable when the queue is full under the ``block`` policy: the transport stops
        reading until it completes.
        """
        queue = self._queue
        target = self._target
        if self._dispatcher is None and not queue:
            if target is not None and not self.closed:
                pending = target.dispatch(data)
                if pending is not None:
                    self.defer(pending)
            # Nobody listens yet: the frame is counted (by the transport) and goes nowhere.
            return None
        assert queue is not None
        queue.append(data)
        if len(queue) >= self._limit:
            return self._full()
        return None

    def defer(self, pending: Awaitable[None]) -> None:
        """The rest of a frame's delivery, to be awaited before any later frame."""
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        # Queued as it is: the dispatcher tells frames (str, bytes) and the mark from awaitables.
        queue.append(pending)
        if self._dispatcher is None and not self.closed:
            receiver = self._receiver
            if receiver is not None:
                receiver.inline = None
            self._dispatcher = asyncio.get_running_loop().create_task(
                self._dispatch(), name="wsclient-dispatch"
            )

    def _full(self) -> Awaitable[None] | None:
        queue = self._queue
        assert queue is not None
        if self._policy == "block":
            receiver = self._receiver
            if receiver is not None and receiver.liveness is not None:
                receiver.liveness.blocked = True
            if self._space is None:
                self._space = asyncio.get_running_loop().create_future()
            return self._space
        if self._policy == "drop_newest":
            dropped = queue.pop()  # the frame just appended, never a mark
            if dropped.__class__ is _Secondary or dropped.__class__ is _Stamped:
                dropped = dropped.data
        else:
            # The oldest frame: reconnect marks and deferred work (awaitables) stay in place.
            for index, dropped in enumerate(queue):
                cls = dropped.__class__
                if cls is str or cls is bytes or cls is _Stamped:
                    del queue[index]
                    if cls is _Stamped:
                        dropped = dropped.data
                    break
        assert isinstance(dropped, str | bytes)
        self._counters.dropped_in += 1
        self._callbacks.emit(MessageDropped("in", "inbound queue full", dropped))
        return None

    def _space_available(self) -> None:
        space, self._space = self._space, None
        receiver = self._receiver
        liveness = receiver.liveness if receiver is not None else None
        if liveness is not None:
            liveness.blocked = False
            # Time spent held back by our own queue is not silence on the link.
            liveness.last_inbound = asyncio.get_running_loop().time()
        if space is not None and not space.done():
            space.set_result(None)

    async def _dispatch(self) -> None:
        queue = self._queue
        assert queue is not None
        low = self._low
        try:
            while queue:
                item = queue.popleft()
                if self._space is not None and len(queue) <= low:
                    self._space_available()
                cls = item.__class__
                if cls is str or cls is bytes:
                    # The target of the moment (the router, or process() before it for on_message
                    # callbacks): read per frame, registrations may change in between.
                    target = self._target
                    if target is None:
                        continue
                    pending = target.dispatch(item)
                    if pending is None:
                        continue
                elif item is _RECONNECT:
                    # Here, in arrival order, and not when the socket opened.
                    self.router.mark_reconnect()
                    continue
                elif cls is _Secondary:
                    pending = self.router.dispatch_secondary(item.data)
                    if pending is None:
                        continue
                elif cls is _Release:
                    router = self.router
                    stream = item.stream
                    pending = router.end_overlap() if stream is None else router.end_move(stream)
                    if pending is None:
                        continue
                else:
                    pending = item  # the rest of a frame whose sync part ran inline
                await pending
        finally:
            self._dispatcher = None
            if self._space is not None:
                self._space_available()
            # Nothing waits any more: frames go straight to the handlers again.
            self._set_inline()

    async def stop(self) -> None:
        """Stop delivering: cancel the dispatcher, drop what is queued."""
        self.closed = True
        receiver = self._receiver
        if receiver is not None:
            receiver.inline = None
        dispatcher = self._dispatcher
        if dispatcher is not None:
            dispatcher.cancel()
            await asyncio.gather(dispatcher, return_exceptions=True)
        if self._queue is not None:
            self._queue.clear()
        space, self._space = self._space, None
        if space is not None and not space.done():
            space.cancel()

    @property
    def queued(self) -> int:
        """Frames and deferred work waiting for the dispatcher."""
        return len(self._queue or ())

    # -- delivery ------------------------------------------------------------------------------------

    def process(self, data: Data) -> Awaitable[None] | None:
        """Deliver one frame to the ``on_message`` callbacks, then the router; never raises.

        Sync work runs now. Returns ``None`` when everything ran, else an awaitable for the rest (an
        async callback or handler, and whatever follows it), which must complete before the next
        frame is delivered: that is what keeps frames in arrival order.
        """
        callbacks = self.message_callbacks
        if callbacks:
            for index, callback in enumerate(callbacks):
                try:
                    result = callback(data)
                except SYNC_HANDLER_FAILURES as exc:
                    self.handler_error(data, exc)
                    continue
                if result is not None and inspect.isawaitable(result):
                    return self._finish(data, result, index + 1)
        router = self._router  # made by route(), which sets _routing
        if router is not None and self._routing:
            return router.dispatch(data)
        return None

    async def _finish(self, data: Data, result: Awaitable[Any], start: int) -> None:
        """The rest of :meth:`process` after an async ``on_message`` callback."""
        try:
            await result
        except BaseException as exc:
            if not handler_failed(exc):
                raise
            self.handler_error(data, exc)
        for callback in self.message_callbacks[start:]:
            try:
                result = callback(data)
                if result is not None and inspect.isawaitable(result):
                    await result
            except BaseException as exc:
                if not handler_failed(exc):
                    raise
                self.handler_error(data, exc)
        if self._routing:
            pending = self.router.dispatch(data)
            if pending is not None:
                await pending

    def handler_error(self, item: object, exc: BaseException) -> None:
        """An ``on_message`` callback raised: count, log (rate-limited), report."""
        self._counters.handler_errors += 1
        suppressed = self._limiter.allow("handler")
        if suppressed is not None:
            self._log.error(
                "handler raised %s: %s%s",
                type(exc).__name__,
                self._redactor.text(str(exc)),
                LogLimiter.suffix(suppressed),
                exc_info=exc,
            )
        self._callbacks.report_error(item, exc)

    # -- the router's hooks --------------------------------------------------------------------------

    def routing_error(self, item: object, exc: BaseException) -> None:
        """The router's ``on_error``: an invalid frame or a typed handler's error."""
        # The router has counted it, and logged it if it was a handler's error.
        if not self._callbacks.error and (item.__class__ is str or item.__class__ is bytes):
            # An invalid frame nobody listens for: at least the log says so (rate-limited).
            self.router.log_invalid(item, exc)
        self._callbacks.report_error(item, exc)

    def unknown(self, frame: Data) -> None:
        """The router's ``on_unknown``."""
        if not self._callbacks.unknown:
            self.router.log_unknown(frame)
        self._callbacks.unknown_frame(frame)

    def gap(self, gap: SequenceGap) -> None:
        """The router's ``on_gap``."""
        if not self._callbacks.gap:
            suppressed = self._limiter.allow("gap")
            if suppressed is not None:
                self._log.warning(
                    "sequence %s in stream %r: expected %d, got %d%s%s",
                    gap.kind,
                    gap.stream,
                    gap.expected,
                    gap.received,
                    " (across a reconnect)" if gap.across_reconnect else "",
                    LogLimiter.suffix(suppressed),
                )
        self._callbacks.sequence_gap(gap)
