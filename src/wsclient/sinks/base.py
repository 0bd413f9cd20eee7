"""What every sink shares: turning a message into (key, id, payload), and the window of publishes
not yet acknowledged, bounded, retried in order, with back-pressure into the client.

The window is sans-I/O: it holds entries in the order the handlers produced them, says which to
send next, takes acknowledgements and failures, and resolves the futures the handlers wait on when
it is full. A sink's I/O loop (:mod:`wsclient.sinks.nats`, :mod:`wsclient.sinks.redis`) drives it.

Why the order is kept: a failure or a lost acknowledgement rewinds the window to its oldest
unacknowledged entry and sends everything from there again, in the original order ("go back N"),
rather than retrying only the failed entry. The bus drops the copies of what it already stored (by
message id), so the stored order is the handlers' order, also across a reconnect. Only an entry that
never reached the bus, or that it refused, while later ones of the same key were stored on the same
connection can land after them: a refusal, or bytes lost by a middlebox on a live connection (TCP
itself never drops them). That is counted in :attr:`SinkStats.reordered`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Literal, Self, TypeVar

from pydantic import BaseModel
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential, wait_random

from .._tasks import cancel_and_wait
from ..codec import Data
from ..logs import LogLimiter

__all__ = ["Payload", "SinkClosedError", "SinkStats", "WindowSink"]

_log = logging.getLogger("wsclient.sinks")

R = TypeVar("R")

Payload = Literal["raw", "json"] | Callable[[Any], bytes]
"""``"raw"``: the frame's bytes as received; ``"json"``: the model's JSON; or a function of the
message returning bytes."""


class SinkClosedError(RuntimeError):
    """A message reached a sink after its ``close()``: it was not published."""


@dataclass(frozen=True, slots=True)
class SinkStats:
    """A snapshot of a sink's counters."""

    received: int
    """Messages handed to the sink by handlers."""
    stored: int
    """Acknowledged by the bus as new."""
    duplicates: int
    """Acknowledged by the bus as a copy of one it already had (another feeder's, or a retry's)."""
    pending: int
    """Not yet acknowledged: queued or in flight."""
    retries: int
    """Entries sent again after a failure, a timeout or a reconnect."""
    timeouts: int
    """Acknowledgements that did not come within ``ack_timeout``."""
    errors: int
    """Publishes the bus refused or that failed to be written."""
    waits: int
    """Times a handler waited because the window was full (back-pressure into the client)."""
    reconnects: int
    """Connections to the bus made after the first."""
    reordered: int
    """Entries stored after a later one of the same key (see the module's note)."""
    abandoned: int
    """Entries still unacknowledged when ``close()`` gave up waiting: maybe lost."""
    connected: bool
    """Whether the sink has a live connection to the bus now."""


@dataclass(slots=True)
class Entry:
    """One message on its way to the bus."""

    key: str
    """The subject (NATS) or stream key (Redis)."""
    msg_id: str
    payload: bytes
    sent_at: float = 0.0
    """When it was last written; 0.0 while queued."""
    attempts: int = 0


def payload_of(kind: Payload) -> Callable[[Any, Data | None], bytes]:
    """The function building an entry's payload from ``(message, frame)``."""
    if kind == "raw":

        def raw(msg: Any, frame: Data | None) -> bytes:
            data = frame if frame is not None else msg
            if isinstance(data, bytes):
                return data
            if isinstance(data, str):
                return data.encode()
            if isinstance(data, (bytearray, memoryview)):
                return bytes(data)
            raise TypeError(
                f'payload="raw" needs the raw frame, got {type(data).__name__}: register the sink '
                'with client.on(Model, sink) or client.on_message(sink), or use payload="json"'
            )

        return raw
    if kind == "json":

        def as_json(msg: Any, frame: Data | None) -> bytes:
            if isinstance(msg, BaseModel):
                return msg.model_dump_json().encode()
            return payload_of("raw")(msg, frame)

        return as_json
    if callable(kind):
        return lambda msg, frame: kind(msg)
    raise ValueError(f'payload must be "raw", "json" or a function of the message, got {kind!r}')


async def connect_with_backoff(
    open_connection: Callable[[], Awaitable[R]],
    initial: float,
    maximum: float,
    on_retry: Callable[[BaseException, float], None],
) -> R:
    """``open_connection()`` until it succeeds, with exponential backoff and jitter between
    attempts (tenacity); ``on_retry(exception, delay)`` before each wait, so that a bus that stays
    unreachable is said, not retried in silence."""

    def before_sleep(state: RetryCallState) -> None:
        if state.outcome is not None and state.next_action is not None:
            exc = state.outcome.exception()
            if exc is not None:
                on_retry(exc, state.next_action.sleep)

    retrying = AsyncRetrying(
        # wait_exponential_jitter's ``initial`` is deprecated in tenacity 9.2 and its replacement
        # absent from 8.x: the same backoff from parts every version has.
        wait=wait_exponential(multiplier=initial, max=maximum) + wait_random(0, initial),
        retry=retry_if_exception_type(Exception),
        before_sleep=before_sleep,
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            return await open_connection()
    raise AssertionError("unreachable: the retry loop only ends by returning")  # pragma: no cover


class Window:
    """The unacknowledged entries of a sink, in order, at most ``limit`` of them.

    * :meth:`add` appends an entry and returns a future to await when the window is now full;
    * :meth:`next_to_send` gives the entries to write, in order, once each (until a rewind);
    * :meth:`acked` / :meth:`failed` take the bus's answer for an entry's token;
    * :meth:`rewind` makes every unacknowledged entry due again, oldest first;
    * :meth:`overdue` names the oldest entry written more than ``timeout`` seconds ago.
    """

    def __init__(self, limit: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        if limit < 1:
            raise ValueError(f"the window must hold at least one entry, got {limit!r}")
        self.limit = limit
        self._clock = clock
        self.entries: dict[int, Entry] = {}
        """Unacknowledged entries by token, in token (= arrival) order."""
        self._due: deque[int] = deque()
        self._next_token = 1
        self._room: list[asyncio.Future[None]] = []
        self._empty: asyncio.Event | None = None
        self._last_stored: dict[str, int] = {}
        self.received = self.stored = self.duplicates = self.retries = 0
        self.timeouts = self.errors = self.waits = self.reordered = 0

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, entry: Entry) -> asyncio.Future[None] | None:
        """Queue ``entry``; a future to await (room in the window) when the window is full."""
        token = self._next_token
        self._next_token = token + 1
        self.entries[token] = entry
        self._due.append(token)
        self.received += 1
        if len(self.entries) < self.limit:
            return None
        self.waits += 1
        room = asyncio.get_running_loop().create_future()
        self._room.append(room)
        return room

    @property
    def has_due(self) -> bool:
        """Whether some entry waits to be written."""
        return bool(self._due)

    def next_to_send(self) -> tuple[int, Entry] | None:
        """The next entry to write, marked as written now; ``None`` when nothing is due."""
        due, entries = self._due, self.entries
        while due:
            token = due.popleft()
            entry = entries.get(token)
            if entry is None:  # acknowledged meanwhile (an answer to an earlier write)
                continue
            if entry.attempts:
                self.retries += 1
            entry.attempts += 1
            entry.sent_at = self._clock()
            return token, entry
        return None

    def acked(self, token: int, *, duplicate: bool = False) -> None:
        """The bus stored the entry (or already had it)."""
        entry = self.entries.pop(token, None)
        if entry is None:
            return  # a second answer, to a write made before a rewind
        if duplicate:
            self.duplicates += 1
        else:
            self.stored += 1
            last = self._last_stored.get(entry.key, 0)
            if token < last:
                self.reordered += 1
            else:
                self._last_stored[entry.key] = token
        self._freed()

    def failed(self, token: int) -> bool:
        """The bus refused the entry's write: counted; the caller rewinds (after a pause). False
        when the entry was already acknowledged."""
        if token not in self.entries:
            return False
        self.errors += 1
        return True

    def rewind(self) -> int:
        """Make every unacknowledged entry due again, in order; returns how many."""
        self._due = deque(self.entries)
        for entry in self.entries.values():
            entry.sent_at = 0.0
        return len(self._due)

    def overdue(self, timeout: float) -> Entry | None:
        """The oldest written entry, if it waits for its answer longer than ``timeout``."""
        for entry in self.entries.values():
            if entry.sent_at and self._clock() - entry.sent_at > timeout:
                return entry
            return None  # only the oldest: later ones were written after it
        return None

    def oldest_sent_at(self) -> float | None:
        """When the oldest unacknowledged entry was written, if it was."""
        for entry in self.entries.values():
            return entry.sent_at or None
        return None

    def _freed(self) -> None:
        entries = self.entries
        if self._room and len(entries) < self.limit:
            rooms, self._room = self._room, []
            for room in rooms:
                if not room.done():
                    room.set_result(None)
        if not entries and self._empty is not None:
            self._empty.set()

    async def wait_empty(self) -> None:
        """Return once every entry is acknowledged."""
        if not self.entries:
            return
        if self._empty is None or self._empty.is_set():
            self._empty = asyncio.Event()
        await self._empty.wait()

    def abandon(self, exc: BaseException) -> int:
        """Drop every entry (a close that gave up); fail the waiters. Returns how many."""
        count = len(self.entries)
        self.entries.clear()
        self._due.clear()
        rooms, self._room = self._room, []
        for room in rooms:
            if not room.done():
                room.set_exception(exc)
                room.exception()  # retrieved here: a handler may be gone already
        if self._empty is not None:
            self._empty.set()
        return count


C = TypeVar("C")


class WindowSink(Generic[C]):
    """What a sink does around its :class:`Window`, whatever the bus: take messages, start its I/O
    task, connect with backoff (and say so when the bus cannot be reached), flush and close,
    count. A subclass names the bus (``_bus``), builds the entries (``__call__`` ends with
    :meth:`_accept`) and does the I/O: ``_run`` (the task), ``_open`` (one connection attempt,
    returning the connection of type ``C``), ``_drop_connection`` and ``_where`` (its address,
    masked)."""

    _bus = "the bus"

    def __init__(
        self,
        *,
        msg_id: Callable[[Any], str],
        payload: Payload,
        max_pending: int,
        ack_timeout: float,
        reconnect_initial: float,
        reconnect_max: float,
        connect_timeout: float,
        ping_interval: float,
    ) -> None:
        """The settings every sink shares, refused (naming the field) when they cannot work."""
        if not callable(msg_id):
            raise TypeError("msg_id must be a function of the message returning its unique id")
        if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 1:
            raise ValueError(f"max_pending must be a positive int, got {max_pending!r}")
        for field, value in (
            ("ack_timeout", ack_timeout),
            ("reconnect_initial", reconnect_initial),
            ("reconnect_max", reconnect_max),
            ("connect_timeout", connect_timeout),
            ("ping_interval", ping_interval),
        ):
            if not value > 0:
                raise ValueError(f"{field} must be positive, got {value!r}")
        if reconnect_max < reconnect_initial:
            raise ValueError(
                f"reconnect_max ({reconnect_max}) must be at least reconnect_initial ({reconnect_initial})"
            )
        self._msg_id = msg_id
        self._payload = payload_of(payload)
        self.wants_frame = payload == "raw"
        """Read by ``client.on``: the handler is called with the raw frame too."""
        self.ack_timeout = ack_timeout
        self._connect_timeout = connect_timeout
        self._ping_interval = ping_interval
        self._window = Window(max_pending)
        self._reconnect = (reconnect_initial, reconnect_max)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._closing = False
        self._closed = False
        self._connects = 0
        self._abandoned = 0
        self._limiter = LogLimiter()

    # -- for the subclass --------------------------------------------------------------------------

    async def _run(self) -> None:
        raise NotImplementedError

    async def _open(self) -> C:
        raise NotImplementedError

    async def _drop_connection(self) -> None:
        raise NotImplementedError

    def _where(self) -> str:
        raise NotImplementedError

    def _check_open(self) -> None:
        if self._closing:
            raise SinkClosedError("the sink is closed: this message was not published")

    def _accept(self, entry: Entry) -> Awaitable[None] | None:
        """Queue ``entry``, start the I/O task if it is the first; the awaitable of a full window."""
        room = self._window.add(entry)
        if self._task is None:
            self._start()
        self._wake.set()
        return room

    async def _connect(self) -> C:
        initial, maximum = self._reconnect
        return await connect_with_backoff(self._open, initial, maximum, self._retrying)

    def _retrying(self, exc: BaseException, delay: float) -> None:
        self._note(
            "connect",
            f"cannot connect to {self._bus} at %s (%s): retrying in %.2f s",
            self._where(),
            exc,
            delay,
        )

    def _note(self, kind: str, text: str, *args: object) -> None:
        suppressed = self._limiter.allow(kind)
        if suppressed is not None:
            _log.warning(text + LogLimiter.suffix(suppressed), *args)

    # -- lifecycle -------------------------------------------------------------------------------

    def _start(self) -> None:
        name = f"wsclient-{type(self).__name__}"
        self._task = asyncio.get_running_loop().create_task(self._run(), name=name)

    async def start(self, timeout: float | None = None) -> None:
        """Connect now, waiting up to ``timeout`` seconds for it; without it, the first message
        connects."""
        if self._closing:
            raise SinkClosedError("the sink is closed")
        if self._task is None:
            self._start()
        await asyncio.wait_for(self._connected.wait(), timeout)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every message given so far is acknowledged; False on ``timeout``."""
        try:
            await asyncio.wait_for(self._window.wait_empty(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float = 10.0) -> None:
        """Stop taking messages, wait up to ``timeout`` seconds for the acknowledgements of those
        taken, then close the connection. What is still unacknowledged then is logged and counted
        in ``stats.abandoned``. Idempotent."""
        if self._closed:
            return
        self._closing = True
        if self._task is not None and not await self.flush(timeout):
            self._abandoned += self._window.abandon(SinkClosedError("the sink closed before publishing"))
            _log.error(
                "%s sink closed with %d message(s) unacknowledged after %.1f s: maybe lost",
                self._bus,
                self._abandoned,
                timeout,
            )
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task, f"{self._bus} sink's I/O task")
        await self._drop_connection()

    @property
    def stats(self) -> SinkStats:
        """Counters, now."""
        w = self._window
        return SinkStats(
            received=w.received,
            stored=w.stored,
            duplicates=w.duplicates,
            pending=len(w),
            retries=w.retries,
            timeouts=w.timeouts,
            errors=w.errors,
            waits=w.waits,
            reconnects=max(self._connects - 1, 0),
            reordered=w.reordered,
            abandoned=self._abandoned,
            connected=self._connected.is_set(),
        )

    def __repr__(self) -> str:
        state = "connected" if self._connected.is_set() else "closed" if self._closed else "not connected"
        return f"<{type(self).__name__} {self._where()} {state}, {len(self._window)} pending>"
