"""``wsclient.sync.Client``: the client for threaded programs and notebooks.

A :class:`Client` here owns an event loop running in a background thread and an async
:class:`wsclient.Client` living on it; every method is a plain blocking call. It works the same from
a script's main thread, from any other thread, and from a thread that already runs an event loop
(a Jupyter kernel, a coroutine under ``asyncio.run``): it never runs anything on the caller's loop.

Handlers run in the thread the application chooses (``handlers=``):

* ``"worker"`` (the default): one worker thread of the client's, fed by a bounded queue
  (``handler_queue`` items), in arrival order. A handler may block and may call the client's
  blocking methods (``send``, ``request``). When the queue is full the next frame waits, so the
  client's own inbound back-pressure applies (``ClientConfig.inbound_overflow``, lossless
  ``"block"`` by default: the reader pauses).
* ``"loop"``: inline on the loop thread, the fastest; a handler that blocks holds up the whole feed
  (reading, heartbeat replies, sends) for as long as it blocks, and it cannot call the blocking
  methods (they would wait on the very thread they block; they raise ``RuntimeError`` instead).
* a :class:`concurrent.futures.Executor` of the application's: handlers run on it one at a time, in
  order, fed by the same bounded queue (the executor is the application's: ``close()`` waits for the
  client's work on it but never shuts it down).

``on_connect`` hooks always run off the loop thread (a login usually waits for its reply), in a
thread of the loop's default executor, which ``close()`` stops.

``close()`` is idempotent and may be called from any thread. From the loop thread, a handler thread
or an ``on_connect`` hook it only schedules the close and returns at once (waiting there would wait
on itself); anywhere else it returns once the connection is closed and every thread the client
started has ended. Messages still queued for the handlers when the client closes are dropped (like
the async client's inbound queue; :attr:`Client.dropped_at_close` counts them); events and errors
queued are still delivered, so ``on_event`` sees the final ``Closed``. A ``KeyboardInterrupt`` (Ctrl-C)
raised while the main thread waits in one of these blocking calls closes the client (close code
1000, reason ``"interrupted"``) and is raised again. A client left open is closed (1001, ``"going
away"``) when it is garbage collected or at interpreter exit; its threads are daemon threads, so
they never keep the interpreter alive.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import logging
import threading
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Iterable, Iterator, Mapping
from concurrent.futures import Executor
from types import TracebackType
from typing import Any, Final, Generic, Literal, Self, TypeVar

from pydantic import BaseModel

from .budget import ConnectGate
from .client import Client as AsyncClient
from .config import ClientConfig
from .dedup import Dedup
from .errors import ClientClosedError, ConfigError
from .events import ClientEvent, ClientStats
from .logs import LogLimiter
from .routing import Registration as AsyncRegistration
from .routing import SequenceGap
from .session import Outgoing
from .session import Subscription as AsyncSubscription
from .state import ConnectionState
from .streams import Overflow, Stream
from .supervisor import Connection as AsyncConnection
from .transport import Connector

__all__ = ["BlockingStream", "Client", "Connection", "HandlerThread", "Registration", "Subscription"]

logger = logging.getLogger("wsclient.sync")

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
F = TypeVar("F", bound=Callable[..., Any])
Data = str | bytes

HandlerThread = Literal["loop", "worker"] | Executor
"""Where handlers run: ``"worker"``, ``"loop"`` or an application's executor."""

INTERRUPT_CLOSE: Final = (1000, "interrupted")
"""The close code and reason of a close caused by Ctrl-C (a ``KeyboardInterrupt``)."""
FINALIZE_CLOSE: Final = (1001, "going away")
"""The close code and reason of a client closed by the garbage collector or at interpreter exit."""

# Queue item kinds. Messages are dropped once the client closes; events and errors never are.
_MESSAGE: Final = 0
_EVENT: Final = 1
_ERROR: Final = 2  # an on_error callback: its own failure is logged, never reported to itself

# An executor's drain job runs at most this many handlers, then queues itself again, so that a busy
# feed takes turns with the application's other work on a shared executor.
_EXECUTOR_BATCH: Final = 256
# The worker takes up to this many items per turn of the lock.
_WORKER_BATCH: Final = 64

# What a blocking iteration takes from a stream's buffer in one hop to the loop thread.
_TAKE_BATCH: Final = 256


class _Current(threading.local):
    """Per thread: the runtime whose handler (or on_connect hook) this thread is running."""

    runtime: _Runtime | None = None


_current = _Current()


# ---------------------------------------------------------------------------------------------- handoff


def _release(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _Handoff:
    """The bounded queue from the loop thread to the handler thread (the worker, or an executor).

    The loop side never blocks: :meth:`put` appends, and when the queue is full it returns a future
    that the client awaits before it dispatches the next frame (the same contract as a slow async
    handler), resolved by the handler side once there is room again.
    """

    def __init__(
        self,
        maxsize: int,
        executor: Executor | None,
        name: str,
        report: _Reporter,
    ) -> None:
        self._maxsize = maxsize
        self._executor = executor
        self._name = name
        self._report = report
        self._items: deque[tuple[Callable[..., Any], tuple[Any, ...], int]] = deque()
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._room: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: asyncio.Future[None] | None = None
        self._thread: threading.Thread | None = None
        self._scheduled = False  # executor: a drain job is queued or running
        self._waiting = False  # worker: waiting for an item (only then is it notified)
        self._stopping = False
        self.runtime: _Runtime | None = None
        self.closing = False
        """Set when the client closes: queued messages are dropped from then on."""
        self.dropped = 0
        """Messages dropped because the client closed before their handler ran."""

    # -- the loop side --------------------------------------------------------------------------------

    def bind(self, loop: asyncio.AbstractEventLoop, runtime: _Runtime) -> None:
        """Attach to the client's loop and start the worker thread (worker mode)."""
        self._loop = loop
        self.runtime = runtime
        self._report.loop = loop
        self._idle = loop.create_future()
        if self._executor is None:
            self._thread = threading.Thread(target=self._work, name=self._name, daemon=True)
            self._thread.start()

    def put(self, fn: Callable[..., Any], args: tuple[Any, ...], kind: int) -> asyncio.Future[None] | None:
        """Queue ``fn(*args)``; for a message and a full queue, a future to await before the next."""
        room = None
        with self._lock:
            items = self._items
            items.append((fn, args, kind))
            if self._executor is None:
                if self._waiting:
                    self._ready.notify()
                submit = False
            else:
                submit = not self._scheduled
                self._scheduled = True
            if kind == _MESSAGE and len(items) >= self._maxsize:
                room = self._room
                if room is None:
                    assert self._loop is not None
                    room = self._room = self._loop.create_future()
        if submit:
            self._submit()
        return room

    async def finish(self) -> None:
        """The client is closed: drop queued messages, run queued events, wait for the handler
        thread to be done (the handler running now is never interrupted)."""
        self.closing = True
        with self._lock:
            self._stopping = True
            self._ready.notify()
            room, self._room = self._room, None
            busy = self._thread is not None or self._scheduled
        if room is not None:
            _release(room)
        idle = self._idle
        if idle is not None:
            if not busy:
                _release(idle)
            await idle
        if self.dropped:
            logger.info("%s: %d queued message(s) dropped at close", self._name, self.dropped)

    def join(self) -> None:
        """Join the worker thread (it has signalled its end already)."""
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    # -- the handler side -----------------------------------------------------------------------------

    def _take(self, limit: int) -> list[tuple[Callable[..., Any], tuple[Any, ...], int]]:
        """Up to ``limit`` items, with the lock held; wakes the loop side when there is room again.
        Taken in batches: a lock round and a wait per message would cost more than most handlers."""
        items = self._items
        count = min(len(items), limit)
        batch = [items.popleft() for _ in range(count)]
        room = self._room
        if room is not None and len(items) < self._maxsize:
            self._room = None
            self._call_soon(_release, room)
        return batch

    def _call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        loop = self._loop
        if loop is not None:
            # A closed loop: nobody waits any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(fn, *args)

    def _run(self, item: tuple[Callable[..., Any], tuple[Any, ...], int]) -> None:
        fn, args, kind = item
        if kind == _MESSAGE and self.closing:
            self.dropped += 1
            return
        try:
            result = fn(*args)
        except Exception as exc:
            self._report.failed(fn, args, kind, exc)
            return
        if result is not None and inspect.isawaitable(result):
            # Nothing would ever await it in this thread: say so rather than lose it silently.
            if inspect.iscoroutine(result):
                result.close()
            self._report.failed(
                fn,
                args,
                kind,
                TypeError(
                    f"{_name(fn)} returned an awaitable: "
                    "wsclient.sync.Client runs plain functions (use wsclient.Client)"
                ),
            )

    def _work(self) -> None:
        """The worker thread: run queued handlers in order until the client has closed."""
        _current.runtime = self.runtime
        ready = self._ready
        run = self._run
        try:
            while True:
                with ready:
                    while not self._items and not self._stopping:
                        self._waiting = True
                        ready.wait()
                        self._waiting = False
                    batch = self._take(_WORKER_BATCH)
                if not batch:
                    break
                for item in batch:
                    run(item)
        finally:
            _current.runtime = None
            if self._idle is not None:
                self._call_soon(_release, self._idle)

    def _submit(self) -> None:
        assert self._executor is not None
        try:
            self._executor.submit(self._drain)
        except RuntimeError as exc:  # the application shut its executor down
            with self._lock:
                lost = sum(1 for _, _, kind in self._items if kind == _MESSAGE)
                self._items.clear()
                self._scheduled = False
                room, self._room = self._room, None
                stopping = self._stopping
            self.dropped += lost
            logger.error(
                "%s: the handler executor refused work (%s): %d message(s) dropped", self._name, exc, lost
            )
            if room is not None:
                self._call_soon(_release, room)
            if stopping and self._idle is not None:
                self._call_soon(_release, self._idle)

    def _drain(self) -> None:
        """An executor job: run queued handlers in order, one at a time, then end (or queue itself
        again after a batch)."""
        _current.runtime = self.runtime
        run = self._run
        try:
            with self._lock:
                batch = self._take(_EXECUTOR_BATCH)
                if not batch:
                    self._scheduled = False
                    stopping = self._stopping
            if batch:
                for item in batch:
                    run(item)
                # Still scheduled: whatever came meanwhile runs in a new job, after the executor's
                # other work has had a turn.
                self._submit()
                return
        finally:
            _current.runtime = None
        if stopping and self._idle is not None:
            self._call_soon(_release, self._idle)


class _Reporter:
    """Failures of callbacks run in the handler thread: logged (rate-limited), counted in
    ``stats.handler_errors`` and handed to the ``on_error`` callbacks right there, in order (an
    ``on_error`` callback's own failure is only logged). Apart from the facade, which a finalizer
    must be able to collect."""

    def __init__(self, client: AsyncClient) -> None:
        self._client = client
        self._limiter = LogLimiter()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.callbacks: tuple[Callable[[object, BaseException], Any], ...] = ()

    def failed(self, fn: Callable[..., Any], args: tuple[Any, ...], kind: int, exc: Exception) -> None:
        what = {_MESSAGE: "handler", _EVENT: "event callback", _ERROR: "on_error callback"}[kind]
        suppressed = self._limiter.allow(what)
        if suppressed is not None:
            logger.error("%s %s raised%s", what, _name(fn), LogLimiter.suffix(suppressed), exc_info=exc)
        if kind == _ERROR:
            return
        if kind == _MESSAGE:
            counters = self._client._session.counters

            def count() -> None:
                counters.handler_errors += 1

            try:
                if self.loop is None:
                    raise RuntimeError
                self.loop.call_soon_threadsafe(count)  # the loop thread owns the counters
            except RuntimeError:
                count()  # the loop has ended: nothing else touches them
        item = args[0] if args else None
        for callback in self.callbacks:
            try:
                callback(item, exc)
            except Exception as error:
                self.failed(callback, (item, exc), _ERROR, error)


# ---------------------------------------------------------------------------------------------- runtime


class _Runtime:
    """The loop thread and what it runs; holds no reference to the facade, so that a finalizer can
    close a client the application dropped."""

    def __init__(self, client: AsyncClient, handoff: _Handoff | None, name: str) -> None:
        self.client = client
        self.handoff = handoff
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.ident: int | None = None
        self._lock = threading.Lock()
        self._stop: asyncio.Future[tuple[int, str]] | None = None
        self._accepting = False
        self._pending: set[concurrent.futures.Future[Any]] = set()
        self.close_request: tuple[int, str] | None = None

    # -- threads --------------------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        return self.thread is not None

    @property
    def running(self) -> bool:
        """Whether the loop takes calls (started, and its thread not ending)."""
        return self._accepting

    def on_own_thread(self) -> bool:
        """Whether the caller is the loop thread, or a handler or hook of this client."""
        return threading.get_ident() == self.ident or _current.runtime is self

    def on_loop_thread(self) -> bool:
        return threading.get_ident() == self.ident

    def start(self, *, connect: bool) -> concurrent.futures.Future[None]:
        """Start the loop thread; the future says when ``client.start()`` ran (or failed)."""
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self.loop = asyncio.new_event_loop()
        # A daemon: a client the application forgot to close must not keep the interpreter alive
        # (the finalizer closes it at exit, before daemon threads are stopped).
        thread = threading.Thread(target=self._main, args=(started, connect), name=self.name, daemon=True)
        self.thread = thread
        self._accepting = True
        thread.start()
        return started

    def _main(self, started: concurrent.futures.Future[None], connect: bool) -> None:
        loop = self.loop
        assert loop is not None
        self.ident = threading.get_ident()
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._lifetime(started, connect))
        except BaseException as exc:  # the loop thread must end cleanly whatever happens
            if not started.done():
                started.set_exception(exc)
            logger.exception("%s: the client's loop ended with an error", self.name)
        finally:
            with self._lock:
                self._accepting = False
            try:
                _cancel_all_tasks(loop)
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            except RuntimeError:  # interpreter shutdown: no thread can be started to join the executor
                pass
            finally:
                asyncio.set_event_loop(None)
                loop.close()
                if self.handoff is not None:
                    self.handoff.join()
                # Calls that slipped in while the loop was ending never ran: their callers must not
                # wait for ever.
                with self._lock:
                    pending, self._pending = self._pending, set()
                for future in pending:
                    future.cancel()

    async def _lifetime(self, started: concurrent.futures.Future[None], connect: bool) -> None:
        loop = asyncio.get_running_loop()
        client = self.client
        with self._lock:
            stop = self._stop = loop.create_future()
            request = self.close_request
        handoff = self.handoff
        try:
            if handoff is not None:
                handoff.bind(loop, self)
            if connect and request is None:
                await client.start()
            started.set_result(None)
            if request is None:
                request = await stop
            await client.close(*request)
        except BaseException as exc:
            if not started.done():
                started.set_exception(exc)
                await client.close()
            raise
        finally:
            if handoff is not None:
                await handoff.finish()

    def request_close(self, code: int, reason: str) -> bool:
        """Ask the loop thread to close the client; False if a close was asked for already."""
        with self._lock:
            if self.close_request is not None:
                return False
            request = self.close_request = (code, reason)
            stop, loop = self._stop, self.loop
        if self.handoff is not None:
            # From now on queued messages are dropped: a handler that closed sees none after it.
            self.handoff.closing = True
        if stop is not None and loop is not None:
            if self.on_loop_thread():
                _resolve(stop, request)
            else:
                with contextlib.suppress(RuntimeError):  # the loop has ended already
                    loop.call_soon_threadsafe(_resolve, stop, request)
        return True

    def join(self, timeout: float | None = None) -> None:
        thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # -- calls into the loop ----------------------------------------------------------------------------

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T] | None:
        """Run ``coro`` on the loop; None (and the coroutine closed) if the loop takes no more calls."""
        with self._lock:
            loop = self.loop
            if not self._accepting or loop is None:
                coro.close()
                return None
            future = asyncio.run_coroutine_threadsafe(coro, loop)
            self._pending.add(future)
        future.add_done_callback(self._done)
        return future

    def _done(self, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._pending.discard(future)

    @staticmethod
    def finalize(runtime: _Runtime, timeout: float) -> None:
        """Close a client the application dropped, or left open at interpreter exit (bounded)."""
        if runtime.thread is None or not runtime.running:
            return
        runtime.request_close(*FINALIZE_CLOSE)
        if not runtime.on_own_thread():
            runtime.join(timeout)


def _resolve(future: asyncio.Future[tuple[int, str]], value: tuple[int, str]) -> None:
    if not future.done():
        future.set_result(value)


def _cancel_all_tasks(loop: asyncio.AbstractEventLoop) -> None:
    """What ``asyncio.run`` does before closing its loop: cancel what is left, let it unwind."""
    tasks = asyncio.all_tasks(loop)
    if not tasks:
        return
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))


# ---------------------------------------------------------------------------------------------- wrappers


class Connection:
    """The connection being opened, as ``on_connect`` hooks see it: blocking ``send``/``request``."""

    __slots__ = ("_conn", "_runtime")

    def __init__(self, conn: AsyncConnection, runtime: _Runtime) -> None:
        self._conn = conn
        self._runtime = runtime

    @property
    def id(self) -> int:
        """The connection's number (1 for the first)."""
        return self._conn.id

    @property
    def reconnect(self) -> bool:
        """Whether this is a reconnect."""
        return self._conn.reconnect

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol the server chose."""
        return self._conn.subprotocol

    def send(self, message: Outgoing) -> None:
        """Send ``message`` on this connection now, ahead of the replayed subscriptions."""
        _blocking(self._runtime, self._conn.send(message), "Connection.send()")

    def request(self, message: Any, *, timeout: float, model: type[M] | None = None) -> Any:
        """Send ``message`` with a correlation id on this connection and return the reply (a login
        waiting for its acknowledgement)."""
        return _blocking(
            self._runtime, self._conn.request(message, timeout=timeout, model=model), "Connection.request()"
        )

    def __repr__(self) -> str:
        return f"<wsclient.sync.Connection id={self.id} reconnect={self.reconnect}>"


class Registration:
    """A handler registered with :meth:`Client.on`; :meth:`cancel` unregisters it."""

    __slots__ = ("_registration", "_runtime", "handler")

    def __init__(
        self, registration: AsyncRegistration, runtime: _Runtime, handler: Callable[..., Any]
    ) -> None:
        self._registration = registration
        self._runtime = runtime
        self.handler = handler
        """The application's handler."""

    @property
    def model(self) -> type[BaseModel]:
        """The model the handler is registered for."""
        return self._registration.model

    @property
    def active(self) -> bool:
        """False once cancelled."""
        return self._registration.active

    def cancel(self) -> None:
        """Unregister the handler: no message is dispatched to it after this call. Idempotent."""
        _on_loop(self._runtime, self._registration.cancel)

    def __repr__(self) -> str:
        state = "" if self.active else ", cancelled"
        return f"<wsclient.sync.Registration {self.model.__name__} -> {_name(self.handler)}{state}>"


class Subscription:
    """A subscription made with :meth:`Client.subscribe`, replayed after every reconnect."""

    __slots__ = ("_runtime", "_subscription")

    def __init__(self, subscription: AsyncSubscription, runtime: _Runtime) -> None:
        self._subscription = subscription
        self._runtime = runtime

    @property
    def message(self) -> Outgoing:
        """The subscribe message (or the function building it)."""
        return self._subscription.message

    @property
    def active(self) -> bool:
        """False once cancelled."""
        return self._subscription.active

    def send_delta(self, message: Outgoing) -> bool:
        """Queue a change to this subscription for the connection it went out on (see
        :meth:`wsclient.Subscription.send_delta`); whether it was queued."""
        return _on_loop(self._runtime, lambda: self._subscription.send_delta(message))

    def cancel(self) -> None:
        """Forget this subscription and send its unsubscribe message (if any) on the connection the
        subscribe went out on. Blocks until handed over; idempotent."""
        if not self._runtime.running:
            # Not started, or ended: no connection to unsubscribe on, only the bookkeeping is left.
            _run_now(self._subscription.cancel())
            return
        _blocking(self._runtime, self._subscription.cancel(), "Subscription.cancel()")

    def __repr__(self) -> str:
        return f"<wsclient.sync.Subscription active={self.active}>"


class BlockingStream(Generic[T]):
    """``for item in client.messages(Trade, timeout=5):`` a client's messages (or events), in
    arrival order, as a blocking iterator.

    Iteration ends once the client is closed (or has failed) and what was buffered has been read.
    ``timeout`` bounds the wait for each next item: when nothing comes within it, ``next()`` raises
    :class:`TimeoutError` (as :func:`concurrent.futures.as_completed` does); the stream stays usable.
    ``close()`` (or leaving ``with``) unregisters it earlier. A ``KeyboardInterrupt`` while waiting
    closes the client and is raised again.
    """

    __slots__ = ("_client", "_local", "_stream", "timeout")

    def __init__(self, stream: Stream[T], client: Client, timeout: float | None) -> None:
        self._stream = stream
        self._client = client
        self._local: deque[T] = deque()
        self.timeout = timeout
        """The longest wait for the next item (seconds; ``None``: no limit)."""

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        local = self._local
        if local:
            return local.popleft()
        runtime = self._client._runtime
        if runtime.on_loop_thread():
            raise _on_loop_error("iterating messages()/events()")
        if not runtime.started:
            raise ClientClosedError("iterating messages()/events() of a client that was not started")
        stream = self._stream
        future = runtime.submit(_take(stream, self.timeout))
        if future is not None:
            try:
                batch = _wait(runtime, future)
            except ClientClosedError:
                batch = None  # the loop ended while this call waited: read what is left below
            if batch is not None:
                if not batch:
                    raise StopIteration
                local.extend(batch)
                return local.popleft()
        # The loop has ended: nothing touches the stream any more, what it buffered can be read here.
        buffer = stream._buffer
        if buffer:
            return buffer.popleft()
        raise StopIteration

    @property
    def dropped(self) -> int:
        """Items dropped by a ``drop_*`` overflow policy."""
        return self._stream.dropped

    def close(self) -> None:
        """Unregister from the client and end the iteration (what is buffered can still be read)."""
        stream = self._stream
        _on_loop(self._client._runtime, lambda: _end_stream(stream))

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self._local) + len(self._stream)

    def __repr__(self) -> str:
        return f"<wsclient.sync.BlockingStream {self._stream!r}>"


async def _take(stream: Stream[T], timeout: float | None) -> list[T]:
    """The next item (waiting up to ``timeout``) and whatever else is buffered; [] once ended."""
    try:
        async with asyncio.timeout(timeout):
            first = await anext(stream)
    except StopAsyncIteration:
        return []
    items = [first]
    while len(stream) and len(items) < _TAKE_BATCH:
        items.append(await anext(stream))  # buffered: returns without waiting, and frees room
    return items


# ---------------------------------------------------------------------------------------------- helpers


def _on_loop_error(what: str) -> RuntimeError:
    return RuntimeError(
        f"{what} from the client's loop thread (a handler with handlers='loop') would wait on the "
        "thread it blocks: use handlers='worker', or wsclient.Client with async handlers"
    )


def _wait(runtime: _Runtime, future: concurrent.futures.Future[T]) -> T:
    """Wait for a call into the loop; Ctrl-C meanwhile closes the client and is raised again."""
    try:
        return future.result()
    except concurrent.futures.CancelledError:
        raise ClientClosedError("the client was closed while this call waited") from None
    except KeyboardInterrupt:
        future.cancel()
        _interrupted(runtime)
        raise


def _interrupted(runtime: _Runtime) -> None:
    if runtime.request_close(*INTERRUPT_CLOSE):
        logger.info("%s: interrupted (KeyboardInterrupt): closing", runtime.name)
    runtime.join()


def _blocking(runtime: _Runtime, coro: Coroutine[Any, Any, T], what: str) -> T:
    """Run ``coro`` on the client's loop and wait for its result."""
    if runtime.on_loop_thread():
        coro.close()
        raise _on_loop_error(what)
    future = runtime.submit(coro)
    if future is None:
        raise ClientClosedError(f"{what} on a client that is {_closed_state(runtime)}")
    return _wait(runtime, future)


def _closed_state(runtime: _Runtime) -> str:
    return runtime.client.state.value if runtime.started else "not started"


async def _invoke(fn: Callable[[], T]) -> T:
    return fn()


def _end_stream(stream: Stream[Any]) -> None:
    """``stream.aclose()`` without its await: unregister from the client, end the stream."""
    unregister, stream._unregister = stream._unregister, None
    if unregister is not None:
        unregister()
    stream.end()


def _run_now(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine that cannot suspend (the client's loop has ended, no link is left) here."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise ClientClosedError("the client's loop has ended")


def _on_loop(runtime: _Runtime, fn: Callable[[], T]) -> T:
    """Run the quick, non-blocking ``fn`` where the client's state lives: on the loop thread while
    it runs (registrations change what the reader uses), else right here (nothing else runs)."""
    if runtime.on_loop_thread() or not runtime.running:
        return fn()
    future = runtime.submit(_invoke(fn))
    if future is None:  # the loop ended meanwhile
        return fn()
    return _wait(runtime, future)


def _check_sync(callback: object, what: str) -> None:
    if not callable(callback):
        raise TypeError(f"{what} takes a function, got {callback!r}")
    if inspect.iscoroutinefunction(callback) or inspect.iscoroutinefunction(
        getattr(callback, "__call__", None)  # noqa: B004 - an object whose __call__ is async
    ):
        raise TypeError(
            f"{what}: {_name(callback)} is async; wsclient.sync.Client runs plain functions "
            "(use wsclient.Client for async handlers)"
        )


def _name(func: object) -> str:
    return getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or type(func).__name__


_client_ids = iter(range(1, 1 << 62))


# ---------------------------------------------------------------------------------------------- client


class Client:
    """A blocking WebSocket client that stays connected, for threaded programs and notebooks.

    The constructor takes what :class:`wsclient.Client` takes, plus where handlers run::

        with wsclient.sync.Client(url, config=ClientConfig(discriminator="type")) as client:
            client.on(Trade, print)
            client.subscribe({"op": "subscribe", "channel": "trades", "symbol": "BTC-USD"})
            client.wait_open(timeout=5)
            client.run_forever()          # until close(), a failure, or Ctrl-C

    Args:
        url: The ``ws://`` / ``wss://`` URL, or a function asked at every connect attempt.
        config: The :class:`~wsclient.ClientConfig`.
        headers: Handshake headers (or a function asked at every attempt).
        secrets: Strings masked wherever wsclient writes.
        connector: Another transport backend (see :class:`wsclient.Client`).
        connect_gate: A shared connect quota.
        dedup_key: ``message -> (stream, seq)`` for exactly-once delivery through rotations.
        dedup: A shared de-duplicator (needs ``dedup_key``).
        handlers: ``"worker"`` (default: a worker thread of the client's, in order), ``"loop"``
            (inline on the loop thread: fastest, but a blocking handler blocks the feed) or an
            application's :class:`concurrent.futures.Executor` (one at a time, in order).
        handler_queue: Bound of the queue feeding the worker or executor (which takes its items
            in batches of up to 64, or 256 for an executor); when full, the client's inbound
            back-pressure applies (``ClientConfig.inbound_overflow``).

    Raises:
        ConfigError: A bad argument, naming it and the fix (nothing is started then).
    """

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
        handlers: HandlerThread = "worker",
        handler_queue: int = 1000,
    ) -> None:
        executor: Executor | None = None
        if isinstance(handlers, Executor):
            executor = handlers
        elif handlers not in ("worker", "loop"):
            raise ConfigError(
                f"handlers must be 'worker', 'loop' or a concurrent.futures.Executor, got {handlers!r}"
            )
        if isinstance(handler_queue, bool) or not isinstance(handler_queue, int) or handler_queue < 1:
            raise ConfigError(
                f"handler_queue must be a whole number of messages, at least 1, got {handler_queue!r}"
            )
        # Built here, in the caller's thread: a bad argument fails before any thread starts.
        client = self._client = AsyncClient(
            url,
            config=config,
            headers=headers,
            secrets=secrets,
            connector=connector,
            connect_gate=connect_gate,
            dedup_key=dedup_key,
            dedup=dedup,
        )
        number = next(_client_ids)
        self._handlers: HandlerThread = handlers
        reporter = self._reporter = _Reporter(client)
        handoff = None
        if handlers != "loop":
            handoff = _Handoff(handler_queue, executor, f"wsclient-handlers-{number}", reporter)
        self._handoff = handoff
        self._runtime = _Runtime(client, handoff, f"wsclient-loop-{number}")
        self._finalizer = weakref.finalize(
            self, _Runtime.finalize, self._runtime, client.config.close_timeout + 1.0
        )

    # ------------------------------------------------------------------ registration

    def _deliver(self, callback: Callable[..., Any], kind: int) -> Callable[..., Any]:
        """What the async client calls: the callback itself (loop mode), or a hand-off to the
        handler thread."""
        handoff = self._handoff
        if handoff is None:
            return callback
        put = handoff.put

        def deliver(*args: Any) -> Any:
            return put(callback, args, kind)

        deliver.__qualname__ = _name(callback)
        return deliver

    def on(
        self,
        model: type[M],
        handler: Callable[[M], Any] | None = None,
        *,
        match: Callable[[Any], bool] | None = None,
        seq_key: Callable[[M], tuple[Any, int] | None] | None = None,
        tag: Any = None,
        with_frame: bool | None = None,
    ) -> Any:
        """Route messages that validate as ``model`` to ``handler(message)``, in arrival order.

        As :meth:`wsclient.Client.on` (``match``, ``seq_key``, ``tag``, ``with_frame``), with plain
        functions run in the client's handler thread. As a decorator, returns the function; called
        with a handler, returns a :class:`Registration`.
        """
        if handler is None:

            def decorator(func: Callable[[M], Any]) -> Callable[[M], Any]:
                self.on(model, func, match=match, seq_key=seq_key, tag=tag, with_frame=with_frame)
                return func

            return decorator
        _check_sync(handler, "on()")
        if with_frame is None:
            with_frame = bool(getattr(handler, "wants_frame", False))
        target = self._deliver(handler, _MESSAGE)
        client = self._client
        registration = _on_loop(
            self._runtime,
            lambda: client.on(model, target, match=match, seq_key=seq_key, tag=tag, with_frame=with_frame),
        )
        return Registration(registration, self._runtime, handler)

    def on_message(self, callback: Callable[[Data], Any]) -> Callable[[Data], Any]:
        """Register ``callback(frame)`` for every inbound frame (``str`` or ``bytes``), before typed
        handlers, in the handler thread."""
        _check_sync(callback, "on_message()")
        target = self._deliver(callback, _MESSAGE)
        _on_loop(self._runtime, lambda: self._client.on_message(target))
        return callback

    def on_unknown(self, callback: Callable[[Data], Any]) -> Callable[[Data], Any]:
        """Register ``callback(frame)`` for frames no registered model claims."""
        _check_sync(callback, "on_unknown()")
        target = self._deliver(callback, _MESSAGE)
        _on_loop(self._runtime, lambda: self._client.on_unknown(target))
        return callback

    def on_gap(self, callback: Callable[[SequenceGap], Any]) -> Callable[[SequenceGap], Any]:
        """Register ``callback(gap)`` for sequence gaps of models with a ``seq_key``."""
        _check_sync(callback, "on_gap()")
        target = self._deliver(callback, _EVENT)
        _on_loop(self._runtime, lambda: self._client.on_gap(target))
        return callback

    def on_event(self, callback: Callable[[ClientEvent], Any]) -> Callable[[ClientEvent], Any]:
        """Register ``callback(event)`` for lifecycle events, in order with the messages. Events
        never wait for room in the handler queue, and those queued at close are still delivered."""
        _check_sync(callback, "on_event()")
        target = self._deliver(callback, _EVENT)
        _on_loop(self._runtime, lambda: self._client.on_event(target))
        return callback

    def on_error(
        self, callback: Callable[[object, BaseException], Any]
    ) -> Callable[[object, BaseException], Any]:
        """Register ``callback(item, exc)`` for handler errors (also those raised in the handler
        thread) and invalid frames."""
        _check_sync(callback, "on_error()")
        self._reporter.callbacks = (*self._reporter.callbacks, callback)
        target = self._deliver(callback, _ERROR)
        _on_loop(self._runtime, lambda: self._client.on_error(target))
        return callback

    def on_connect(self, hook: F) -> F:
        """Register ``hook(connection)``, run at every (re)connect before the subscriptions are
        replayed, with a :class:`Connection` whose ``send``/``request`` block (a login).

        Hooks run in a thread of the client's loop's default executor, never on the loop thread,
        whatever ``handlers`` says; they are bounded by ``open_timeout`` like async hooks. A hook
        that raises fails the attempt (retried by the reconnect policy).

        Register it before :meth:`start` (before ``with client:``): the client connects on its own
        thread, so a hook registered after the start may come too late for the connection being
        opened, and then first runs at the next reconnect (a warning says so when it happens).
        """
        _check_sync(hook, "on_connect()")
        runtime = self._runtime

        def run(conn: AsyncConnection) -> None:
            _current.runtime = runtime
            try:
                hook(Connection(conn, runtime))
            finally:
                _current.runtime = None

        async def in_thread(conn: AsyncConnection) -> None:
            await asyncio.to_thread(run, conn)

        in_thread.__qualname__ = _name(hook)
        client = self._client

        def register() -> int | None:
            client.on_connect(in_thread)
            return client._supervisor.hooked_link()

        late = _on_loop(runtime, register)
        if late is not None:
            # The client connects on its own thread: whether a hook registered after start() is in
            # time for the first connection is a race, which the application should hear of.
            logger.warning(
                "on_connect hook %s registered after connection %d ran its hooks: it first runs at "
                "the next reconnect (register hooks before start() / `with client:`)",
                _name(hook),
                late,
            )
        return hook

    def subscribe(self, message: Outgoing, unsubscribe: Outgoing | None = None) -> Subscription:
        """Remember ``message`` and send it now (if open) and after every reconnect, in order."""
        subscription = _on_loop(self._runtime, lambda: self._client.subscribe(message, unsubscribe))
        return Subscription(subscription, self._runtime)

    @property
    def subscriptions(self) -> tuple[Subscription, ...]:
        """The active subscriptions, in replay order."""
        runtime = self._runtime
        return tuple(Subscription(s, runtime) for s in _on_loop(runtime, lambda: self._client.subscriptions))

    def messages(
        self,
        *models: type[BaseModel],
        maxsize: int = 1000,
        overflow: Overflow = "block",
        timeout: float | None = None,
    ) -> BlockingStream[Any]:
        """``for msg in client.messages(Trade, timeout=5):`` the messages of these models in arrival
        order (every raw frame with no model); see :class:`BlockingStream` and
        :meth:`wsclient.Client.messages` for ``maxsize`` and ``overflow``. ``timeout`` bounds the
        wait for each next message (then ``TimeoutError``). Call it before ``start()`` to miss
        nothing."""
        client = self._client
        stream = _on_loop(self._runtime, lambda: client.messages(*models, maxsize=maxsize, overflow=overflow))
        return BlockingStream(stream, self, timeout)

    def events(
        self, maxsize: int = 1000, overflow: Overflow = "drop_oldest", timeout: float | None = None
    ) -> BlockingStream[ClientEvent]:
        """``for event in client.events(timeout=5):`` lifecycle events in order (see
        :meth:`wsclient.Client.events`); ends like :meth:`messages`."""
        stream = _on_loop(self._runtime, lambda: self._client.events(maxsize=maxsize, overflow=overflow))
        return BlockingStream(stream, self, timeout)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the client's threads and begin connecting in the background; returns at once
        (see :meth:`wait_open`). Raises :class:`~wsclient.ClientClosedError` if already started."""
        runtime = self._runtime
        if runtime.started:
            raise ClientClosedError(f"start() on a client that is {self.state.value}")
        _wait(runtime, runtime.start(connect=True))

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def wait_open(self, timeout: float | None = None) -> None:
        """Block until the client is ``OPEN``; raise its failure if it gives up, ``TimeoutError``
        after ``timeout`` seconds."""
        client = self._client
        _blocking(self._runtime, client.wait_open(timeout), "wait_open()")

    def wait_state(
        self, predicate: Callable[[ConnectionState], bool], timeout: float | None = None
    ) -> ConnectionState:
        """Block until ``predicate(state)`` holds; return that state (``TimeoutError`` on timeout)."""
        return _blocking(self._runtime, self._client.wait_state(predicate, timeout), "wait_state()")

    def wait_closed(self, timeout: float | None = None) -> None:
        """Block until the client is closed (by :meth:`close` from anywhere, a handler included,
        then until its threads have ended) or has failed (raises :class:`~wsclient.GaveUpError`;
        ``close()`` then releases the threads). ``TimeoutError`` after ``timeout`` seconds.

        Raises ``RuntimeError`` from a handler or hook of this client: the close waits for them.
        """
        runtime = self._runtime
        if runtime.on_own_thread():
            raise RuntimeError(
                "wait_closed()/run_forever() from the client's own handler or hook would wait for "
                "itself: call close() there (it schedules the close and returns)"
            )
        if not runtime.started:
            if self.state is ConnectionState.CLOSED:
                return
            raise ClientClosedError("wait_closed() on a client that was not started")
        future = runtime.submit(_wait_closed(self._client, timeout))
        if future is not None:
            with contextlib.suppress(ClientClosedError):  # the loop ended while waiting: closed
                _wait(runtime, future)
        if runtime.close_request is not None:
            try:
                runtime.join()
            except KeyboardInterrupt:
                _interrupted(runtime)
                raise
        failure = self._client._supervisor.failure
        if failure is not None:
            raise failure

    def run_forever(self) -> None:
        """Start if not started, then block until the client is closed (from a handler, another
        thread, or Ctrl-C, which closes it and raises ``KeyboardInterrupt`` again) or has failed
        (raises :class:`~wsclient.GaveUpError`)."""
        if not self._runtime.started:
            self.start()
        self.wait_closed()

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close with a close frame and stop every thread the client started. Idempotent, from any
        thread.

        From the loop thread, a handler or an ``on_connect`` hook this schedules the close and
        returns at once (waiting there would wait on itself; :meth:`wait_closed` elsewhere waits
        for the end); from anywhere else it returns once everything has stopped. The handler
        running at that moment is let finish; queued messages are dropped.
        """
        runtime = self._runtime
        if not runtime.started:
            # Never started: close the async client (IDLE -> CLOSED) on a loop of its own, never on
            # a loop the caller may be running (a notebook's).
            runtime.request_close(code, reason)
            runtime.start(connect=False)
        else:
            runtime.request_close(code, reason)
        # Closed on request: nothing is left for the finalizer (which would keep the runtime alive).
        self._finalizer.detach()
        if runtime.on_own_thread():
            return
        # A Ctrl-C here (a second one, say) stops the wait, not the close: the threads are daemons.
        runtime.join()

    # ------------------------------------------------------------------ sending

    def send(self, message: Outgoing) -> None:
        """Send ``message`` (dict/list as JSON, pydantic model as JSON, str, bytes); blocks until the
        socket took it, or it is queued in the outbox while disconnected. See
        :meth:`wsclient.Client.send` for the errors."""
        _blocking(self._runtime, self._client.send(message), "send()")

    def request(self, message: Any, *, timeout: float, model: type[M] | None = None) -> Any:
        """Send ``message`` with a fresh correlation id and block until the reply carrying it (see
        :meth:`wsclient.Client.request`); ``RequestTimeout`` after ``timeout`` seconds."""
        coro = self._client.request(message, timeout=timeout, model=model)
        return _blocking(self._runtime, coro, "request()")

    # ------------------------------------------------------------------ state

    @property
    def state(self) -> ConnectionState:
        """The current :class:`~wsclient.ConnectionState`."""
        return self._client.state

    @property
    def stats(self) -> ClientStats:
        """A snapshot of the counters (taken on the loop thread, so it is consistent)."""
        return _on_loop(self._runtime, lambda: self._client.stats)

    @property
    def url(self) -> str:
        """The URL with credentials masked."""
        return self._client.url

    @property
    def config(self) -> ClientConfig:
        """The configuration this client was built with."""
        return self._client.config

    @property
    def handlers(self) -> HandlerThread:
        """Where handlers run: ``"worker"``, ``"loop"`` or the application's executor."""
        return self._handlers

    @property
    def dropped_at_close(self) -> int:
        """Messages that were queued for the handler thread when the client closed, not handled."""
        return self._handoff.dropped if self._handoff is not None else 0

    def __repr__(self) -> str:
        handlers = self._handlers
        return f"<wsclient.sync.Client {self._client.url} state={self.state.value} handlers={handlers!r}>"


async def _wait_closed(client: AsyncClient, timeout: float | None) -> None:
    async with asyncio.timeout(timeout):
        try:
            await client.wait_closed()
        except ClientClosedError:
            pass
        except Exception:  # a failure: raised by the caller from the supervisor's record
            pass
