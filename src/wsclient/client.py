"""The :class:`Client` facade: what an application holds.

A client is a handful of parts, each in a module of its own (``DESIGN.md``, "Architecture"):

* :mod:`wsclient.session`: what outlives a connection (subscriptions, outbox, requests, counters);
* :mod:`wsclient.supervisor`: the reconnect loop, the only long-lived task, and the one teardown;
* :mod:`wsclient.link`: one connection, its phase, its reader and its heartbeat timers;
* :mod:`wsclient.outbound`: the single exit for data frames (encode, send, count; replay, flush);
* :mod:`wsclient.inbound`: the receiver, the bounded queue, the dispatcher, the overflow policy;
* :mod:`wsclient.callbacks`: the one fan-out for the application's callbacks and events.

This module wires them together and keeps the public API: registration, lifecycle, ``send`` and
``request``. Every state change goes through :mod:`wsclient.state`; policy, backoff and liveness rules
are plain objects from :mod:`wsclient.policy` and :mod:`wsclient.heartbeat`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

from pydantic import BaseModel

from .budget import ConnectGate
from .callbacks import Callbacks
from .config import ClientConfig, validate_url
from .dedup import Dedup
from .errors import ClientClosedError, ConfigError, RefreshFailed
from .events import ClientEvent, ClientStats, StateChanged
from .inbound import Inbound
from .logs import ClientLog, LogLimiter
from .metrics import Fanout, MetricsRecorder, check_recorder
from .outbound import Outbound
from .policy import describe
from .redact import Redactor, connection_secrets, redact_url
from .routing import RequestTracker, SequenceGap
from .session import Outbox, Outgoing, Session, Subscription
from .state import ConnectionState, StateEvent, StateMachine
from .streams import Overflow, Stream
from .supervisor import Connection, Supervisor
from .transport import ConnectOptions, Connector, get_connector

__all__ = ["Client", "Connection", "Subscription"]

logger = logging.getLogger("wsclient")
# A library must not print through logging's last-resort handler; the application configures output.
logger.addHandler(logging.NullHandler())

Data = str | bytes
F = TypeVar("F", bound=Callable[..., Any])
M = TypeVar("M", bound=BaseModel)

_S = ConnectionState
_client_ids = itertools.count(1)


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
        "_callbacks",
        "_config",
        "_id",
        "_inbound",
        "_log",
        "_outbound",
        "_recorders",
        "_redactor",
        "_safe_url",
        "_session",
        "_state_waiters",
        "_streams",
        "_supervisor",
    )

    def __init__(
        self,
        url: str | Callable[[], str | Awaitable[str]],
        *,
        config: ClientConfig | None = None,
        headers: Mapping[str, str]
        | Callable[[], Mapping[str, str] | Awaitable[Mapping[str, str]]]
        | None = None,
        secrets: Iterable[str] = (),
        connector: Connector | None = None,
        connect_gate: ConnectGate | None = None,
        dedup_key: Callable[[Any], tuple[Hashable, int] | None] | None = None,
        dedup: Dedup | None = None,
    ) -> None:
        extra = tuple(secrets)
        if not all(isinstance(secret, str) for secret in extra):
            raise ConfigError("secrets must be strings (tokens to mask in logs and events)")
        # A URL or headers given as functions are asked again at every connect attempt (a renewed
        # listenKey, a signed URL, a fresh bearer token); the first attempt asks them too.
        url_source: Callable[[], str | Awaitable[str]] | None = None
        if callable(url):
            url_source = url
            url = f"ws://{_name(url_source)}.invalid/"  # a placeholder until the first attempt asks
        else:
            validate_url(url)
        headers_source: Callable[[], Mapping[str, str] | Awaitable[Mapping[str, str]]] | None = None
        plain_headers: dict[str, str] = {}
        if callable(headers):
            headers_source = headers
        elif headers is not None:
            plain_headers = dict(headers)
        config = self._config = config if config is not None else _DEFAULT_CONFIG
        # The proxy's password (and its Basic token) are masked like the server's credentials.
        proxy_secrets = connection_secrets(config.proxy, {}) if isinstance(config.proxy, str) else []
        redactor = self._redactor = Redactor(
            (*connection_secrets(url, plain_headers), *extra, *proxy_secrets)
        )
        self._safe_url = (
            f"<url from {_name(url_source)}()>" if url_source is not None else redactor.text(redact_url(url))
        )
        limits = config.limits
        if connect_gate is None and limits is not None and limits.connects_per_window is not None:
            connect_gate = ConnectGate(
                limits.connects_per_window, limits.connect_window, margin=limits.margin
            )
        refresh = None
        if url_source is not None or headers_source is not None:
            refresh = _refresher(url_source, headers_source, redactor)
        headers = plain_headers
        self._id = next(_client_ids)
        log = self._log = ClientLog(logger, self._id)
        # What a server can make happen once per frame is logged a few times a minute, not per frame.
        limiter = LogLimiter()
        callbacks = self._callbacks = Callbacks(log, limiter, redactor.text)
        sm = StateMachine(listener=self._on_transition)
        outbox = Outbox(config.outbox_size, config.outbox_overflow)
        session = self._session = Session(outbox, RequestTracker(config.request_id_field))
        if dedup is None and dedup_key is not None:
            dedup = Dedup()
        if dedup is not None and dedup_key is None:
            raise ConfigError("dedup= needs dedup_key= (message -> (stream, seq)) to know what a copy is")
        if dedup_key is not None and not callable(dedup_key):
            raise ConfigError("dedup_key must be a function: message -> (stream, seq) or None")
        inbound = self._inbound = Inbound(
            config,
            callbacks,
            session.counters,
            session.requests,
            redactor,
            limiter,
            log,
            dedup=dedup,
            dedup_key=dedup_key,
        )
        outbound = self._outbound = Outbound(
            session, callbacks, config.codec, redactor, sm=sm, route=inbound.route
        )
        # What the outbox's policy drops is reported like a frame lost in flight.
        outbox.dropped = outbound.dropped
        options = ConnectOptions(
            url=url,
            headers=headers,
            subprotocols=config.subprotocols,
            ssl_context=config.ssl_context,
            open_timeout=config.open_timeout,
            close_timeout=config.close_timeout,
            max_size=config.max_size,
            compression=config.compression,
            user_agent=config.user_agent,
            secrets=redactor.secrets,
        )
        self._supervisor = Supervisor(
            config,
            connector if connector is not None else get_connector(config.transport),
            options,
            session=session,
            callbacks=callbacks,
            inbound=inbound,
            outbound=self._outbound,
            redactor=redactor,
            safe_url=self._safe_url,
            log=log,
            sm=sm,
            gate=connect_gate,
            refresh=refresh,
        )
        # Plain futures rather than asyncio.Event: an Event allocates a waiter deque (~760 B) up
        # front, and a feeder may hold hundreds of idle clients.
        self._state_waiters: list[asyncio.Future[None]] | None = None
        self._streams: list[Stream[Any]] | None = None  # made by the first messages()/events()
        self._recorders: tuple[MetricsRecorder, ...] = ()

    # ------------------------------------------------------------------ registration

    def on_message(self, callback: Callable[[Data], Any]) -> Callable[[Data], Any]:
        """Register ``callback(frame)`` for every inbound frame (str or bytes); sync or async.

        Usable as a decorator. Callbacks run in arrival order, before typed handlers. A sync one runs
        as soon as the frame is read when nothing is queued ahead of it; an async one is awaited on
        the dispatcher task before the next frame, so keep slow work off it (the reader is never held
        up, but the inbound queue fills).
        """
        self._inbound.add_message_callback(callback)
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
        with_frame: bool | None = None,
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
        declared tag(s). ``with_frame=True`` calls ``handler(message, frame)`` with the raw frame as
        well (the default reads the handler's ``wants_frame`` attribute, which sinks set).
        """
        if handler is None:

            def decorator(func: Callable[[M], Any]) -> Callable[[M], Any]:
                self.on(
                    model,
                    func,
                    match=match,
                    in_thread=in_thread,
                    seq_key=seq_key,
                    tag=tag,
                    with_frame=with_frame,
                )
                return func

            return decorator
        registration = self._inbound.router.register(
            model, handler, match=match, in_thread=in_thread, seq_key=seq_key, tag=tag, with_frame=with_frame
        )
        self._inbound.route()
        return registration

    def on_unknown(self, callback: Callable[[Data], Any]) -> Callable[[Data], Any]:
        """Register ``callback(frame)`` for frames that no registered model claims."""
        self._callbacks.unknown = (*self._callbacks.unknown, callback)
        self._inbound.route()
        return callback

    def on_gap(self, callback: Callable[[SequenceGap], Any]) -> Callable[[SequenceGap], Any]:
        """Register ``callback(gap)`` for sequence gaps and resets in streams with a ``seq_key``.

        ``gap.across_reconnect`` tells whether the messages were lost while reconnecting; answer with
        a snapshot request or a resubscribe as the venue requires.
        """
        self._callbacks.gap = (*self._callbacks.gap, callback)
        return callback

    def on_event(self, callback: Callable[[ClientEvent], Any]) -> Callable[[ClientEvent], Any]:
        """Register ``callback(event)`` for lifecycle events (see :mod:`wsclient.events`).

        Sync callbacks run inline; async ones run as tasks that ``close()`` cancels.
        """
        self._callbacks.event = (*self._callbacks.event, callback)
        return callback

    def messages(
        self, *models: type[BaseModel], maxsize: int = 1000, overflow: Overflow = "block"
    ) -> Stream[Any]:
        """``async for msg in client.messages(Trade, Ticker):`` the messages of these models, in
        arrival order; with no model, every raw frame (``str`` or ``bytes``).

        Each call makes a :class:`~wsclient.streams.Stream` with its own buffer of ``maxsize``
        items. ``overflow="block"`` (the default) holds the client back while the buffer is full, as
        a slow handler would (lossless with the default inbound policy); ``"drop_oldest"`` /
        ``"drop_newest"`` drop and count in ``stream.dropped``. The iteration ends once the client is
        closed (or has failed) and the buffer is read; ``await stream.aclose()`` (or ``async with``)
        unregisters it earlier. Call it before ``start()`` to miss nothing.
        """
        stream: Stream[Any] = Stream(maxsize, overflow)
        if models:
            registrations = [self.on(model, stream.put) for model in models]

            def unregister() -> None:
                for registration in registrations:
                    registration.cancel()

        else:
            self._inbound.add_message_callback(stream.put)

            def unregister() -> None:
                self._inbound.remove_message_callback(stream.put)

        return self._keep(stream, unregister)

    def events(self, maxsize: int = 1000, overflow: Overflow = "drop_oldest") -> Stream[ClientEvent]:
        """``async for event in client.events():`` lifecycle events, :class:`~wsclient.StateChanged`
        included, in order. The buffer drops its oldest event when full by default (``dropped``
        counts them), so a reader that falls behind never holds the connection back. Ends like
        :meth:`messages`."""
        stream: Stream[ClientEvent] = Stream(maxsize, overflow)
        put = stream.put
        self._callbacks.event = (*self._callbacks.event, put)

        def unregister() -> None:
            self._callbacks.event = tuple(cb for cb in self._callbacks.event if cb is not put)

        return self._keep(stream, unregister)

    def _keep(self, stream: Stream[Any], unregister: Callable[[], None]) -> Stream[Any]:
        stream._unregister = unregister
        if self.state.is_terminal:
            stream.end()
            return stream
        if self._streams is None:
            self._streams = []
        self._streams.append(stream)
        return stream

    def on_error(
        self, callback: Callable[[object, BaseException], Any]
    ) -> Callable[[object, BaseException], Any]:
        """Register ``callback(frame_or_message, exc)`` for handler errors and invalid frames."""
        self._callbacks.error = (*self._callbacks.error, callback)
        return callback

    def on_connect(self, hook: F) -> F:
        """Register ``hook(connection)``, run on every (re)connect before subscriptions are replayed.

        The hook may send on the new connection with ``await connection.send(...)`` (e.g. login).
        A hook that raises fails the attempt, which is retried by the reconnect policy.

        Register hooks before :meth:`start`: one registered once a connection is past its
        handshake (running its hooks, replaying, open) first runs at the next (re)connect.
        """
        self._supervisor.connect_hooks = (*self._supervisor.connect_hooks, hook)
        return hook

    def rotate(self, overlap: float | None = None) -> bool:
        """Replace the open connection by a new one, make-before-break; False if not possible now
        (not open, or a rotation already runs).

        The new connection runs the ``on_connect`` hooks and the replay beside the old one, then
        takes over (a ``Connected`` event with ``reconnect=True``) and the old one is closed (1000).
        With ``dedup_key`` both deliver during the overlap and every message reaches the handlers
        exactly once, in order; the switch waits (within ``overlap`` seconds, default
        ``open_timeout``) until the new connection has delivered every stream the old one did
        meanwhile. Without it, frames of the old connection after the switch are not delivered.
        """
        return self._supervisor.rotate(overlap)

    async def drain(self) -> None:
        """Wait until what the outbox held when called has been handed to the socket (or dropped)."""
        await self._outbound.idle()

    def has_seen(self, stream: Hashable) -> bool:
        """Whether a message of ``stream`` (by ``dedup_key``) has arrived on this client."""
        return self._inbound.has_router and self._inbound.router.has_seen(stream)

    def end_move(self, stream: Hashable) -> None:
        """A stream this client took over from another one sharing its de-duplicator (a pool's
        move) has left the other one: deliver, in order, what was held for it."""
        self._inbound.end_move(stream)

    def subscribe(self, message: Outgoing, unsubscribe: Outgoing | None = None) -> Subscription:
        """Remember ``message`` and send it now (if open) and after every reconnect, in order."""
        state = self._supervisor.sm.state
        if state.is_terminal or state is _S.CLOSING:
            raise ClientClosedError("subscribe() on a closed client")
        return self._outbound.subscribe(message, unsubscribe)

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        """The active subscriptions, in replay order."""
        return tuple(self._session.subscriptions)

    # ------------------------------------------------------------------ metrics

    def add_metrics(self, recorder: MetricsRecorder) -> None:
        """Send this client's timings to ``recorder`` (a :class:`~wsclient.metrics.MetricsRecorder`):
        each frame's handler time and inbound queue wait, each heartbeat round trip.

        Without a recorder no timing is taken at all. The exporters attach theirs
        (:mod:`wsclient.metrics.prometheus`, :mod:`wsclient.metrics.otel`); several may be attached.
        Valid in every state; the next frame is timed.
        """
        recorder = check_recorder(recorder)
        if any(r is recorder for r in self._recorders):
            return
        self._set_recorders((*self._recorders, recorder))

    def remove_metrics(self, recorder: MetricsRecorder) -> None:
        """Stop sending timings to ``recorder`` (nothing happens if it was not attached)."""
        self._set_recorders(tuple(r for r in self._recorders if r is not recorder))

    def _set_recorders(self, recorders: tuple[MetricsRecorder, ...]) -> None:
        self._recorders = recorders
        self._inbound.set_recorder(
            None if not recorders else recorders[0] if len(recorders) == 1 else Fanout(recorders)
        )

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
        return self._supervisor.sm.state

    @property
    def stats(self) -> ClientStats:
        """A snapshot of the counters."""
        session = self._session
        c = session.counters
        last = session.last_inbound
        rtt = session.last_rtt
        messages_in, bytes_in, ping_replies = c.messages_in, c.bytes_in, c.ping_replies
        supervisor = self._supervisor
        links = (*supervisor.ending, supervisor.link) if supervisor.ending else (supervisor.link,)
        for link in links:
            if link is None:
                continue
            ping_replies += link.ping_replies
            liveness = link.liveness
            if liveness is not None:
                messages_in += liveness.frames_in
                bytes_in += liveness.bytes_in
                if liveness.frames_in:
                    last = liveness.last_inbound
                if liveness.last_rtt is not None:
                    rtt = (liveness.last_rtt, liveness.last_rtt_at)
        now = _clock()
        inbound = self._inbound
        router = inbound.router if inbound.has_router else None
        return ClientStats(
            connects=c.connects,
            # A rotation's new link is a connection too, but nothing was lost: not a reconnect.
            reconnects=max(0, c.connects - 1 - c.rotations),
            connect_failures=c.connect_failures,
            messages_in=messages_in,
            bytes_in=bytes_in,
            messages_out=c.messages_out,
            bytes_out=c.bytes_out,
            last_rtt=None if rtt is None else rtt[0],
            seconds_since_last_inbound=None if last is None else now - last,
            dropped_in=c.dropped_in,
            dropped_out=c.dropped_out,
            handler_errors=c.handler_errors + (router.stats.handler_errors if router else 0),
            invalid_messages=router.stats.invalid if router else 0,
            unknown_messages=router.stats.unknown if router else 0,
            sequence_gaps=router.sequences.gaps + router.sequences.resets if router else 0,
            requests_pending=session.requests.pending,
            heartbeat_misses=c.heartbeat_misses,
            inbound_queued=self._inbound.queued,
            outbox_queued=len(session.outbox),
            last_rtt_age=None if rtt is None else now - rtt[1],
            write_stalls=c.write_stalls,
            budget_waits=c.budget_waits,
            rotations=c.rotations,
            ping_replies=ping_replies,
            duplicates_dropped=router.dedup.dropped if router is not None and router.dedup is not None else 0,
        )

    def __repr__(self) -> str:
        return f"<Client #{self._id} {self._safe_url} state={self.state.value}>"

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start connecting in the background. Returns at once; see :meth:`wait_open`."""
        state = self._supervisor.sm.state
        if state is not _S.IDLE:
            raise ClientClosedError(f"start() on a client that is {state.value}")
        self._state_waiters = []
        self._supervisor.start(f"wsclient-supervisor-{self._id}")

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
            state = self.state
            if predicate(state):
                return state
            if state.is_terminal:
                failure = self._supervisor.failure
                if raise_failure and failure is not None:
                    raise failure
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
        supervisor = self._supervisor
        if not supervisor.started:
            if self.state is _S.CLOSED:
                return
            raise ClientClosedError("the client was not started")
        await supervisor.wait_done()
        if supervisor.failure is not None:
            raise supervisor.failure

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close with a close frame (``code``, ``reason``) and stop every task. Idempotent.

        Cancel-safe: cancelling the caller does not interrupt the shutdown, which is bounded by
        ``close_timeout``. Valid in every state, at every moment; closing a ``FAILED`` client waits
        for its teardown and returns.
        """
        await self._supervisor.close(code, reason)

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
        state = self.state
        if state.is_terminal or state is _S.CLOSING:
            raise ClientClosedError(f"send() on a client that is {state.value}")
        await self._outbound.send(message)

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
        return await self._outbound.request(message, timeout, model, self.send)

    # ------------------------------------------------------------------ glue

    def _on_transition(self, old: ConnectionState, event: StateEvent, new: ConnectionState) -> None:
        self._log.debug("state %s --%s--> %s", old.value, event.value, new.value)
        callbacks = self._callbacks
        if callbacks.event:
            callbacks.emit(StateChanged(old, new, event.value))
        if new.is_terminal and self._streams:
            streams, self._streams = self._streams, None
            # At the next step of the loop: the events the terminal move brings (Closed, GaveUp)
            # are emitted right after it and still reach the event streams.
            call_soon: Callable[[Callable[[], object]], object]
            try:
                call_soon = asyncio.get_running_loop().call_soon
            except RuntimeError:
                call_soon = _now_not_later
            for stream in streams:
                call_soon(stream.end)
        waiters = self._state_waiters
        if waiters:
            self._state_waiters = []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)


def _now_not_later(callback: Callable[[], object]) -> None:
    callback()


def _clock() -> float:
    """The running loop's time (what links stamp with), or the monotonic clock outside a loop."""
    try:
        return asyncio.get_running_loop().time()
    except RuntimeError:
        return time.monotonic()


def _name(func: object) -> str:
    return getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or type(func).__name__


def _refresher(
    url_source: Callable[[], str | Awaitable[str]] | None,
    headers_source: Callable[[], Mapping[str, str] | Awaitable[Mapping[str, str]]] | None,
    redactor: Redactor,
) -> Callable[[ConnectOptions], Awaitable[ConnectOptions]]:
    """The options of one connect attempt, from the application's functions."""

    async def refresh(options: ConnectOptions) -> ConnectOptions:
        url: Any = options.url
        headers: Any = options.headers
        try:
            if url_source is not None:
                url = url_source()
                if inspect.isawaitable(url):
                    url = await url
        except Exception as exc:
            raise RefreshFailed(
                f"the URL function for this connect attempt raised: {redactor.text(describe(exc))}"
            ) from exc
        try:
            if headers_source is not None:
                headers = headers_source()
                if inspect.isawaitable(headers):
                    headers = await headers
                headers = dict(headers)
        except Exception as exc:
            raise RefreshFailed(
                f"the headers function for this connect attempt raised: {redactor.text(describe(exc))}"
            ) from exc
        validate_url(url)  # a ConfigError: fatal, the function returns something unusable
        # Masked from now on, wherever wsclient writes: the new token is a secret like the old one.
        redactor.add(connection_secrets(url, headers))
        return dataclasses.replace(options, url=url, headers=headers, secrets=redactor.secrets)

    return refresh


# One shared instance (the models are frozen): a client made without a config costs none of its own.
_DEFAULT_CONFIG = ClientConfig()
