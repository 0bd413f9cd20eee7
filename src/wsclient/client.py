"""The :class:`Client` facade and the supervisor that keeps its connection alive.

Shape of a client's life::

    supervisor (one task, a loop)          dispatcher (one task, client lifetime)
      connect ──────────────┐                 inbound deque → on_message callbacks
      connection task group │
        reader   ───────────┼── frames ──►  (batched hand-over: a wake-up only when idle)
        pinger / watchdog   │
        writer (outbox)     │
        body: hooks → replay → flush → OPEN → wait
      first failure cancels the group, aborts the socket, asks policy, sleeps the backoff, loops

Every state change goes through :class:`~wsclient.state.StateMachine`; the policy, the backoff and the
liveness rules are plain objects from :mod:`wsclient.policy` and :mod:`wsclient.heartbeat`.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

from pydantic import BaseModel

from .codec import encode as encode_frame
from .config import ClientConfig, validate_url
from .errors import (
    ClientClosedError,
    ConfigError,
    ConnectionLostError,
    GaveUpError,
    HandshakeRejected,
    LinkDead,
    OutboxFullError,
    PeerNotReading,
    RequestTimeout,
    TransportClosed,
)
from .events import (
    ClientEvent,
    ClientStats,
    Closed,
    Connected,
    ConnectFailed,
    Disconnected,
    GaveUp,
    HeartbeatMissed,
    MessageDropped,
    Reconnecting,
)
from .heartbeat import Liveness, PongWatch, ping_payload, run_pinger, run_watchdog
from .logs import LogLimiter
from .policy import Backoff, classify, describe
from .redact import Redactor, connection_secrets, redact_url
from .routing import SYNC_HANDLER_FAILURES, RequestTracker, Router, SequenceGap, handler_failed
from .state import ConnectionState, Event, StateMachine
from .transport import ConnectOptions, Connector, InlineTarget, Transport, get_connector
from .transport.redirect import open_connection

__all__ = ["Client", "Connection", "Subscription"]

logger = logging.getLogger("wsclient")
# A library must not print through logging's last-resort handler; the application configures output.
logger.addHandler(logging.NullHandler())

Data = str | bytes
Outgoing = Any  # dict | list | pydantic model | str | bytes
F = TypeVar("F", bound=Callable[..., Any])
M = TypeVar("M", bound=BaseModel)

_S = ConnectionState
_E = Event
_client_ids = itertools.count(1)


class _ReconnectMark:
    """Put in the inbound queue where one connection's frames end and the next one's begin."""

    __slots__ = ()


_RECONNECT = _ReconnectMark()


class _Callbacks:
    """The inline target of a client with ``on_message`` callbacks: ``Client._process``."""

    __slots__ = ("dispatch",)

    def __init__(self, dispatch: Callable[[Data], Awaitable[None] | None]) -> None:
        self.dispatch = dispatch


class _FrameSink:
    """The reader's hand-over (a :class:`~wsclient.transport.base.Sink`), one per client.

    While the dispatcher is parked on an empty queue, :attr:`inline` is the client's target and the
    transport delivers to it directly: sync handlers block the event loop wherever they run, so
    running them from the reader changes neither order nor liveness, and saves the queue hop (and
    picows' pause/hold cycle under load). What must be awaited comes back through :meth:`defer` and
    goes to the dispatcher, so the reader never waits on application code. Otherwise frames are
    queued for the dispatcher through :meth:`__call__`.
    """

    __slots__ = ("_client", "inline")

    def __init__(self, client: Client) -> None:
        self._client = client
        self.inline: InlineTarget | None = None

    def __call__(self, data: Data) -> Awaitable[None] | None:
        client = self._client
        watch = client._pong_watch
        if watch is not None and watch.waiting and watch.check(data):
            return None
        target = client._target
        if client._dispatch_waiter is not None and target is not None:
            pending = target.dispatch(data)
            if pending is not None:
                self.defer(pending)
            return None
        inbox = client._queue()
        inbox.append(data)
        if len(inbox) >= client._inbox_limit:
            return client._inbox_full()
        return None

    def defer(self, pending: Awaitable[None]) -> None:
        client = self._client
        client._queue().append(_Deferred(pending))
        client._wake_dispatcher()


class _Deferred:
    """Put in the inbound queue for a frame whose sync part ran inline: the rest, to be awaited."""

    __slots__ = ("pending",)

    def __init__(self, pending: Awaitable[None]) -> None:
        self.pending = pending


class _LinkDown(Exception):
    """Raised inside a connection's task group: the link is gone, ``cause`` says why."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class Connection:
    """The connection being opened, as seen by ``on_connect`` hooks.

    :meth:`send` writes straight to this connection, ahead of the replayed subscriptions and the
    outbox: that is where a login or auth message belongs.
    """

    __slots__ = ("_client", "_transport", "id", "reconnect", "subprotocol")

    def __init__(self, client: Client, transport: Transport, conn_id: int, reconnect: bool) -> None:
        self._client = client
        self._transport = transport
        self.id = conn_id
        self.reconnect = reconnect
        self.subprotocol = transport.subprotocol

    async def send(self, message: Outgoing) -> None:
        """Send ``message`` on this connection now."""
        await self._client._send_on(self._transport, self._client._encode(message))

    async def request(self, message: Any, *, timeout: float, model: type[M] | None = None) -> Any:
        """Like :meth:`Client.request`, sent on this connection now (e.g. a login awaiting its ack).

        ``client.request()`` cannot serve inside a hook: the client is not ``OPEN`` yet, so its
        frame would wait in the outbox until after the hooks, and the hook would wait for ever.
        """
        client = self._client
        return await client._request(message, timeout, model, self.send)

    def __repr__(self) -> str:
        return f"<Connection id={self.id} reconnect={self.reconnect}>"


class Subscription:
    """A remembered subscription, replayed in order after every reconnect.

    ``cancel()`` stops the replay and, if an unsubscribe message was given and the client is open,
    sends it.
    """

    __slots__ = ("_client", "_sent_on", "active", "message", "unsubscribe")

    def __init__(self, client: Client, message: Outgoing, unsubscribe: Outgoing | None) -> None:
        self._client = client
        self.message = message
        self.unsubscribe = unsubscribe
        self.active = True
        # The connection the subscribe message went out on (or is queued for); 0: none yet.
        self._sent_on = 0

    async def cancel(self) -> None:
        """Forget this subscription; send its unsubscribe message if the subscribe went out on the
        current connection (while open, or already replayed on a connection being opened, in which
        case it follows the replay). Idempotent."""
        if not self.active:
            return
        self.active = False
        client = self._client
        client._subscriptions.remove(self)
        if self.unsubscribe is not None and client._subscribed_now(self._sent_on):
            await client.send(self.unsubscribe)

    def __repr__(self) -> str:
        return f"<Subscription active={self.active}>"


class _Counters:
    __slots__ = (
        "bytes_in",
        "bytes_out",
        "connect_failures",
        "connects",
        "dropped_in",
        "dropped_out",
        "handler_errors",
        "heartbeat_misses",
        "messages_in",  # and bytes_in: of ended connections (the current one's are in its Liveness)
        "messages_out",
        "write_stalls",
    )

    def __init__(self) -> None:
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
        self.write_stalls = 0


class Client:
    """A WebSocket client that stays connected.

    Create it with the URL and a :class:`~wsclient.ClientConfig`, register callbacks and
    subscriptions, then ``async with client:`` (or ``await client.start()`` … ``await client.close()``).
    The client connects in the background, keeps the link alive with its heartbeat, reconnects with
    bounded backoff when the link dies, replays subscriptions, and delivers every inbound frame, in
    order, to ``on_message`` callbacks and typed handlers without ever making the reader wait on them:
    sync handlers run as soon as a frame is read when nothing is queued ahead of it, async ones on a
    dispatcher task, with the frames read meanwhile queued behind them.

    ``headers`` are sent with every handshake; credentials in them, in the URL (password, token-like
    query values and path segments) and the strings in ``secrets`` never appear in logs, reprs, events
    or exception messages, nor in what the server sends back (close reasons, handshake responses).
    """

    # Slots: a feeder may hold hundreds of idle clients, and an instance dict costs ~1.6 KiB each.
    __slots__ = (
        "__weakref__",
        "_callback_tasks",
        "_close_request",
        "_close_task",
        "_codec",
        "_config",
        "_conn_id",
        "_conn_ids",
        "_connect_hooks",
        "_connector",
        "_counters",
        "_dispatch_waiter",
        "_dispatcher",
        "_done",
        "_error_callbacks",
        "_event_callbacks",
        "_failure",
        "_flushing",
        "_gap_callbacks",
        "_headers",
        "_id",
        "_inbox",
        "_inbox_limit",
        "_inbox_low",
        "_last_inbound",
        "_last_rtt",
        "_liveness",
        "_log",
        "_log_limiter",
        "_message_callbacks",
        "_opened_at",
        "_outbox",
        "_pong_watch",
        "_redactor",
        "_replay_done",
        "_requests",
        "_router",
        "_routing",
        "_safe_url",
        "_sink",
        "_sm",
        "_space_waiter",
        "_state_waiters",
        "_subscriptions",
        "_supervisor",
        "_target",
        "_transport",
        "_unknown_callbacks",
        "_url",
        "_writer_waiter",
    )

    def __init__(
        self,
        url: str,
        *,
        config: ClientConfig | None = None,
        headers: Mapping[str, str] | None = None,
        secrets: Iterable[str] = (),
    ) -> None:
        extra = tuple(secrets)
        if not all(isinstance(secret, str) for secret in extra):
            raise ConfigError("secrets must be strings (tokens to mask in logs and events)")
        self._url = validate_url(url)
        self._headers = dict(headers or {})
        self._redactor = Redactor((*connection_secrets(url, self._headers), *extra))
        self._safe_url = self._redactor.text(redact_url(url))
        self._config = config if config is not None else ClientConfig()
        self._connector: Connector = get_connector(self._config.transport)
        self._id = next(_client_ids)
        self._log = logging.LoggerAdapter(logger, {"wsclient_client": self._id})
        self._sm = StateMachine(listener=self._on_transition)
        self._counters = _Counters()

        self._message_callbacks: list[Callable[[Data], Any]] = []
        self._event_callbacks: list[Callable[[ClientEvent], Any]] = []
        self._error_callbacks: list[Callable[[object, BaseException], Any]] = []
        self._connect_hooks: list[Callable[[Connection], Any]] = []
        self._subscriptions: list[Subscription] = []
        self._unknown_callbacks: list[Callable[[Data], Any]] = []
        self._gap_callbacks: list[Callable[[SequenceGap], Any]] = []

        # Typed routing is opt-in: until a model, an on_unknown hook or a request needs it, frames
        # go only to on_message callbacks and the router costs nothing.
        self._codec = self._config.codec
        self._requests = RequestTracker(self._config.request_id_field)
        # What a server can make happen once per frame is logged a few times a minute, not per frame.
        self._log_limiter = LogLimiter()
        self._router = Router(
            discriminator=self._config.discriminator,
            codec=self._codec,
            on_error=self._routing_error,
            on_unknown=self._unknown,
            on_gap=self._gap,
            requests=self._requests,
            log_limiter=self._log_limiter,
            redact=self._redactor.text,
        )
        self._routing = False
        # Who takes a frame inline: the router alone, or _process when on_message callbacks come
        # first, or None while nothing listens. The sink's inline target is _target while the
        # dispatcher is parked on an empty queue (see _FrameSink), else None.
        self._target: InlineTarget | None = None
        self._sink = _FrameSink(self)

        # Inbound: reader → target inline while nothing waits, else reader → deque → dispatcher. The
        # dispatcher parks on a future only when the deque is empty, so a burst costs one wake-up.
        # Created when first needed (see _queue): an empty deque costs ~760 B, and a client whose
        # handlers are all sync may never queue a frame.
        self._inbox: deque[Data | _ReconnectMark | _Deferred] | None = None
        self._dispatch_waiter: asyncio.Future[None] | None = None
        self._space_waiter: asyncio.Future[None] | None = None
        self._inbox_limit = self._config.inbound_queue
        self._inbox_low = max(0, self._inbox_limit // 2)

        # Outbound while not OPEN (and behind a flush in progress): bounded, order-preserving.
        self._outbox: deque[Data] | None = None  # created by the first send that must wait
        self._writer_waiter: asyncio.Future[None] | None = None
        self._flushing = False

        self._transport: Transport | None = None
        self._liveness: Liveness | None = None
        self._pong_watch: PongWatch | None = None
        if self._config.heartbeat.mode == "message":
            is_pong = self._config.heartbeat.is_pong
            assert is_pong is not None
            self._pong_watch = PongWatch(is_pong)
        self._conn_ids = itertools.count(1)
        self._conn_id = 0
        self._opened_at: float | None = None
        self._replay_done = False
        self._last_inbound: float | None = None
        self._last_rtt: tuple[float, float] | None = None  # (rtt, when measured) of an ended connection

        self._supervisor: asyncio.Task[None] | None = None
        self._dispatcher: asyncio.Task[None] | None = None
        self._close_task: asyncio.Task[None] | None = None
        self._close_request: tuple[int, str] = (1000, "")
        self._callback_tasks: set[asyncio.Task[Any]] = set()
        # Plain futures rather than asyncio.Event: an Event allocates a waiter deque (~760 B) up
        # front, and a feeder may hold hundreds of idle clients.
        self._state_waiters: list[asyncio.Future[None]] | None = None
        self._done: asyncio.Future[None] | None = None
        self._failure: GaveUpError | None = None

    # ------------------------------------------------------------------ registration

    def on_message(self, callback: Callable[[Data], Any]) -> Callable[[Data], Any]:
        """Register ``callback(frame)`` for every inbound frame (str or bytes); sync or async.

        Usable as a decorator. Callbacks run in arrival order, before typed handlers. A sync one runs
        as soon as the frame is read when nothing is queued ahead of it; an async one is awaited on
        the dispatcher task before the next frame, so keep slow work off it (the reader is never held
        up, but the inbound queue fills).
        """
        self._message_callbacks.append(callback)
        self._update_target()
        return callback

    def on(
        self,
        model: type[M],
        handler: Callable[[M], Any] | None = None,
        *,
        match: Callable[[Any], bool] | None = None,
        in_thread: bool = False,
        seq_key: Callable[[M], tuple[Any, int] | None] | None = None,
        tag: Any = None,
    ) -> Any:
        """Route inbound frames that validate as ``model`` to ``handler`` (sync or async).

        As a decorator, ``@client.on(Trade)`` registers the function and returns it unchanged; called
        with a handler, ``client.on(Trade, handler)`` returns a :class:`~wsclient.routing.Registration`
        whose ``cancel()`` unregisters it. A model may have several handlers, called in registration
        order; an async handler is awaited before the next frame is dispatched, so messages stay in
        arrival order.

        Each frame is validated once, straight from its raw text (``validate_json`` over a
        discriminated union of the registered models, keyed by ``ClientConfig.discriminator``).
        ``match=`` registers a model without a tag (acks such as ``{"result": null, "id": 1}``) on a
        slower predicate path tried only when a frame has no known tag. ``in_thread=True`` runs a
        blocking sync handler in a worker thread. ``seq_key(message) -> (stream, seq)`` turns on
        sequence-gap detection for the model (see :meth:`on_gap`). ``tag=`` overrides the model's
        declared tag(s).
        """
        if handler is None:

            def decorator(func: Callable[[M], Any]) -> Callable[[M], Any]:
                self.on(model, func, match=match, in_thread=in_thread, seq_key=seq_key, tag=tag)
                return func

            return decorator
        registration = self._router.register(
            model, handler, match=match, in_thread=in_thread, seq_key=seq_key, tag=tag
        )
        self._route()
        return registration

    def on_unknown(self, callback: Callable[[Data], Any]) -> Callable[[Data], Any]:
        """Register ``callback(frame)`` for frames that no registered model claims."""
        self._unknown_callbacks.append(callback)
        self._route()
        return callback

    def on_gap(self, callback: Callable[[SequenceGap], Any]) -> Callable[[SequenceGap], Any]:
        """Register ``callback(gap)`` for sequence gaps and resets in streams with a ``seq_key``.

        ``gap.across_reconnect`` tells whether the messages were lost while reconnecting; answer with
        a snapshot request or a resubscribe as the venue requires.
        """
        self._gap_callbacks.append(callback)
        return callback

    def on_event(self, callback: Callable[[ClientEvent], Any]) -> Callable[[ClientEvent], Any]:
        """Register ``callback(event)`` for lifecycle events (see :mod:`wsclient.events`).

        Sync callbacks run inline; async ones run as tasks that ``close()`` cancels.
        """
        self._event_callbacks.append(callback)
        return callback

    def on_error(
        self, callback: Callable[[object, BaseException], Any]
    ) -> Callable[[object, BaseException], Any]:
        """Register ``callback(frame_or_message, exc)`` for handler errors and invalid frames."""
        self._error_callbacks.append(callback)
        return callback

    def on_connect(self, hook: F) -> F:
        """Register ``hook(connection)``, run on every (re)connect before subscriptions are replayed.

        The hook may send on the new connection with ``await connection.send(...)`` (e.g. login).
        A hook that raises fails the attempt, which is retried by the reconnect policy.
        """
        self._connect_hooks.append(hook)
        return hook

    def subscribe(self, message: Outgoing, unsubscribe: Outgoing | None = None) -> Subscription:
        """Remember ``message`` and send it now (if open) and after every reconnect, in order."""
        if self._sm.state.is_terminal or self._sm.state is _S.CLOSING:
            raise ClientClosedError("subscribe() on a closed client")
        sub = Subscription(self, message, unsubscribe)
        self._subscriptions.append(sub)
        if self._sm.state is _S.OPEN or self._replay_done:
            # The current connection has replayed already: send it like any other message.
            self._enqueue(self._encode(message))
            sub._sent_on = self._conn_id
        return sub

    def _subscribed_now(self, conn_id: int) -> bool:
        """Whether a subscribe sent on connection ``conn_id`` is live on the current connection."""
        return (
            conn_id != 0
            and conn_id == self._conn_id
            and self._transport is not None
            and self._sm.state in (_S.OPEN, _S.CONNECTING)
        )

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        """The active subscriptions, in replay order."""
        return tuple(self._subscriptions)

    # ------------------------------------------------------------------ public state

    @property
    def url(self) -> str:
        """The URL with credentials masked."""
        return self._safe_url

    @property
    def config(self) -> ClientConfig:
        """The configuration this client was built with."""
        return self._config

    @property
    def state(self) -> ConnectionState:
        """The current :class:`~wsclient.ConnectionState`."""
        return self._sm.state

    @property
    def stats(self) -> ClientStats:
        """A snapshot of the counters."""
        c = self._counters
        last = self._last_inbound
        liveness = self._liveness
        messages_in, bytes_in = c.messages_in, c.bytes_in
        rtt = self._last_rtt
        if liveness is not None:
            messages_in += liveness.frames_in
            bytes_in += liveness.bytes_in
            if liveness.frames_in:
                last = liveness.last_inbound
            if liveness.last_rtt is not None:
                rtt = (liveness.last_rtt, liveness.last_rtt_at)
        now = time.monotonic()
        return ClientStats(
            connects=c.connects,
            reconnects=max(0, c.connects - 1),
            connect_failures=c.connect_failures,
            messages_in=messages_in,
            bytes_in=bytes_in,
            messages_out=c.messages_out,
            bytes_out=c.bytes_out,
            last_rtt=None if rtt is None else rtt[0],
            seconds_since_last_inbound=None if last is None else now - last,
            dropped_in=c.dropped_in,
            dropped_out=c.dropped_out,
            handler_errors=c.handler_errors + self._router.stats.handler_errors,
            invalid_messages=self._router.stats.invalid,
            unknown_messages=self._router.stats.unknown,
            sequence_gaps=self._router.sequences.gaps + self._router.sequences.resets,
            requests_pending=self._requests.pending,
            heartbeat_misses=c.heartbeat_misses,
            inbound_queued=len(self._inbox or ()),
            outbox_queued=len(self._outbox or ()),
            last_rtt_age=None if rtt is None else now - rtt[1],
            write_stalls=c.write_stalls,
        )

    def __repr__(self) -> str:
        return f"<Client #{self._id} {self._safe_url} state={self._sm.state.value}>"

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start connecting in the background. Returns at once; see :meth:`wait_open`."""
        if self._sm.state is not _S.IDLE:
            raise ClientClosedError(f"start() on a client that is {self._sm.state.value}")
        self._state_waiters = []
        self._done = asyncio.get_running_loop().create_future()
        # The transition happens here, not in the supervisor's first step: a close() right after
        # start() (before either task has run) must find a started client and stop its tasks.
        self._sm.handle(_E.START)
        self._dispatcher = asyncio.create_task(self._dispatch_loop(), name=f"wsclient-dispatch-{self._id}")
        self._supervisor = asyncio.create_task(self._supervise(), name=f"wsclient-supervisor-{self._id}")

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def wait_open(self, timeout: float | None = None) -> None:
        """Wait until the client is ``OPEN``; raise the failure if it gives up, TimeoutError on timeout."""
        async with asyncio.timeout(timeout):
            await self._wait_state(lambda s: s is _S.OPEN)

    async def wait_state(
        self, predicate: Callable[[ConnectionState], bool], timeout: float | None = None
    ) -> ConnectionState:
        """Wait until ``predicate(state)`` holds; return that state. Raises TimeoutError on timeout."""
        async with asyncio.timeout(timeout):
            return await self._wait_state(predicate, raise_failure=False)

    async def _wait_state(
        self, predicate: Callable[[ConnectionState], bool], *, raise_failure: bool = True
    ) -> ConnectionState:
        if self._state_waiters is None:
            raise ClientClosedError("the client was not started")
        while True:
            state = self._sm.state
            if predicate(state):
                return state
            if state.is_terminal:
                if raise_failure and self._failure is not None:
                    raise self._failure
                raise ClientClosedError(f"the client is {state.value}")
            waiter = asyncio.get_running_loop().create_future()
            self._state_waiters.append(waiter)
            try:
                await waiter
            finally:
                if not waiter.done():  # cancelled or timed out: do not leave it behind
                    self._state_waiters.remove(waiter)

    async def wait_closed(self) -> None:
        """Wait until the client is closed; raise :class:`~wsclient.GaveUpError` if it failed."""
        if self._done is None:
            if self._sm.state is _S.CLOSED:
                return
            raise ClientClosedError("the client was not started")
        await asyncio.shield(self._done)
        if self._failure is not None:
            raise self._failure

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close with a close frame (``code``, ``reason``) and stop every task. Idempotent.

        Cancel-safe: cancelling the caller does not interrupt the shutdown, which is bounded by
        ``close_timeout``. Closing a ``FAILED`` client is a no-op.
        """
        state = self._sm.state
        if self._close_task is None:
            if state is _S.FAILED and self._done is not None:
                await asyncio.shield(self._done)  # let the failed client finish its teardown
                return
            if state.is_terminal:
                return
            if state is _S.IDLE:
                self._sm.handle(_E.CLOSE)
                self._drop_outbox("client closed")
                self._sm.handle(_E.CLOSED)
                return
            self._close_request = (code, reason)
            self._close_task = asyncio.create_task(self._shutdown(), name=f"wsclient-close-{self._id}")
        await asyncio.shield(self._close_task)

    async def _shutdown(self) -> None:
        if self._sm.state.is_terminal:  # the supervisor failed in the meantime
            return
        self._sm.handle(_E.CLOSE)
        supervisor = self._supervisor
        if supervisor is not None:
            # The supervisor closes the live transport itself on cancellation (it owns it).
            supervisor.cancel()
            await asyncio.gather(supervisor, return_exceptions=True)
        self._drop_outbox("client closed")
        self._sm.handle(_E.CLOSED)
        code, reason = self._close_request
        self._emit(Closed(code, reason))
        await self._teardown("client closed")
        assert self._done is not None
        if not self._done.done():
            self._done.set_result(None)

    async def _teardown(self, why: str) -> None:
        self._requests.fail_all(ClientClosedError(f"no reply: {why}"))
        await self._stop_tasks(why)

    async def _stop_tasks(self, why: str) -> None:
        """Stop the dispatcher and callback tasks; report what was never sent.

        Async event callbacks still running get ``close_timeout`` to finish (so one reacting to the
        final ``Closed``/``GaveUp`` event can run), then they are cancelled.
        """
        self._drop_outbox(why)
        self._dispatch_waiter = self._sink.inline = None  # now, not when the dispatcher's finally runs
        if self._dispatcher is not None:
            self._dispatcher.cancel()
        if self._callback_tasks:
            await asyncio.wait(set(self._callback_tasks), timeout=self._config.close_timeout)
        tasks = [t for t in (self._dispatcher, *self._callback_tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._callback_tasks.clear()
        if self._inbox is not None:
            self._inbox.clear()

    # ------------------------------------------------------------------ sending

    async def send(self, message: Outgoing) -> None:
        """Send ``message`` (dict/list as JSON, pydantic model as JSON, str, bytes).

        When the client is ``OPEN`` the frame goes straight to the socket. Otherwise it waits in the
        outbox (bounded by ``outbox_size``; when full, ``outbox_overflow`` decides: raise
        :class:`~wsclient.OutboxFullError`, or drop and report a :class:`~wsclient.MessageDropped`
        event) and is flushed in order right after the next connection's subscription replay.

        Raises :class:`~wsclient.ClientClosedError` after ``close()`` or once ``FAILED``, and
        :class:`~wsclient.ConnectionLostError` if the link died while this very frame was being
        written (it is then not re-sent).
        """
        state = self._sm.state
        if state.is_terminal or state is _S.CLOSING:
            raise ClientClosedError(f"send() on a client that is {state.value}")
        data = self._encode(message)
        transport = self._transport
        if state is _S.OPEN and transport is not None and not self._outbox and not self._flushing:
            await self._send_on(transport, data)
        else:
            self._enqueue(data)

    def _encode(self, message: Outgoing) -> Data:
        return encode_frame(message, self._codec)

    async def request(
        self,
        message: Any,
        *,
        timeout: float,
        model: type[M] | None = None,
    ) -> Any:
        """Send ``message`` with a fresh correlation id and return the reply carrying the same id.

        ``message`` is a dict or a pydantic model; the id goes into ``ClientConfig.request_id_field``
        (``"id"`` by default) unless the message already has one. The reply is returned validated
        into ``model`` when given, else as decoded JSON. Replies are consumed: they do not also reach
        the ordinary handlers.

        Raises :class:`~wsclient.RequestTimeout` (a ``TimeoutError``) when no reply comes within
        ``timeout`` seconds (the id is then forgotten, and a late reply goes to the handlers),
        :class:`~wsclient.ConnectionLostError` at once if the connection drops while waiting, and
        :class:`~wsclient.ClientClosedError` on a closed client. Like :meth:`send`, a request made
        while disconnected waits in the outbox and goes out after the next connect.
        """
        return await self._request(message, timeout, model, self.send)

    async def _request(
        self,
        message: Any,
        timeout: float,
        model: type[M] | None,
        send: Callable[[Data], Awaitable[None]],
    ) -> Any:
        request_id, frame = self._requests.prepare(message, self._codec)
        future = self._requests.create(request_id)
        self._route()
        try:
            await send(frame)
            async with asyncio.timeout(timeout):
                reply = await future
        except TimeoutError:
            raise RequestTimeout(f"no reply to request {request_id!r} within {timeout}s") from None
        finally:
            self._requests.forget(request_id)
        if model is not None:
            return model.model_validate(reply)
        return reply

    async def _send_on(self, transport: Transport, data: Data) -> None:
        try:
            await transport.send(data)
        except TransportClosed as exc:
            raise ConnectionLostError(
                f"connection lost while sending: {self._redactor.text(describe(exc))}"
            ) from exc
        c = self._counters
        c.messages_out += 1
        c.bytes_out += len(data)

    def _enqueue(self, data: Data) -> None:
        outbox = self._outbox
        if outbox is None:
            outbox = self._outbox = deque()
        if len(outbox) >= self._config.outbox_size:
            policy = self._config.outbox_overflow
            if policy == "raise":
                raise OutboxFullError(
                    f"outbox full ({self._config.outbox_size} messages) while {self.state.value}: "
                    "raise outbox_size or choose outbox_overflow='drop_oldest'"
                )
            if policy == "drop_newest":
                self._dropped_out(data, "outbox full")
                return
            self._dropped_out(outbox.popleft(), "outbox full")
        outbox.append(data)
        waiter = self._writer_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _dropped_out(self, data: Data, reason: str) -> None:
        self._counters.dropped_out += 1
        self._emit(MessageDropped("out", reason, data))

    def _drop_outbox(self, reason: str) -> None:
        while self._outbox:
            self._dropped_out(self._outbox.popleft(), reason)

    async def _flush(self, transport: Transport) -> None:
        """Send the outbox in order. A frame lost in flight is reported, the rest stay queued."""
        outbox = self._outbox
        self._flushing = True
        try:
            while outbox:
                data = outbox.popleft()
                try:
                    await self._send_on(transport, data)
                except ConnectionLostError as exc:
                    self._dropped_out(data, "connection lost while sending")
                    raise _LinkDown(exc.__cause__ or exc) from None
        finally:
            self._flushing = False

    async def _writer(self, transport: Transport) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._outbox:
                await self._flush(transport)
                continue
            self._writer_waiter = loop.create_future()
            try:
                await self._writer_waiter
            finally:
                self._writer_waiter = None

    # ------------------------------------------------------------------ inbound hot path

    def _set_inline(self, target: InlineTarget | None) -> None:
        # In message heartbeat mode every frame must pass the pong check in _FrameSink.__call__.
        self._sink.inline = target if self._pong_watch is None else None

    def _queue(self) -> deque[Data | _ReconnectMark | _Deferred]:
        """The inbound queue, created on first use."""
        inbox = self._inbox
        if inbox is None:
            inbox = self._inbox = deque()
        return inbox

    def _wake_dispatcher(self) -> None:
        waiter = self._dispatch_waiter
        if waiter is not None:
            self._dispatch_waiter = None
            self._sink.inline = None
            if not waiter.done():
                waiter.set_result(None)

    def _inbox_full(self) -> Awaitable[None] | None:
        policy = self._config.inbound_overflow
        if policy == "block":
            if self._liveness is not None:
                self._liveness.blocked = True
            self._space_waiter = asyncio.get_running_loop().create_future()
            return self._space_waiter
        inbox = self._queue()
        if policy == "drop_newest":
            dropped = inbox.pop()  # the frame just appended, never a reconnect mark
        else:
            # The oldest frame: reconnect marks and deferred handlers at the head stay in place.
            for index, dropped in enumerate(inbox):
                if dropped.__class__ is str or dropped.__class__ is bytes:
                    del inbox[index]
                    break
        assert isinstance(dropped, str | bytes)
        self._counters.dropped_in += 1
        self._emit(MessageDropped("in", "inbound queue full", dropped))
        return None

    def _space_available(self) -> None:
        waiter = self._space_waiter
        self._space_waiter = None
        liveness = self._liveness
        if liveness is not None:
            liveness.blocked = False
            # Time spent held back by our own queue is not silence on the link.
            liveness.last_inbound = time.monotonic()
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _dispatch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        process = self._process
        try:
            while True:
                # Any: marks are told apart by identity and class below, cheaper than isinstance().
                inbox: deque[Any] | None = self._inbox
                if not inbox:
                    waiter = self._dispatch_waiter = loop.create_future()
                    self._set_inline(self._target)
                    await waiter
                    continue
                data = inbox.popleft()
                if self._space_waiter is not None and len(inbox) <= self._inbox_low:
                    self._space_available()
                if data is _RECONNECT:
                    # Here, in arrival order, and not when the socket opened: frames of the old
                    # connection still queued must not count as the new connection's first.
                    self._router.sequences.mark_reconnect()
                    continue
                pending = data.pending if data.__class__ is _Deferred else process(data)
                if pending is not None:
                    await pending
        finally:
            # No inline delivery once the dispatcher is gone (close() drops what is still queued).
            self._dispatch_waiter = self._sink.inline = None

    def _route(self) -> None:
        if not self._routing:
            self._routing = True
            self._update_target()

    def _update_target(self) -> None:
        if self._message_callbacks:
            self._target = _Callbacks(self._process)
        elif self._routing:
            self._target = self._router
        else:
            self._target = None
        if self._dispatch_waiter is not None:
            self._set_inline(self._target)

    def _process(self, data: Data) -> Awaitable[None] | None:
        """Deliver one frame to the ``on_message`` callbacks, then the router; never raises.

        Sync work runs now. Returns ``None`` when everything ran, else an awaitable for the rest (an
        async callback or handler, and whatever follows it), which must complete before the next frame
        is delivered: that is what keeps frames in arrival order.
        """
        callbacks = self._message_callbacks
        if callbacks:
            for index, callback in enumerate(callbacks):
                try:
                    result = callback(data)
                except SYNC_HANDLER_FAILURES as exc:
                    self._handler_error(data, exc)
                    continue
                if result is not None and inspect.isawaitable(result):
                    return self._finish_frame(data, result, index + 1)
        if self._routing:
            return self._router.dispatch(data)
        return None

    async def _finish_frame(self, data: Data, result: Awaitable[Any], start: int) -> None:
        """The rest of :meth:`_process` after an async ``on_message`` callback."""
        try:
            await result
        except BaseException as exc:
            if not handler_failed(exc):
                raise
            self._handler_error(data, exc)
        for callback in self._message_callbacks[start:]:
            try:
                result = callback(data)
                if result is not None and inspect.isawaitable(result):
                    await result
            except BaseException as exc:
                if not handler_failed(exc):
                    raise
                self._handler_error(data, exc)
        if self._routing:
            pending = self._router.dispatch(data)
            if pending is not None:
                await pending

    def _routing_error(self, item: object, exc: BaseException) -> None:
        # The router has counted it, and logged it if it was a handler's error.
        if not self._error_callbacks and (item.__class__ is str or item.__class__ is bytes):
            # An invalid frame nobody listens for: at least the log says so (rate-limited).
            self._router.log_invalid(item, exc)
        self._report_error(item, exc)

    def _unknown(self, frame: Data) -> None:
        if not self._unknown_callbacks:
            self._router.log_unknown(frame)
        for callback in self._unknown_callbacks:
            try:
                self._run_callback(callback(frame))
            except Exception as exc:
                self._log.exception("on_unknown callback raised")
                self._report_error(frame, exc)

    def _gap(self, gap: SequenceGap) -> None:
        if not self._gap_callbacks:
            self._log.warning(
                "sequence %s in stream %r: expected %d, got %d%s",
                gap.kind,
                gap.stream,
                gap.expected,
                gap.received,
                " (across a reconnect)" if gap.across_reconnect else "",
            )
        for callback in self._gap_callbacks:
            try:
                self._run_callback(callback(gap))
            except Exception as exc:
                self._log.exception("on_gap callback raised")
                self._report_error(gap, exc)

    def _handler_error(self, item: object, exc: BaseException) -> None:
        self._counters.handler_errors += 1
        suppressed = self._log_limiter.allow("handler")
        if suppressed is not None:
            self._log.error(
                "handler raised %s: %s%s",
                type(exc).__name__,
                self._redactor.text(str(exc)),
                LogLimiter.suffix(suppressed),
                exc_info=exc,
            )
        self._report_error(item, exc)

    def _report_error(self, item: object, exc: BaseException) -> None:
        for callback in self._error_callbacks:
            try:
                self._run_callback(callback(item, exc))
            except Exception:
                self._log.exception("on_error callback raised")

    # ------------------------------------------------------------------ events

    def _emit(self, event: ClientEvent) -> None:
        for callback in self._event_callbacks:
            try:
                self._run_callback(callback(event))
            except Exception as exc:
                self._log.exception("on_event callback raised")
                self._report_error(event, exc)

    def _run_callback(self, result: object) -> None:
        if result is not None and inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._callback_tasks.add(task)
            task.add_done_callback(self._callback_done)

    def _callback_done(self, task: asyncio.Task[Any]) -> None:
        self._callback_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._log.error("async callback raised", exc_info=task.exception())

    def _on_transition(self, old: ConnectionState, event: Event, new: ConnectionState) -> None:
        self._log.debug("state %s --%s--> %s", old.value, event.value, new.value)
        waiters = self._state_waiters
        if waiters:
            self._state_waiters = []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    # ------------------------------------------------------------------ supervisor

    def _connect_options(self) -> ConnectOptions:
        cfg = self._config
        return ConnectOptions(
            url=self._url,
            headers=self._headers,
            subprotocols=cfg.subprotocols,
            ssl_context=cfg.ssl_context,
            open_timeout=cfg.open_timeout,
            close_timeout=cfg.close_timeout,
            max_size=cfg.max_size,
            compression=cfg.compression,
            user_agent=cfg.user_agent,
            secrets=self._redactor.secrets,
        )

    async def _supervise(self) -> None:
        """Connect, run, judge, wait, repeat: a loop, never recursion."""
        backoff = Backoff(self._config.reconnect)
        options = self._connect_options()
        sm = self._sm
        redact = self._redactor.text
        try:
            while True:
                if sm.state is _S.RECONNECTING:
                    sm.handle(_E.RETRY)
                conn_id = self._conn_id = next(self._conn_ids)
                opened_at: float | None = None
                try:
                    opened = await open_connection(
                        self._connector,
                        options,
                        max_redirects=self._config.max_redirects,
                        redactor=self._redactor,
                        log=self._log,
                    )
                except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
                    raise
                except BaseException as exc:
                    cause: BaseException = exc
                    self._counters.connect_failures += 1
                else:
                    transport = self._transport = opened.transport
                    url = opened.redactor.text(redact_url(opened.url))
                    try:
                        cause = await self._run_connection(transport, conn_id, url)
                        opened_at = self._opened_at
                        # Replies can no longer come: fail the waiters now rather than at their timeout.
                        self._requests.fail_all(
                            ConnectionLostError(
                                f"connection lost while waiting for a reply: {redact(describe(cause))}"
                            )
                        )
                    except asyncio.CancelledError:
                        await self._close_transport(transport)
                        raise
                    finally:
                        transport.abort()
                        self._transport = None
                        self._end_liveness()
                    if isinstance(cause, PeerNotReading):
                        self._counters.write_stalls += 1

                verdict = classify(cause, self._config.reconnect)
                reason = redact(verdict.reason)
                if opened_at is not None and time.monotonic() - opened_at >= (
                    self._config.reconnect.reset_after
                ):
                    backoff.reset()
                delay = backoff.next_delay(verdict.retry_after)  # counts the attempt, fatal or not
                if not verdict.retry:
                    delay = None
                will_retry = delay is not None
                if will_retry:
                    # Transition first, so that callbacks of the events below see RECONNECTING.
                    sm.handle(_E.CONNECTION_LOST if opened_at is not None else _E.CONNECT_FAILED)
                outcome = f"retrying in {delay:.3f}s" if delay is not None else "giving up"
                if opened_at is not None:
                    code = cause.code if isinstance(cause, TransportClosed) else None
                    self._log.warning("connection %d lost: %s; %s", conn_id, reason, outcome)
                    self._emit(Disconnected(conn_id, code, reason, will_retry, delay))
                else:
                    status = cause.status if isinstance(cause, HandshakeRejected) else None
                    asked = verdict.retry_after
                    if asked is not None and delay is not None and asked > delay:
                        outcome += f" (the server asked for {asked:g}s: capped by max_retry_after)"
                    self._log.warning(
                        "connect attempt %d to %s failed: %s; %s",
                        backoff.failures,
                        self._safe_url,
                        reason,
                        outcome,
                    )
                    self._emit(ConnectFailed(backoff.failures, reason, status, will_retry, delay, asked))
                if delay is None:
                    self._fail(cause, reason, backoff.failures, fatal=not verdict.retry)
                    return
                self._emit(Reconnecting(backoff.failures + 1, delay))
                await asyncio.sleep(delay)
        finally:
            self._transport = None

    def _end_liveness(self) -> None:
        """Fold the ended connection's counters into the client's totals."""
        liveness = self._liveness
        if liveness is None:
            return
        # While a connection runs, the transport counts into its liveness (one count per frame on
        # the hot path, not two); the totals take them now.
        self._counters.messages_in += liveness.frames_in
        self._counters.bytes_in += liveness.bytes_in
        if liveness.frames_in:
            # Kept for stats between connections.
            self._last_inbound = liveness.last_inbound
        if liveness.last_rtt is not None:
            self._last_rtt = (liveness.last_rtt, liveness.last_rtt_at)
        self._liveness = None

    def _fail(self, cause: BaseException, reason: str, attempts: int, *, fatal: bool) -> None:
        self._failure = GaveUpError(cause, attempts, fatal=fatal, reason=reason)
        self._sm.handle(_E.GIVE_UP)
        self._log.error("%s", self._failure)
        self._emit(GaveUp(attempts, reason, fatal))
        # Nothing will ever send these; say so rather than let them vanish.
        self._drop_outbox("client failed")
        task = asyncio.get_running_loop().create_task(self._finish_failed())
        self._callback_tasks.add(task)

    async def _finish_failed(self) -> None:
        current = asyncio.current_task()
        if current is not None:
            self._callback_tasks.discard(current)
        await self._teardown("client failed")
        assert self._done is not None
        if not self._done.done():
            self._done.set_result(None)

    async def _close_transport(self, transport: Transport) -> None:
        """Polite close on client request, bounded by ``close_timeout``; abort follows regardless."""
        code, reason = self._close_request
        try:
            async with asyncio.timeout(self._config.close_timeout):
                await transport.close(code, reason)
        except Exception as exc:
            self._log.debug("close handshake did not complete: %s", self._redactor.text(describe(exc)))

    async def _run_connection(self, transport: Transport, conn_id: int, url: str) -> BaseException:
        """Run one connection until it dies; return the cause of death."""
        self._opened_at = None
        self._replay_done = False
        cause: BaseException | None = None
        now = time.monotonic()
        liveness = self._liveness = Liveness(self._config.heartbeat, now)
        if conn_id > 1:
            # Any earlier connection, open or not, may have delivered frames.
            self._queue().append(_RECONNECT)
            self._wake_dispatcher()
        hb = self._config.heartbeat
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._reader(transport, liveness), name=f"wsclient-reader-{conn_id}")
                if hb.mode != "off":
                    group.create_task(
                        self._pinger(transport, liveness, conn_id), name=f"wsclient-ping-{conn_id}"
                    )
                if hb.receive_timeout is not None:
                    group.create_task(
                        self._watchdog(transport, liveness, conn_id), name=f"wsclient-watchdog-{conn_id}"
                    )
                await self._open(transport, conn_id, url)
                group.create_task(self._writer(transport), name=f"wsclient-writer-{conn_id}")
                await asyncio.get_running_loop().create_future()  # until a task fails
        except* _LinkDown as group_exc:
            first = group_exc.exceptions[0]
            assert isinstance(first, _LinkDown)
            cause = first.cause
        except* Exception as group_exc:
            # A bug in wsclient must end in a reconnect the logs explain, never in a dead supervisor.
            cause = group_exc.exceptions[0]
            self._log.error("connection %d task failed", conn_id, exc_info=cause)
        finally:
            self._replay_done = False
        assert cause is not None, "a connection task group ended without a cause"
        return cause

    async def _open(self, transport: Transport, conn_id: int, url: str) -> None:
        """Hooks → subscription replay → outbox flush → OPEN."""
        reconnect = self._counters.connects > 0
        connection = Connection(self, transport, conn_id, reconnect)
        try:
            if self._connect_hooks:
                async with asyncio.timeout(self._config.open_timeout):
                    for hook in self._connect_hooks:
                        result = hook(connection)
                        if inspect.isawaitable(result):
                            await result
            await self._replay(transport, conn_id)
        except ConnectionLostError as exc:
            raise _LinkDown(exc.__cause__ or exc) from None
        except Exception as exc:
            self._report_error(connection, exc)
            raise _LinkDown(exc) from None
        await self._flush(transport)
        self._sm.handle(_E.CONNECTED)
        self._opened_at = time.monotonic()
        self._counters.connects += 1
        self._log.info("connection %d open to %s", conn_id, url)
        self._emit(Connected(conn_id, url, transport.subprotocol, reconnect))

    async def _replay(self, transport: Transport, conn_id: int) -> None:
        """Send every active subscription in order, including ones added while replaying."""
        pause = self._config.replay_interval
        sent: set[int] = set()
        while True:
            pending = [s for s in self._subscriptions if id(s) not in sent]
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
                await self._send_on(transport, self._encode(sub.message))
                sub._sent_on = conn_id
        self._replay_done = True

    async def _reader(self, transport: Transport, liveness: Liveness) -> None:
        try:
            await transport.pump(self._sink, liveness)
        except TransportClosed as exc:
            raise _LinkDown(exc) from None
        except Exception as exc:  # a backend bug must still end in a reconnect, not a hang
            raise _LinkDown(exc) from None

    async def _pinger(self, transport: Transport, liveness: Liveness, conn_id: int) -> None:
        hb = self._config.heartbeat
        watch = self._pong_watch

        if watch is not None:
            ping_frame = self._encode(hb.message)

            async def send_ping() -> asyncio.Future[float]:
                assert watch is not None
                future = watch.arm()
                await transport.send(ping_frame)
                return future
        else:

            async def send_ping() -> asyncio.Future[float]:
                return await transport.ping(ping_payload())

        try:
            await run_pinger(
                liveness,
                send_ping,
                transport.write_buffer_size,
                lambda waited, fatal: self._missed(conn_id, "pong", waited, fatal),
                transport.inbound_pending,
                transport.send_blocked,
            )
        except (LinkDead, TransportClosed) as exc:
            raise _LinkDown(exc) from None
        finally:
            if watch is not None:
                watch.disarm()

    async def _watchdog(self, transport: Transport, liveness: Liveness, conn_id: int) -> None:
        try:
            await run_watchdog(
                liveness,
                lambda waited, fatal: self._missed(conn_id, "silence", waited, fatal),
                transport.inbound_pending,
            )
        except LinkDead as exc:
            raise _LinkDown(exc) from None

    def _missed(self, conn_id: int, kind: str, waited: float, fatal: bool) -> None:
        self._counters.heartbeat_misses += 1
        self._emit(HeartbeatMissed(conn_id, kind, waited, fatal))
