"""One live connection: its transport, its liveness and its phase, and the timers of its heartbeat.

A :class:`Link` is made for every connect attempt. The supervisor drives its phases (handshake → hooks
→ replay → flush → open → closing, :data:`~wsclient.state.LINK_TRANSITIONS`); the link itself runs
only what a connection needs on its own:

* one task, the reader, pumping the transport into the inbound receiver;
* timers, no tasks, for the heartbeat and the silence watchdog (an idle asyncio task costs ~2.3 KiB,
  a timer handle a tenth of that). The rules they apply are :class:`~wsclient.heartbeat.Liveness`'s;
* :attr:`Link.done`, a future that receives the cause of death once: the reader's end, a dead-link
  verdict, a failed write reported by the outbound part, or :meth:`Link.fail` from anyone else.

Pings are written at once, never behind a full send buffer (``Transport.ping_nowait``), and a pong
that has arrived is a pong even if its timer fired first: before a verdict, the loop gets a turn to
read what the kernel holds (two ``call_soon`` hops), and a timer that fired late because the loop was
blocked is extended by its lag.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

from pydantic_core import from_json

from .budget import LinkBudgets, SlidingWindow
from .codec import Codec, Data
from .codec import encode as encode_frame
from .config import ClientConfig, PingReply
from .errors import LinkDead, TransportClosed
from .heartbeat import Health, Liveness, PongWatch, ping_payload
from .logs import Log
from .redact import Redactor, redact_url
from .state import LinkEvent, LinkPhase, LinkPhaseMachine
from .transport import ConnectOptions, Connector, Sink, Transport
from .transport.redirect import open_connection

__all__ = ["Link", "LinkDown"]

T = TypeVar("T")

#: ``on_missed(link_id, kind, waited, fatal)``: a pong or the feed was late (``kind`` "pong"/"silence").
MissedHook = Callable[[int, str, float, bool], None]


class LinkDown(Exception):
    """The link died while something was waiting on it; ``cause`` says why."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class Link:
    """One connection, from its handshake to its end."""

    __slots__ = (
        "_extended",
        "_frames_ref",
        "_judged_at",
        "_loop",
        "_on_missed",
        "_on_rtt",
        "_phase",
        "_ping_frame",
        "_ping_timer",
        "_pong",
        "_pong_timer",
        "_reader",
        "_sent_at",
        "_settings",
        "_watch_timer",
        "_wbuf_ref",
        "_write_now",
        "answer",
        "budgets",
        "connected_at",
        "done",
        "id",
        "liveness",
        "opened_at",
        "ping_replies",
        "pong_watch",
        "proxy",
        "redactor",
        "transport",
        "url",
    )

    def __init__(
        self,
        link_id: int,
        config: ClientConfig,
        *,
        on_missed: MissedHook,
        codec: Codec | None = None,
        write_now: Callable[[Transport, Data], None] | None = None,
        on_rtt: Callable[[float], None] | None = None,
    ) -> None:
        loop = asyncio.get_running_loop()
        self._loop = loop
        self.id = link_id
        self._settings = config.heartbeat
        self._on_missed = on_missed
        self._on_rtt = on_rtt
        # The outbound part's exit for frames that must not wait (the application ping).
        self._write_now = write_now if write_now is not None else _write_now
        self._phase = LinkPhaseMachine()
        self.transport: Transport | None = None
        self.url = ""
        """The URL connected to (after redirects), credentials masked."""
        self.proxy: str | None = None
        """The proxy the connection goes through, its password masked; None: direct."""
        self.redactor: Redactor | None = None
        self.liveness: Liveness | None = None
        self.opened_at: float | None = None
        """``loop.time()`` when the link became OPEN."""
        self.connected_at: float | None = None
        """``loop.time()`` when its handshake completed (where a venue starts counting its age)."""
        self.done: asyncio.Future[BaseException] = loop.create_future()
        """Resolved once, with the cause of the link's death."""
        hb = config.heartbeat
        self.pong_watch: PongWatch | None = None
        self._ping_frame: Data | None = None
        if hb.mode == "message":
            assert hb.is_pong is not None
            self.pong_watch = PongWatch(hb.is_pong, loop.time)
            self._ping_frame = encode_frame(hb.message, codec)
        # The venue's budgets are per connection: a link of its own has budgets of its own.
        limits = config.limits
        self.budgets: LinkBudgets | None = None
        """What the venue lets this connection send (None: no limits configured)."""
        if limits is not None:
            margin = limits.margin
            self.budgets = LinkBudgets(
                None
                if limits.messages_per_second is None
                else SlidingWindow(limits.messages_per_second, limits.message_window, margin=margin),
                None
                if limits.subscribes_per_hour is None
                else SlidingWindow(limits.subscribes_per_hour, 3600.0, margin=margin),
                reserve=limits.reserve,
                count_pings=limits.count_control_frames,
            )
        self.answer: Callable[[Data], bool] | None = None
        """Answers the venue's application pings (``ClientConfig.ping_replies``); True: a ping
        answered, not to be delivered. None without rules."""
        self.ping_replies = 0
        """Application pings answered on this link."""
        if config.ping_replies:
            self.answer = _Answerer(self, config.ping_replies, codec).answer
        self._reader: asyncio.Task[Any] | None = None
        self._ping_timer: asyncio.TimerHandle | None = None
        self._pong_timer: asyncio.TimerHandle | None = None
        self._watch_timer: asyncio.TimerHandle | None = None
        self._pong: asyncio.Future[float] | None = None
        self._sent_at = 0.0
        self._judged_at = 0.0
        self._frames_ref = 0
        self._wbuf_ref = 0
        self._extended = False

    # -- phase -------------------------------------------------------------------------------------

    @property
    def phase(self) -> LinkPhase:
        """Where the link is (:class:`~wsclient.state.LinkPhase`)."""
        return self._phase.state

    def advance(self, event: LinkEvent) -> LinkPhase:
        """Apply ``event`` to the link's phase (an illegal one raises)."""
        phase = self._phase.handle(event)
        if phase is LinkPhase.OPEN:
            self.opened_at = self._loop.time()
        return phase

    # -- life --------------------------------------------------------------------------------------

    async def connect(
        self,
        connector: Connector,
        options: ConnectOptions,
        *,
        max_redirects: int,
        redactor: Redactor,
        log: Log,
        proxy: str | Literal[False] | None = False,
    ) -> None:
        """The handshake (through ``proxy``, redirects followed, within ``open_timeout``); raises what
        failed it."""
        opened = await open_connection(
            connector, options, max_redirects=max_redirects, redactor=redactor, log=log, proxy=proxy
        )
        if self.budgets is not None:  # only a venue's limits need it (the age rotation)
            self.connected_at = self._loop.time()
        self.transport = opened.transport
        self.redactor = opened.redactor
        self.url = opened.redactor.text(redact_url(opened.url))
        self.proxy = opened.proxy
        self.advance(LinkEvent.OPENED)

    def start(self, sink: Sink) -> None:
        """Start reading into ``sink`` and arm the heartbeat's and the watchdog's timers."""
        transport = self.transport
        assert transport is not None
        now = self._loop.time()
        liveness = self.liveness = Liveness(self._settings, now)
        # The pump itself is the task (no wrapper coroutine: its frame would cost every idle link).
        reader = self._reader = self._loop.create_task(
            transport.pump(sink, liveness), name=f"wsclient-reader-{self.id}"
        )
        reader.add_done_callback(self._read_ended)
        if self._settings.mode != "off":
            self._arm_ping()
        if self._settings.receive_timeout is not None:
            self._watch_at(now + self._settings.receive_timeout)

    def _read_ended(self, reader: asyncio.Task[Any]) -> None:
        if reader.cancelled():
            return
        # TransportClosed, or a backend bug: either way the link is over.
        exc = reader.exception()
        self.fail(exc if exc is not None else RuntimeError("the transport's pump returned"))

    def fail(self, cause: BaseException) -> None:
        """Record the cause of the link's death (the first one wins) and stop its timers."""
        if not self.done.done():
            self.done.set_result(cause)
        self._stop_timers()

    async def guard(self, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` unless the link dies first: then cancel it and raise :class:`LinkDown`."""
        task = self._loop.create_task(work)
        try:
            await asyncio.wait((task, self.done), return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise
        if task.done():
            return task.result()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        raise LinkDown(self.done.result())

    async def close(self, code: int, reason: str, timeout: float) -> None:
        """The closing handshake, bounded by ``timeout`` (the socket is aborted after, regardless)."""
        transport = self.transport
        if self._phase.can(LinkEvent.CLOSE):
            self.advance(LinkEvent.CLOSE)
        if transport is None:
            return
        async with asyncio.timeout(timeout):
            await transport.close(code, reason)

    async def stop_reading(self) -> None:
        """Stop the reader (before a polite close: nothing is delivered once close() began)."""
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def shutdown(self) -> None:
        """Stop everything the link runs: timers, the reader, the socket (aborted). Idempotent."""
        self._stop_timers()
        if self.pong_watch is not None:
            self.pong_watch.disarm()
        reader, self._reader = self._reader, None
        if reader is not None and not reader.done():
            reader.cancel()
        if self.transport is not None:
            self.transport.abort()
        if reader is not None:
            await asyncio.gather(reader, return_exceptions=True)
        # A link being closed on purpose ends CLOSED, whatever became of its handshake; any other
        # end is a loss.
        if self.phase is LinkPhase.CLOSING:
            self.advance(LinkEvent.CLOSED)
        elif self._phase.can(LinkEvent.LOST):
            self.advance(LinkEvent.LOST)

    def _stop_timers(self) -> None:
        for timer in (self._ping_timer, self._pong_timer, self._watch_timer):
            if timer is not None:
                timer.cancel()
        self._ping_timer = self._pong_timer = self._watch_timer = None
        self._pong = None

    # -- heartbeat ---------------------------------------------------------------------------------

    def _arm_ping(self) -> None:
        assert self.liveness is not None
        self._ping_timer = self._loop.call_at(self.liveness.next_ping_at(), self._ping_due)

    def _ping_due(self) -> None:
        self._ping_timer = None
        liveness, transport = self.liveness, self.transport
        assert liveness is not None and transport is not None
        now = self._loop.time()
        if liveness.next_ping_at() > now:
            # In "idle" mode, traffic since the timer was set moved the deadline.
            self._arm_ping()
            return
        self._frames_ref = liveness.frames_in
        self._wbuf_ref = transport.write_buffer_size()
        liveness.last_ping = self._sent_at = now
        try:
            if self.pong_watch is not None:
                pong = self.pong_watch.arm()
                assert self._ping_frame is not None
                self._write_now(transport, self._ping_frame)
            else:
                pong = transport.ping_nowait(ping_payload())
        except TransportClosed:
            return  # closing or closed: the reader reports how it ended (the close timer bounds it)
        except Exception as exc:  # a backend bug: the link cannot be watched, so it is over
            self.fail(exc)
            return
        budgets = self.budgets
        if budgets is not None and budgets.count_pings and budgets.messages is not None:
            # Within the slots data leaves free: the ping never waits for the budget.
            budgets.messages.record(now)
        self._pong = pong
        pong.add_done_callback(self._pong_arrived)
        self._extended = False
        self._judged_at = now + self._settings.timeout
        self._pong_timer = self._loop.call_at(self._judged_at, self._pong_overdue)

    def _pong_arrived(self, pong: asyncio.Future[float]) -> None:
        if pong is not self._pong or pong.cancelled():
            return
        exc = pong.exception()
        if exc is not None:
            self.fail(exc)
            return
        liveness = self.liveness
        assert liveness is not None
        rtt = pong.result()
        liveness.measured(rtt, self._loop.time())
        if self._on_rtt is not None:
            self._on_rtt(rtt)
        self._pong = None
        if self._pong_timer is not None:
            self._pong_timer.cancel()
            self._pong_timer = None
        self._arm_ping()

    def _pong_overdue(self) -> None:
        # Two hops: the first runs before this turn's I/O callbacks, the second after them, so a
        # pong the kernel already holds is read (and resolves the future) before the verdict.
        self._pong_timer = None
        self._loop.call_soon(self._loop.call_soon, self._judge_pong)

    def _judge_pong(self) -> None:
        pong = self._pong
        if pong is None or pong.done():
            return  # answered: _pong_arrived has run or is about to
        liveness, transport = self.liveness, self.transport
        assert liveness is not None and transport is not None
        timeout = self._settings.timeout
        now = self._loop.time()
        wbuf = transport.write_buffer_size()
        verdict = liveness.pong_overdue(
            self._frames_ref,
            self._wbuf_ref,
            wbuf,
            transport.inbound_pending(),
            0.0 if self._extended else now - self._judged_at,
            send_blocked=transport.send_blocked(),
        )
        if verdict is Health.EXTEND:
            # The loop was blocked near the deadline: the lost time again, at most one timeout.
            self._extended = True
            grace = min(now - self._judged_at, timeout)
            self._pong_timer = self._loop.call_later(grace, self._pong_overdue)
            return
        waited = now - self._sent_at
        dead = verdict is Health.DEAD
        self._on_missed(self.id, "pong", waited, dead)
        if dead:
            self.fail(LinkDead("pong", waited))
            return
        # Forgiven: this ping's pong is still owed. Judge it again after another timeout, from the
        # facts as they are then.
        self._extended = False
        self._frames_ref, self._wbuf_ref = liveness.frames_in, wbuf
        self._judged_at = now + timeout
        self._pong_timer = self._loop.call_at(self._judged_at, self._pong_overdue)

    # -- silence watchdog --------------------------------------------------------------------------

    def _watch_at(self, when: float) -> None:
        self._watch_timer = self._loop.call_at(when, self._watch_due)

    def _watch_due(self) -> None:
        self._watch_timer = None
        liveness = self.liveness
        assert liveness is not None
        verdict, again = liveness.silence(self._loop.time())
        if verdict is Health.DEAD:
            self._loop.call_soon(self._loop.call_soon, self._judge_silence)
        else:
            self._watch_at(again)

    def _judge_silence(self) -> None:
        liveness, transport = self.liveness, self.transport
        if liveness is None or transport is None or self.done.done():
            return
        now = self._loop.time()
        verdict, again = liveness.silence(now, transport.inbound_pending())
        if verdict is not Health.DEAD:
            self._watch_at(again)
            return
        waited = now - liveness.last_inbound
        self._on_missed(self.id, "silence", waited, True)
        self.fail(LinkDead("silence", waited))

    def __repr__(self) -> str:
        return f"<Link #{self.id} {self.phase.value} {self.url}>"


class _Answerer:
    """The ping-reply rules of one link, applied to each frame as it is read."""

    __slots__ = ("_codec", "_link", "_loads", "_rules")

    def __init__(self, link: Link, rules: tuple[PingReply, ...], codec: Codec | None) -> None:
        self._link = link
        self._rules = rules
        self._codec = codec
        self._loads: Callable[[Data], Any] = codec.loads if codec is not None else from_json

    def answer(self, data: Data) -> bool:
        decoded: Any = _UNDECODED
        for rule in self._rules:
            hint = rule.hint
            if hint is not None:
                if isinstance(data, str):
                    if hint not in data:
                        continue
                elif self._codec is None and hint.encode() not in data:
                    continue
            if decoded is _UNDECODED:
                try:
                    decoded = self._loads(data)
                except Exception:
                    return False  # not a ping; the router reports what it cannot read
            try:
                if not rule.match(decoded):
                    continue
                frame = encode_frame(rule.reply(decoded), self._codec)
            except Exception as exc:  # the application's rule: reported, the frame goes on
                _log.warning("ping reply rule failed: %s: %s", type(exc).__name__, exc)
                continue
            self._send(frame)
            return not rule.deliver
        return False

    def _send(self, frame: Data) -> None:
        link = self._link
        transport = link.transport
        if transport is None:
            return
        try:
            link._write_now(transport, frame)
        except TransportClosed:
            return  # closing: the reader reports how it ended
        link.ping_replies += 1
        budgets = link.budgets
        if budgets is not None and budgets.count_pings and budgets.messages is not None:
            # Like the heartbeat's pings: within the reserved slots, never waiting.
            budgets.messages.record(link._loop.time())


_UNDECODED: Any = object()
_log = logging.getLogger("wsclient")


def _write_now(transport: Transport, data: Data) -> None:
    transport.send_nowait(data)
