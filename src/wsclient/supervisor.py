"""The reconnect loop: connect, open, watch, judge, wait, again; and the one way a client ends.

:class:`Supervisor` is the client's only long-lived task. For each attempt it makes a
:class:`~wsclient.link.Link`, drives it through its phases (handshake, ``on_connect`` hooks, replay,
flush, open) and waits for its death; then the policy (:mod:`wsclient.policy`) judges the cause, the
state table (:mod:`wsclient.state`) moves, the events go out and the backoff is waited. It alone
decides which link is primary (the one the outbound part writes to and the inbound part listens to).

A client ends in one teardown path, whether the application closed it or the supervisor gave up:
the outbox is reported, pending requests fail, the writer and the dispatcher stop, async callbacks
get ``close_timeout`` to finish, and :meth:`wait_done` returns.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pydantic import BaseModel

from .budget import ConnectGate
from .callbacks import Callbacks
from .config import ClientConfig
from .errors import (
    ClientClosedError,
    ConnectionLostError,
    GaveUpError,
    HandshakeRejected,
    PeerNotReading,
    TransportClosed,
)
from .events import Closed, Connected, ConnectFailed, Disconnected, GaveUp, HeartbeatMissed, Reconnecting
from .inbound import Inbound, Overlapping
from .link import Link, LinkDown
from .logs import Log
from .outbound import Outbound
from .policy import Backoff, classify, describe
from .redact import Redactor
from .session import Outgoing, Session
from .state import (
    ConnectionState,
    LinkEvent,
    LinkPhase,
    StateEvent,
    StateMachine,
    attempt_ended,
    next_attempt,
)
from .transport import ConnectOptions, Connector

__all__ = ["Connection", "Supervisor"]


class _Rotated(Exception):
    """What an old link's ``done`` receives when a rotation handed over to ``successor``."""

    def __init__(self, successor: Link) -> None:
        super().__init__(f"replaced by connection {successor.id}")
        self.successor = successor


M = TypeVar("M", bound=BaseModel)
_S = ConnectionState
_E = StateEvent


class Connection:
    """The connection being opened, as seen by ``on_connect`` hooks.

    :meth:`send` writes straight to this connection, ahead of the replayed subscriptions and the
    outbox: that is where a login or auth message belongs.
    """

    __slots__ = ("_link", "_outbound", "id", "reconnect", "subprotocol")

    def __init__(self, link: Link, outbound: Outbound, reconnect: bool) -> None:
        self._link = link
        self._outbound = outbound
        self.id = link.id
        self.reconnect = reconnect
        self.subprotocol = link.transport.subprotocol if link.transport is not None else None

    async def send(self, message: Outgoing) -> None:
        """Send ``message`` on this connection now."""
        await self._outbound.send_on(self._link, self._outbound.encode(message))

    async def request(self, message: Any, *, timeout: float, model: type[M] | None = None) -> Any:
        """Like :meth:`Client.request`, sent on this connection now (e.g. a login awaiting its ack).

        ``client.request()`` cannot serve inside a hook: the client is not ``OPEN`` yet, so its
        frame would wait in the outbox until after the hooks, and the hook would wait for ever.
        """
        return await self._outbound.request(message, timeout, model, self.send)

    def __repr__(self) -> str:
        return f"<Connection id={self.id} reconnect={self.reconnect}>"


class Supervisor:
    """Keeps one client connected, and ends it."""

    __slots__ = (
        "_age_timer",
        "_callbacks",
        "_close_request",
        "_closing",
        "_config",
        "_connector",
        "_done",
        "_gate",
        "_inbound",
        "_link_ids",
        "_log",
        "_options",
        "_outbound",
        "_redactor",
        "_refresh",
        "_rotation",
        "_running",
        "_safe_url",
        "_session",
        "_task",
        "connect_hooks",
        "ending",
        "failure",
        "link",
        "sm",
    )

    def __init__(
        self,
        config: ClientConfig,
        connector: Connector,
        options: ConnectOptions,
        *,
        session: Session,
        callbacks: Callbacks,
        inbound: Inbound,
        outbound: Outbound,
        redactor: Redactor,
        safe_url: str,
        log: Log,
        sm: StateMachine,
        gate: ConnectGate | None = None,
        refresh: Callable[[ConnectOptions], Awaitable[ConnectOptions]] | None = None,
    ) -> None:
        self._config = config
        self._gate = gate
        self._refresh = refresh
        self._age_timer: asyncio.TimerHandle | None = None
        self._safe_url = safe_url
        self._connector = connector
        self._options = options
        self._session = session
        self._callbacks = callbacks
        self._inbound = inbound
        self._outbound = outbound
        self._redactor = redactor
        self._log = log
        self.sm = sm
        self.connect_hooks: tuple[Callable[[Connection], Any], ...] = ()
        self.link: Link | None = None
        self.ending: tuple[Link, ...] = ()  # a shared empty tuple: most clients never have one
        """Links being shut down, whose figures are not folded into the session's yet."""
        """The primary link, while there is one."""
        self.failure: GaveUpError | None = None
        self._link_ids = itertools.count(1)
        self._task: asyncio.Task[None] | None = None
        self._rotation: asyncio.Task[None] | None = None
        self._done: asyncio.Future[None] | None = None
        self._closing = False
        self._running = False
        self._close_request: tuple[int, str] = (1000, "")

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self, name: str) -> None:
        """Start connecting in the background (the client must be ``IDLE``)."""
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        # The transition happens here, not in the task's first step: a close() right after start()
        # (before the task has run) must find a started client and stop it.
        self.sm.handle(_E.START)
        self._task = loop.create_task(self._run(), name=name)

    @property
    def started(self) -> bool:
        """Whether :meth:`start` ran."""
        return self._done is not None

    async def wait_done(self) -> None:
        """Return once the client is ``CLOSED`` or ``FAILED`` and torn down."""
        assert self._done is not None
        await asyncio.shield(self._done)

    async def close(self, code: int, reason: str) -> None:
        """Close with ``(code, reason)`` and tear everything down. Idempotent, cancel-safe."""
        state = self.sm.state
        if state is _S.IDLE:
            self.sm.handle(_E.CLOSE)
            self._session.outbox.drop_all("client closed")
            self.sm.handle(_E.CLOSED)
            return
        if self._done is None:
            return  # closed before it was ever started: nothing runs
        if not self._closing and not state.is_terminal and state is not _S.CLOSING:
            self._closing = True
            self._close_request = (code, reason)
            self.sm.handle(_E.CLOSE)
            assert self._task is not None
            if self._running:
                self._task.cancel()
        await self.wait_done()

    async def _run(self) -> None:
        """The task: connect, run, judge, wait, repeat (a loop, never recursion); then the teardown.

        Written flat on purpose: while a link is open, this one coroutine waiting on ``link.done``
        is all the supervisor holds (a frame per nested coroutine would cost every idle client).
        """
        self._running = True
        closed = True
        try:
            # A close() before this first step finds _running unset and does not cancel the task
            # (a task cancelled before its first step never enters its body): it is seen here.
            if not self._closing:
                try:
                    config = self._config
                    loop = asyncio.get_running_loop()
                    # Made at the first failure, dropped once a link has stayed up reset_after: an
                    # idle, healthy client holds none.
                    backoff: Backoff | None = None
                    while True:
                        event = next_attempt(self.sm.state)
                        if event is not None:
                            self.sm.handle(event)
                        link = self._new_link()
                        cause = await self._open_link(link)
                        while cause is None:
                            try:
                                ended = await link.done
                            except asyncio.CancelledError:
                                if self._closing:
                                    await self._close_link(link)
                                await self._end_link(link)
                                raise
                            if isinstance(ended, _Rotated):
                                # Handed over on purpose: the rotation ends the old link itself.
                                link = ended.successor
                                continue
                            await self._end_link(link)
                            self._lost(ended)
                            cause = ended
                        opened_at = link.opened_at
                        if opened_at is not None and loop.time() - opened_at >= config.reconnect.reset_after:
                            backoff = None
                        if backoff is None:
                            backoff = Backoff(config.reconnect, clock=loop.time)
                        delay = self._judge(link, cause, backoff)
                        if delay is None:
                            closed = False
                            break
                        await asyncio.sleep(delay)
                except asyncio.CancelledError:
                    if not self._closing:
                        raise
                    current = asyncio.current_task()
                    if current is not None:
                        current.uncancel()
            if closed:
                self._session.outbox.drop_all("client closed")
                self.sm.handle(_E.CLOSED)
                code, reason = self._close_request
                self._callbacks.emit(Closed(code, reason))
            await self._teardown("client closed" if closed else "client failed")
        finally:
            if self._done is not None and not self._done.done():
                self._done.set_result(None)

    async def _teardown(self, why: str) -> None:
        """The one way out: what was never sent is reported, and nothing keeps running."""
        self._disarm_age()
        await self._stop_rotation()
        self._session.outbox.drop_all(why)
        self._session.requests.fail_all(ClientClosedError(f"no reply: {why}"))
        await self._outbound.stop_writer()
        await self._inbound.stop()
        # Async event callbacks get close_timeout to finish (one reacting to the final Closed or
        # GaveUp event can run), then they are cancelled.
        await self._callbacks.finish(self._config.close_timeout)

    # -- one attempt -----------------------------------------------------------------------------------

    async def _connect(self, link: Link) -> None:
        """One connect attempt: the connect gate's turn, the URL and headers of the moment, the
        handshake (redirects followed, within ``open_timeout``)."""
        if self._gate is not None:
            # After the backoff, never instead of it: the gate only adds to a wait.
            await self._gate.acquire()
        options = self._options
        if self._refresh is not None:
            options = await self._refresh(options)
        await link.connect(
            self._connector,
            options,
            max_redirects=self._config.max_redirects,
            redactor=self._redactor,
            log=self._log,
            proxy=self._config.proxy,
        )

    async def _open_link(self, link: Link) -> BaseException | None:
        """Handshake, then hooks → replay → flush → OPEN; ``None`` once open, else the cause."""
        try:
            await self._connect(link)
        except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
            await link.shutdown()
            raise
        except BaseException as exc:
            self._session.counters.connect_failures += 1
            await link.shutdown()
            return exc
        self.link = self._outbound.link = link
        receiver = self._inbound.attach(link.pong_watch, link.answer)
        self._inbound.activate(receiver, reconnect=link.id > 1)
        link.start(receiver)
        assert link.liveness is not None
        self._inbound.started(receiver, link.liveness)
        cause: BaseException
        try:
            await link.guard(self._open(link))
            return None
        except LinkDown as down:
            cause = down.cause
        except asyncio.CancelledError:
            if self._closing:
                await self._close_link(link)
            await self._end_link(link)
            raise
        except Exception as exc:
            # A bug in wsclient must end in a reconnect the logs explain, never in a dead supervisor.
            self._log.error("connection %d failed", link.id, exc_info=exc)
            cause = exc
        await self._end_link(link)
        self._lost(cause)
        return cause

    def _lost(self, cause: BaseException) -> None:
        """What a link's end means beyond the link: counted, and requests fail now."""
        if isinstance(cause, PeerNotReading):
            self._session.counters.write_stalls += 1
        # Replies can no longer come: fail the waiters now rather than at their timeout.
        self._session.requests.fail_all(
            ConnectionLostError(
                f"connection lost while waiting for a reply: {self._redactor.text(describe(cause))}"
            )
        )

    def _judge(self, link: Link, cause: BaseException, backoff: Backoff) -> float | None:
        """Classify ``cause``, move the state, tell the application; the delay, or None to give up."""
        config = self._config
        verdict = classify(cause, config.reconnect, self._log, self._redactor.text)
        reason = self._redactor.text(verdict.reason)
        opened = link.opened_at is not None
        # Counts the attempt, fatal or not; a delay the application's classifier chose replaces the
        # backoff's, within the same attempt budget.
        delay = backoff.next_delay(verdict.retry_after, exact=verdict.delay)
        if not verdict.retry:
            delay = None
        will_retry = delay is not None
        # Transition first, so that callbacks of the events below see the new state.
        self.sm.handle(attempt_ended(opened=opened, retry=will_retry))
        outcome = f"retrying in {delay:.3f}s" if delay is not None else "giving up"
        if opened:
            code = cause.code if isinstance(cause, TransportClosed) else None
            self._log.warning("connection %d lost: %s; %s", link.id, reason, outcome)
            self._callbacks.emit(Disconnected(link.id, code, reason, will_retry, delay))
        else:
            status = cause.status if isinstance(cause, HandshakeRejected) else None
            asked = verdict.retry_after
            if asked is not None and delay is not None and asked > delay and verdict.delay is None:
                outcome += f" (the server asked for {asked:g}s: capped by max_retry_after)"
            self._log.warning(
                "connect attempt %d to %s failed: %s; %s", backoff.failures, self._safe_url, reason, outcome
            )
            self._callbacks.emit(ConnectFailed(backoff.failures, reason, status, will_retry, delay, asked))
        if delay is None:
            self._give_up(cause, reason, backoff.failures, fatal=not verdict.retry)
            return None
        self._callbacks.emit(Reconnecting(backoff.failures + 1, delay))
        return delay

    async def _open(self, link: Link, *, switch: bool = True) -> None:
        """Hooks → subscription replay → outbox flush → OPEN (and, with ``switch``, the client too)."""
        counters = self._session.counters
        reconnect = counters.connects > 0
        connection = Connection(link, self._outbound, reconnect)
        try:
            hooks = self.connect_hooks
            if hooks:
                async with asyncio.timeout(self._config.open_timeout):
                    for hook in hooks:
                        result = hook(connection)
                        if inspect.isawaitable(result):
                            await result
            link.advance(LinkEvent.HOOKED)
            await self._outbound.replay(link, self._config.replay_interval)
            link.advance(LinkEvent.REPLAYED)
        except ConnectionLostError as exc:
            raise LinkDown(exc.__cause__ or exc) from None
        except Exception as exc:
            self._callbacks.report_error(connection, exc)
            raise LinkDown(exc) from None
        if switch:
            await self._outbound.flush(link)
        link.advance(LinkEvent.FLUSHED)
        if switch:
            self.sm.handle(_E.CONNECTED)
            self._connected(link, reconnect=reconnect)

    def _connected(self, link: Link, *, reconnect: bool) -> None:
        limits = self._config.limits
        if limits is not None and limits.max_connection_age is not None:
            # Spread over the last age_jitter of the connection's life, so that links opened
            # together (a pool's shards, a fleet after an outage) do not rotate together.
            age = limits.max_connection_age * (1.0 - limits.age_jitter * random.random())
            # From the handshake, where the venue starts counting (a rotation's new link has been
            # connected for a while when it takes over); the rotation must be over by then.
            now = asyncio.get_running_loop().time()
            born = link.connected_at if link.connected_at is not None else now
            due = born + age - limits.rotation_overlap - now
            self._arm_age(link, max(0.0, due))
        self._session.counters.connects += 1
        if link.proxy is not None:
            self._log.info("connection %d open to %s through proxy %s", link.id, link.url, link.proxy)
        else:
            self._log.info("connection %d open to %s", link.id, link.url)
        subprotocol = link.transport.subprotocol if link.transport is not None else None
        self._callbacks.emit(Connected(link.id, link.url, subprotocol, reconnect, link.proxy))

    async def _close_link(self, link: Link) -> None:
        """The polite close the application asked for, bounded by ``close_timeout``."""
        code, reason = self._close_request
        await link.stop_reading()
        try:
            await link.close(code, reason, self._config.close_timeout)
        except Exception as exc:  # a timeout included: the socket is aborted next, regardless
            self._log.debug("close handshake did not complete: %s", self._redactor.text(describe(exc)))

    async def _end_link(self, link: Link) -> None:
        """Stop an ended link and fold its figures into the session's."""
        # Counted in the client's figures while it shuts down: a snapshot taken meanwhile would
        # otherwise miss what it received.
        self.ending = (*self.ending, link)
        try:
            if self.link is link:
                self.link = self._outbound.link = None
                self._disarm_age()
                await self._outbound.stop_writer()
                await self._stop_rotation()
            await link.shutdown()
        finally:
            self.ending = tuple(other for other in self.ending if other is not link)
            self._end_figures(link)

    def _end_figures(self, link: Link) -> None:
        """Fold an ended link's figures into the session's (once)."""
        liveness = link.liveness
        if liveness is None:
            return
        link.liveness = None
        session = self._session
        # While a link runs, the transport counts into its liveness (one count per frame on the hot
        # path, not two); the totals take them now.
        session.counters.ping_replies += link.ping_replies
        link.ping_replies = 0
        session.counters.messages_in += liveness.frames_in
        session.counters.bytes_in += liveness.bytes_in
        if liveness.frames_in:
            session.last_inbound = liveness.last_inbound
        if liveness.last_rtt is not None:
            session.last_rtt = (liveness.last_rtt, liveness.last_rtt_at)

    def _give_up(self, cause: BaseException, reason: str, attempts: int, *, fatal: bool) -> None:
        self.failure = GaveUpError(cause, attempts, fatal=fatal, reason=reason)
        self._log.error("%s", self.failure)
        self._callbacks.emit(GaveUp(attempts, reason, fatal))
        # Nothing will ever send these; say so rather than let them vanish.
        self._session.outbox.drop_all("client failed")

    # -- make-before-break ---------------------------------------------------------------------------

    def hooked_link(self) -> int | None:
        """The id of the live connection that has read its ``on_connect`` hooks already (a hook
        registered now first runs at the next connect), else None."""
        link = self.link
        if link is None or link.phase in (LinkPhase.HANDSHAKE, LinkPhase.CLOSING):
            return None
        return link.id

    def rotate(self, overlap: float | None = None, *, age: bool = False) -> bool:
        """Replace the open primary link by a new one, make-before-break; False if not possible now.

        The new link is opened beside the primary one (handshake, hooks, replay), delivering nothing;
        once it is open it becomes primary (a ``Connected`` event), and the old one is closed
        politely. The overlap is bounded: a new link not open within ``overlap`` seconds (default
        ``open_timeout``) is abandoned and the old one stays; the old one is gone at most
        ``close_timeout`` after the switch. Frames the old link reads after the switch are not
        delivered.
        """
        link = self.link
        if link is None or link.phase is not LinkPhase.OPEN or self._rotation is not None or self._closing:
            return False
        limit = overlap if overlap is not None else self._config.open_timeout
        self._rotation = asyncio.get_running_loop().create_task(
            self._rotate(link, limit, age), name=f"wsclient-rotate-{link.id}"
        )
        return True

    async def _rotate(self, old: Link, limit: float, age: bool = False) -> None:
        config = self._config
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        new = self._new_link()
        receiver = self._inbound.attach(new.pong_watch, new.answer)
        overlap: Overlapping | None = None
        try:
            async with asyncio.timeout(limit):
                await self._connect(new)
                # With a de-duplicator both links deliver from here on, each message once.
                overlap = self._inbound.begin_overlap(receiver)
                new.start(receiver)
                assert new.liveness is not None
                self._inbound.started(receiver, new.liveness)
                self._outbound.opening = new
                await new.guard(self._open(new, switch=False))
                await new.guard(self._outbound.flush_opening(new))
                # Whatever the outbox holds goes out on the old link first, in order.
                await self._outbound.idle()
            if overlap is not None:
                # Until the new link has delivered every stream the old one delivered meanwhile
                # (its subscriptions took effect), within what is left of the bound less a share
                # for closing the old link: an age rotation must be over before the venue's cut.
                left = deadline - limit / 4 - loop.time()
                if left > 0:
                    await asyncio.wait(
                        (overlap.ready, old.done), timeout=left, return_when=asyncio.FIRST_COMPLETED
                    )
                if not overlap.ready.done():
                    self._log.info(
                        "connection %d: switching to %d at the overlap's bound, %d stream(s) not seen "
                        "on it yet",
                        old.id,
                        new.id,
                        self._inbound.router.overlap.missing if self._inbound.router.overlap else 0,
                    )
        except (Exception, asyncio.CancelledError) as exc:
            self._outbound.opening = None
            self._outbound.adopt_opening(keep=False)
            await new.shutdown()
            self._end_figures(new)
            if overlap is not None:
                self._inbound.end_overlap(overlap)
            if isinstance(exc, asyncio.CancelledError):
                raise
            self._log.warning(
                "rotation of connection %d abandoned: %s", old.id, self._redactor.text(describe(exc))
            )
            limits = config.limits
            if age and limits is not None and self.link is old:
                # Still before the venue's cut (the rotation started an overlap ahead of it): try
                # again once, half way to it.
                assert limits.max_connection_age is not None and old.opened_at is not None
                left = old.opened_at + limits.max_connection_age - loop.time()
                if left > 0:
                    self._arm_age(old, left / 2)
            return
        finally:
            self._rotation = None
            self._outbound.opening = None
        if self.link is not old or old.done.done() or self._closing:
            # The old link died (or the client closes) meanwhile: the reconnect loop takes over.
            await new.shutdown()
            self._end_figures(new)
            if overlap is not None:
                self._inbound.end_overlap(overlap)
            return
        # The switch: from here on the new link is the primary one.
        self.link = self._outbound.link = new
        self._outbound.adopt_opening()
        self._inbound.activate(receiver, reconnect=True)
        self._session.counters.rotations += 1
        self._connected(new, reconnect=True)
        self._log.info("connection %d replaced by %d", old.id, new.id)
        old.done.set_result(_Rotated(new))
        try:
            if overlap is None:
                await old.stop_reading()
            # With a de-duplicator the old link is read until its close completes: what it still
            # had in flight is delivered (copies dropped), so the hand-over loses nothing.
            close_timeout = config.close_timeout
            if age:
                close_timeout = max(0.05, min(close_timeout, deadline - loop.time()))
            await old.close(1000, "", close_timeout)
        except Exception as exc:  # a timeout included: the socket is aborted next, regardless
            self._log.debug("close handshake did not complete: %s", self._redactor.text(describe(exc)))
        finally:
            await old.shutdown()
            self._end_figures(old)
            if overlap is not None:
                self._inbound.end_overlap(overlap)

    def _arm_age(self, link: Link, delay: float) -> None:
        if self._age_timer is not None:
            self._age_timer.cancel()
        self._age_timer = asyncio.get_running_loop().call_later(delay, self._age_due, link)

    def _age_due(self, link: Link) -> None:
        self._age_timer = None
        limits = self._config.limits
        if self.link is not link or limits is None:
            return
        if self.rotate(limits.rotation_overlap, age=True):
            self._log.info("connection %d nears its maximum age: replacing it", link.id)
        elif self._rotation is not None:
            # Another rotation runs; if it is abandoned, this link still needs replacing.
            self._arm_age(link, limits.rotation_overlap)

    def _disarm_age(self) -> None:
        if self._age_timer is not None:
            self._age_timer.cancel()
            self._age_timer = None

    async def _stop_rotation(self) -> None:
        rotation, self._rotation = self._rotation, None
        if rotation is not None and rotation is not asyncio.current_task():
            rotation.cancel()
            await asyncio.gather(rotation, return_exceptions=True)

    def _new_link(self) -> Link:
        config = self._config
        return Link(
            next(self._link_ids),
            config,
            on_missed=self._missed,
            codec=config.codec,
            write_now=self._outbound.write_now,
            on_rtt=self._rtt,
        )

    def _rtt(self, seconds: float) -> None:
        # Read per pong, not per link: a recorder attached to a running client sees the next one.
        recorder = self._inbound.recorder
        if recorder is not None:
            recorder.rtt(seconds)

    def _missed(self, link_id: int, kind: str, waited: float, fatal: bool) -> None:
        self._session.counters.heartbeat_misses += 1
        self._callbacks.emit(HeartbeatMissed(link_id, kind, waited, fatal))
