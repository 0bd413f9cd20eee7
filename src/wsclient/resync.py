"""Keep state built from a snapshot plus deltas (an order book) correct across gaps.

A venue's depth stream sends *deltas*, each covering a range of update ids; a REST endpoint gives a
*snapshot* stamped with the last update id it includes. A local book is correct only when it is a
snapshot followed by every delta after it, in order, none missing. :class:`Resync` enforces this for
any number of streams (one per symbol, say), without knowing the venue: the application says how to
read ids, how to fetch a snapshot and how to apply each piece to its own state::

    class DepthUpdate(Message):               # Binance diff. depth: {"e": "depthUpdate", "s": ...}
        e: Literal["depthUpdate"]
        s: str
        U: int                                # first update id in the event
        u: int                                # last update id in the event
        b: list[tuple[Decimal, Decimal]]
        a: list[tuple[Decimal, Decimal]]

    async def fetch(symbol: str) -> DepthSnapshot:   # GET /api/v3/depth?symbol=...&limit=1000
        ...                                          # {"lastUpdateId": N, "bids": ..., "asks": ...}

    books: dict[str, Book] = {}

    def reset(symbol: str, snap: DepthSnapshot) -> None:
        books[symbol] = Book(snap.bids, snap.asks)

    def update(symbol: str, d: DepthUpdate) -> None:
        books[symbol].apply(d.b, d.a)

    def watch(outcome: ResyncOutcome) -> None:
        match outcome:
            case GapDetected(stream=symbol) | CallbackFailed(stream=symbol) | ResyncFailed(stream=symbol):
                stop_quoting(symbol)          # the book is stale until the next Synced
            case Synced(stream=symbol):
                start_quoting(symbol)

    resync = Resync(
        stream=lambda d: d.s,                 # which book the delta belongs to
        snapshot=fetch,
        snapshot_seq=lambda snap: snap.lastUpdateId,
        first_last=lambda d: (d.U, d.u),      # the update ids the delta covers
        on_snapshot=reset,
        on_delta=update,
        on_outcome=watch,
    )
    client = Client(url, config=ClientConfig(discriminator="e"))
    client.on(DepthUpdate, resync)            # a plain sync handler: never blocks the reader
    ...
    await resync.aclose()                     # cancels snapshot fetches still running

The guarantee
-------------
For each stream, the application sees ``on_snapshot`` and then only deltas that continue it, in
order; never a delta that does not continue the last one applied. When continuity breaks, it sees
a fresh ``on_snapshot`` before any further delta. Both callbacks are plain sync functions, called
on the event loop.

How a stream is synchronised
----------------------------
The first delta of a stream starts a *resync*: deltas are buffered (up to ``max_buffer``) while one
task fetches the snapshot. When it arrives, buffered deltas with ``last <= snapshot_seq`` are
dropped as stale, and the rest must form a chain from the snapshot: the first must satisfy
``continues(snapshot_seq, delta)``, each next one ``continues(previous last, delta)``. If so the
application gets ``on_snapshot`` and the chain, the stream is ``"synced"`` and :class:`Synced` is
reported. If not, the snapshot is older than the buffered deltas (or the buffer itself has a hole):
another snapshot is fetched after a backoff delay, up to ``max_attempts`` fetches per resync. A
snapshot that finds the buffer empty (the resync after an ``on_delta`` failure starts with nothing
buffered) is applied as it is, and the deltas that follow are judged against it.

Once synced, each delta is checked as it arrives. A delta whose range ends at or below the last
applied id is dropped and counted (``stale`` if at or below the snapshot, else ``duplicates``): the
same stream arriving over two links during a connection rotation does this. A delta that does not
continue is a gap: :class:`GapDetected`, and a resync starts with that delta as the first buffered.
The default rule is Binance's, ``first <= last_applied + 1 <= last``; it covers the first delta
after a snapshot (which may overlap it) and ``first == previous last + 1`` afterwards. A venue with
one plain sequence number per message passes ``first_last=lambda m: (m.seq, m.seq)``; one whose
messages point to their predecessor passes ``continues=lambda last, m: m.prev_seq == last``.

Not hammering the snapshot endpoint
-----------------------------------
Snapshot fetches are spaced by :class:`~wsclient.policy.Backoff` (tenacity's capped exponential with
jitter) under a :class:`~wsclient.config.Reconnect` policy: ``initial_delay``, ``max_delay``,
``multiplier``, ``jitter``, and ``reset_after``. The first fetch of a resync is immediate only when
the stream had stayed synced for ``reset_after`` seconds (or was never synced); a stream that breaks
again sooner waits the next backoff delay first, so a flapping stream, or an ``on_delta`` that
keeps raising, slows down to one fetch per ``max_delay`` instead of looping. When ``max_attempts``
fetches fail, :class:`ResyncFailed` is reported and the stream is ``"failed"``: its deltas are
dropped (counted in ``dropped_failed``) for ``max_delay`` seconds, after which the next delta starts
a new resync (lazily: a stream the venue stopped sending is not retried).

Failures
--------
A snapshot fetch that raises (or times out after ``snapshot_timeout``) is a failed attempt, logged
at WARNING through a :class:`~wsclient.logs.LogLimiter`. ``on_snapshot`` or ``on_delta`` raising
breaks only its own stream: :class:`CallbackFailed` is reported, the error is logged (rate-limited,
with its traceback) and the stream resynchronises; raising from ``on_delta`` is therefore also how
an application that verifies a venue's checksum asks for a fresh snapshot. ``on_outcome`` raising is
logged and ignored. Callbacks must not feed deltas back into the :class:`Resync` they are called by.

``stream`` and ``first_last`` run inside ``__call__`` for every delta, ``continues`` for each one
that arrives while the stream is synced: if one raises there, the exception reaches the caller (the
client counts and logs it as a handler error) and the delta is neither applied nor buffered.
``continues`` raising while the buffer is checked against a snapshot fails that attempt.

Tasks
-----
At most one task per stream, created on the running loop by the delta that starts a resync and
ending when the stream is synced or failed. :meth:`Resync.forget` (after unsubscribing) cancels the
stream's task and forgets it; :meth:`Resync.aclose` cancels and awaits every task (idempotent), after
which deltas are ignored. ``async with Resync(...) as resync:`` closes it on exit.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

from .config import Reconnect
from .logs import LogLimiter
from .policy import Backoff
from .redact import redact_text
from .routing import SYNC_HANDLER_FAILURES, handler_failed

__all__ = [
    "DEFAULT_BACKOFF",
    "BufferOverflow",
    "CallbackFailed",
    "GapDetected",
    "Resync",
    "ResyncFailed",
    "ResyncOutcome",
    "ResyncStats",
    "StreamStatus",
    "Synced",
]

_log = logging.getLogger("wsclient.resync")

D = TypeVar("D")
"""The delta message type."""
S = TypeVar("S")
"""The snapshot type."""
K = TypeVar("K", bound=Hashable)
"""The stream key type (a symbol, say)."""

StreamStatus = Literal["syncing", "synced", "failed"]

DEFAULT_BACKOFF = Reconnect(initial_delay=1.0, max_delay=30.0, reset_after=60.0)
"""Snapshot fetches: 1 s, 2 s, 4 s … up to 30 s apart (equal jitter); a stream synced for a minute
starts its next resync with an immediate fetch."""


# -- outcomes ------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Synced:
    """``stream`` is synchronised: the application got ``on_snapshot`` and the buffered deltas.

    ``deltas_applied_from_buffer`` deltas that arrived while the snapshot was fetched were applied
    after it (stale and duplicate ones are not counted); ``attempts`` snapshots were fetched in this
    resync, the failed ones included.
    """

    stream: Hashable
    snapshot_seq: int
    deltas_applied_from_buffer: int
    attempts: int


@dataclass(frozen=True, slots=True)
class GapDetected:
    """A synced stream lost continuity; a resync starts (the application's state is now stale).

    ``expected`` is the last applied id + 1, ``received`` the first id of the delta that did not
    continue. ``received < expected`` means the ids went backwards: ``max_stale_run`` deltas in a row
    were at or below the last applied id, as when a venue restarts its counter.
    """

    stream: Hashable
    expected: int
    received: int


@dataclass(frozen=True, slots=True)
class ResyncFailed:
    """``attempts`` snapshot fetches in a row failed; ``reason`` is the last failure.

    The stream is ``"failed"``: its deltas are dropped for ``retry_after`` seconds, after which the
    next one starts a new resync.
    """

    stream: Hashable
    attempts: int
    reason: str
    retry_after: float


@dataclass(frozen=True, slots=True)
class BufferOverflow:
    """``max_buffer`` deltas piled up while a snapshot was awaited: they were dropped.

    Buffering restarts from the delta that overflowed; the snapshot in flight, if any, is still
    awaited and judged against the new buffer (usually too old for it: one more attempt).
    """

    stream: Hashable
    dropped: int


@dataclass(frozen=True, slots=True)
class CallbackFailed:
    """``on_snapshot`` or ``on_delta`` raised ``error`` for ``stream``, which resynchronises."""

    stream: Hashable
    callback: Literal["on_snapshot", "on_delta"]
    error: str


ResyncOutcome = Synced | GapDetected | ResyncFailed | BufferOverflow | CallbackFailed
"""Any outcome a :class:`Resync` reports to its ``on_outcome`` callback."""


@dataclass(slots=True)
class ResyncStats:
    """Live counters of a :class:`Resync`, over all streams (read them, don't write them)."""

    snapshots: int = 0
    """Snapshot fetches that returned a snapshot."""
    snapshot_errors: int = 0
    """Snapshot fetches that raised or timed out (or whose ``snapshot_seq`` raised)."""
    stale_snapshots: int = 0
    """Snapshots that did not reach the buffered deltas (fetched again)."""
    synced: int = 0
    """Resyncs that ended :class:`Synced`."""
    failed: int = 0
    """Resyncs that ended :class:`ResyncFailed`."""
    gaps: int = 0
    """:class:`GapDetected` reported."""
    applied: int = 0
    """Deltas handed to ``on_delta``."""
    stale: int = 0
    """Deltas dropped because the snapshot already covered them."""
    duplicates: int = 0
    """Deltas dropped because an applied delta already covered them."""
    overflows: int = 0
    """Buffers dropped for exceeding ``max_buffer``."""
    overflow_dropped: int = 0
    """Deltas dropped with them."""
    dropped_failed: int = 0
    """Deltas dropped while their stream was ``"failed"``."""
    callback_errors: int = 0
    """Exceptions raised by ``on_snapshot`` and ``on_delta``."""
    outcome_errors: int = 0
    """Exceptions raised by ``on_outcome``."""


# -- per-stream state ----------------------------------------------------------------------------------


class _Stream(Generic[D]):
    __slots__ = (
        "backoff",
        "buffer",
        "gone",
        "last",
        "retry_at",
        "run",
        "snapshot_seq",
        "status",
        "synced_at",
        "task",
    )

    def __init__(self, backoff: Backoff) -> None:
        self.status: StreamStatus = "syncing"
        self.buffer: deque[tuple[D, int, int]] = deque()
        """(delta, first, last) of the deltas awaiting a snapshot."""
        self.last = 0
        """The last id applied (valid while synced)."""
        self.snapshot_seq = 0
        self.run = 0
        """Deltas dropped in a row as stale or duplicate since the last applied one."""
        self.synced_at: float | None = None
        self.retry_at = 0.0
        self.backoff = backoff
        self.task: asyncio.Task[None] | None = None
        self.gone = False
        """Set by forget() and aclose(): a running task must stop touching the application."""


class Resync(Generic[D, S, K]):
    """Snapshot + deltas, kept continuous per stream; register it as the handler of the delta model.

    ``stream(delta)`` names the delta's stream; ``snapshot(stream)`` fetches a snapshot (async, may
    raise); ``snapshot_seq(snapshot)`` is the last id it includes; ``first_last(delta)`` is the range
    of ids the delta covers (``(n, n)`` for a single id). ``continues(last_applied, delta)`` decides
    whether ``delta`` may follow ``last_applied`` (default: ``first <= last_applied + 1 <= last``).
    ``on_snapshot(stream, snapshot)`` and ``on_delta(stream, delta)`` apply them to the application's
    state; ``on_outcome(outcome)`` hears every :data:`ResyncOutcome`. All callbacks are sync.

    ``max_attempts`` snapshot fetches per resync, spaced by ``backoff`` (see the module docstring;
    its ``max_attempts`` and ``max_elapsed`` must be unset: the attempts are counted here), each
    bounded by ``snapshot_timeout`` seconds (``None``: unbounded). ``max_buffer`` deltas per stream
    are buffered while a snapshot is awaited. ``max_stale_run`` deltas in a row at or below the last
    applied id are taken for a counter reset and resynchronised (``None``: never).
    """

    def __init__(
        self,
        *,
        stream: Callable[[D], K],
        snapshot: Callable[[K], Awaitable[S]],
        snapshot_seq: Callable[[S], int],
        first_last: Callable[[D], tuple[int, int]],
        on_snapshot: Callable[[K, S], object],
        on_delta: Callable[[K, D], object],
        continues: Callable[[int, D], bool] | None = None,
        on_outcome: Callable[[ResyncOutcome], object] | None = None,
        max_attempts: int = 5,
        backoff: Reconnect = DEFAULT_BACKOFF,
        max_buffer: int = 10_000,
        snapshot_timeout: float | None = 30.0,
        max_stale_run: int | None = 1000,
        log_limiter: LogLimiter | None = None,
    ) -> None:
        for name, func in (("on_snapshot", on_snapshot), ("on_delta", on_delta), ("on_outcome", on_outcome)):
            if func is not None and _is_async(func):
                raise TypeError(
                    f"{name} must be a plain (sync) function: it is called on the event loop between "
                    "two deltas; schedule async work from it with asyncio.create_task if needed"
                )
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {max_attempts}")
        if max_buffer < 1:
            raise ValueError(f"max_buffer must be at least 1, got {max_buffer}")
        if snapshot_timeout is not None and snapshot_timeout <= 0:
            raise ValueError(f"snapshot_timeout must be positive or None, got {snapshot_timeout}")
        if max_stale_run is not None and max_stale_run < 1:
            raise ValueError(f"max_stale_run must be at least 1 or None, got {max_stale_run}")
        if backoff.max_attempts is not None or backoff.max_elapsed is not None:
            raise ValueError(
                "backoff.max_attempts and backoff.max_elapsed are not used by Resync: "
                "pass max_attempts= (snapshot fetches per resync) instead"
            )
        self._stream = stream
        self._snapshot = snapshot
        self._snapshot_seq = snapshot_seq
        self._first_last = first_last
        self._continues = continues
        self._on_snapshot = on_snapshot
        self._on_delta = on_delta
        self._on_outcome = on_outcome
        self.max_attempts = max_attempts
        self.max_buffer = max_buffer
        self.snapshot_timeout = snapshot_timeout
        self.max_stale_run = max_stale_run
        self.backoff = backoff
        self._limiter = log_limiter if log_limiter is not None else LogLimiter()
        self._streams: dict[K, _Stream[D]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.stats = ResyncStats()
        """Live counters."""

    # -- the handler ---------------------------------------------------------------------------------

    def __call__(self, delta: D) -> None:
        """Take one delta of the stream (register the instance with ``client.on(Model, resync)``).

        Applies it, buffers it, drops it, or detects a gap; never blocks, never awaits. Needs a
        running event loop when it starts a resync. Ignored once :meth:`aclose` was called.
        """
        key = self._stream(delta)
        first, last = self._first_last(delta)
        st = self._streams.get(key)
        if st is None:
            if self._closed:
                return
            loop = asyncio.get_running_loop()
            st = _Stream(Backoff(self.backoff, clock=loop.time))
            self._streams[key] = st
            st.buffer.append((delta, first, last))
            self._start(key, st, 0.0)
            return
        if st.status == "synced":
            if last <= st.last:
                if last <= st.snapshot_seq:
                    self.stats.stale += 1
                else:
                    self.stats.duplicates += 1
                st.run += 1
                if self.max_stale_run is not None and st.run >= self.max_stale_run:
                    self._gap(key, st, (delta, first, last))
                return
            if first <= st.last + 1 if self._continues is None else self._continues(st.last, delta):
                try:
                    self._on_delta(key, delta)
                except SYNC_HANDLER_FAILURES as exc:
                    if not st.gone:  # unless the callback forgot the stream
                        self._restart(key, st, None)
                    self._callback_failed(key, "on_delta", exc)
                    return
                st.last = last
                st.run = 0
                self.stats.applied += 1
                return
            self._gap(key, st, (delta, first, last))
        elif st.status == "syncing":
            buffer = st.buffer
            if len(buffer) >= self.max_buffer:
                dropped = len(buffer)
                buffer.clear()
                self.stats.overflows += 1
                self.stats.overflow_dropped += dropped
                buffer.append((delta, first, last))
                if (suppressed := self._limiter.allow("overflow")) is not None:
                    _log.warning(
                        "resync %r: %d deltas buffered while awaiting a snapshot, dropped%s",
                        key,
                        dropped,
                        LogLimiter.suffix(suppressed),
                    )
                self._emit(BufferOverflow(key, dropped))
            else:
                buffer.append((delta, first, last))
        elif asyncio.get_running_loop().time() >= st.retry_at:  # "failed", and the pause is over
            st.status = "syncing"
            st.buffer.append((delta, first, last))
            self._start(key, st, 0.0)
        else:
            self.stats.dropped_failed += 1

    # -- queries -------------------------------------------------------------------------------------

    def status(self, stream: K) -> StreamStatus | None:
        """``"syncing"``, ``"synced"`` or ``"failed"``; ``None`` for a stream not seen (or forgotten)."""
        st = self._streams.get(stream)
        return None if st is None else st.status

    def last_applied(self, stream: K) -> int | None:
        """The last id in the application's state of ``stream`` (the snapshot's, or the last delta's),
        or ``None`` unless the stream is synced."""
        st = self._streams.get(stream)
        return st.last if st is not None and st.status == "synced" else None

    @property
    def streams(self) -> tuple[K, ...]:
        """The streams known (seen, not forgotten)."""
        return tuple(self._streams)

    @property
    def tasks(self) -> int:
        """Snapshot tasks running (at most one per stream)."""
        return len(self._tasks)

    # -- lifecycle -----------------------------------------------------------------------------------

    def forget(self, stream: K) -> None:
        """Drop ``stream`` (after unsubscribing from it): its snapshot task, if any, is cancelled.

        A later delta of the stream starts over, as for a new stream.
        """
        st = self._streams.pop(stream, None)
        if st is not None:
            st.gone = True
            if st.task is not None:
                st.task.cancel()

    async def aclose(self) -> None:
        """Cancel every snapshot task and wait for them; later deltas are ignored. Idempotent."""
        self._closed = True
        for st in self._streams.values():
            st.gone = True
        self._streams.clear()
        current = asyncio.current_task()
        tasks = [task for task in self._tasks if task is not current]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def __aenter__(self) -> Resync[D, S, K]:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- breaking and restarting ---------------------------------------------------------------------

    def _gap(self, key: K, st: _Stream[D], entry: tuple[D, int, int]) -> None:
        expected, received = st.last + 1, entry[1]
        self.stats.gaps += 1
        if (suppressed := self._limiter.allow("gap")) is not None:
            _log.info(
                "resync %r: gap (expected %d, received %d), fetching a snapshot%s",
                key,
                expected,
                received,
                LogLimiter.suffix(suppressed),
            )
        self._restart(key, st, entry)
        self._emit(GapDetected(key, expected, received))

    def _restart(self, key: K, st: _Stream[D], entry: tuple[D, int, int] | None) -> None:
        """A synced stream broke: resync, with ``entry`` (a delta and its ids) as the first buffered."""
        now = asyncio.get_running_loop().time()
        if st.synced_at is not None and now - st.synced_at >= self.backoff.reset_after:
            st.backoff.reset()
            wait = 0.0
        else:
            wait = self._next_delay(st)
        st.status = "syncing"
        st.buffer.clear()
        if entry is not None:
            st.buffer.append(entry)
        self._start(key, st, wait)

    def _next_delay(self, st: _Stream[D]) -> float:
        delay = st.backoff.next_delay()
        return self.backoff.max_delay if delay is None else delay

    def _start(self, key: K, st: _Stream[D], wait: float) -> None:
        task = asyncio.get_running_loop().create_task(
            self._run(key, st, wait), name=f"wsclient-resync[{key!r}]"
        )
        st.task = task
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:  # pragma: no cover - a bug
            _log.error("resync task %s crashed", task.get_name(), exc_info=exc)

    # -- the snapshot task ---------------------------------------------------------------------------

    async def _run(self, key: K, st: _Stream[D], wait: float) -> None:
        attempts = 0
        while True:
            if wait > 0:
                await asyncio.sleep(wait)
            attempts += 1
            reason = await self._attempt(key, st, attempts)
            if reason is None or st.gone:
                return
            if attempts >= self.max_attempts:
                break
            wait = self._next_delay(st)
        self._fail(key, st, attempts, reason)

    async def _attempt(self, key: K, st: _Stream[D], attempts: int) -> str | None:
        """One snapshot fetch; None when the stream is synced, else why not."""
        try:
            if self.snapshot_timeout is None:
                snapshot = await self._snapshot(key)
            else:
                async with asyncio.timeout(self.snapshot_timeout):
                    snapshot = await self._snapshot(key)
            seq = self._snapshot_seq(snapshot)
        except BaseException as exc:
            if not handler_failed(exc):
                raise
            self.stats.snapshot_errors += 1
            if isinstance(exc, TimeoutError):
                reason = f"snapshot timed out after {self.snapshot_timeout:g}s"
            else:
                reason = f"snapshot failed: {_describe(exc)}"
            if (suppressed := self._limiter.allow("snapshot")) is not None:
                _log.warning(
                    "resync %r: %s (attempt %d of %d)%s",
                    key,
                    reason,
                    attempts,
                    self.max_attempts,
                    LogLimiter.suffix(suppressed),
                )
            return reason
        self.stats.snapshots += 1
        if st.gone:
            return None
        return self._install(key, st, snapshot, seq, attempts)

    def _install(self, key: K, st: _Stream[D], snapshot: S, seq: int, attempts: int) -> str | None:
        """Hand the snapshot and the buffered chain to the application, if the chain holds."""
        try:
            chain, stale, duplicates, broken = self._chain(st.buffer, seq)
        except Exception as exc:
            reason = f"continues() raised {_describe(exc)}"
            if (suppressed := self._limiter.allow("chain")) is not None:
                _log.error("resync %r: %s%s", key, reason, LogLimiter.suffix(suppressed), exc_info=exc)
            return reason
        if broken is not None:
            self.stats.stale_snapshots += 1
            if (suppressed := self._limiter.allow("stale snapshot")) is not None:
                _log.info(
                    "resync %r: %s (attempt %d of %d)%s",
                    key,
                    broken,
                    attempts,
                    self.max_attempts,
                    LogLimiter.suffix(suppressed),
                )
            return broken
        try:
            self._on_snapshot(key, snapshot)
        except SYNC_HANDLER_FAILURES as exc:
            return self._callback_failed(key, "on_snapshot", exc)
        last = seq
        for delta, delta_last in chain:
            if st.gone:
                return None
            try:
                self._on_delta(key, delta)
            except SYNC_HANDLER_FAILURES as exc:
                return self._callback_failed(key, "on_delta", exc)
            last = delta_last
        if st.gone:
            return None
        st.buffer.clear()
        st.status = "synced"
        st.last = last
        st.snapshot_seq = seq
        st.run = 0
        st.synced_at = asyncio.get_running_loop().time()
        st.task = None
        stats = self.stats
        stats.synced += 1
        stats.applied += len(chain)
        stats.stale += stale
        stats.duplicates += duplicates
        self._emit(Synced(key, seq, len(chain), attempts))
        return None

    def _chain(
        self, buffer: deque[tuple[D, int, int]], seq: int
    ) -> tuple[list[tuple[D, int]], int, int, str | None]:
        """The buffered deltas that follow a snapshot at ``seq``: (chain, stale, duplicates, broken).

        ``broken`` says why the chain cannot follow the snapshot, or is None.
        """
        chain: list[tuple[D, int]] = []
        stale = duplicates = 0
        position = seq
        continues = self._continues
        for delta, first, last in buffer:
            if last <= seq:
                stale += 1
            elif last <= position:
                duplicates += 1
            elif first <= position + 1 if continues is None else continues(position, delta):
                chain.append((delta, last))
                position = last
            elif not chain:
                return (
                    chain,
                    stale,
                    duplicates,
                    (f"snapshot at {seq} is older than the buffered deltas (next covers {first}..{last})"),
                )
            else:
                return (
                    chain,
                    stale,
                    duplicates,
                    (f"buffered deltas have a gap after {position} (next covers {first}..{last})"),
                )
        return chain, stale, duplicates, None

    def _fail(self, key: K, st: _Stream[D], attempts: int, reason: str) -> None:
        pause = self.backoff.max_delay
        st.status = "failed"
        st.buffer.clear()
        st.retry_at = asyncio.get_running_loop().time() + pause
        st.task = None
        self.stats.failed += 1
        if (suppressed := self._limiter.allow("failed")) is not None:
            _log.error(
                "resync %r failed after %d attempts (%s); retrying on a delta after %gs%s",
                key,
                attempts,
                reason,
                pause,
                LogLimiter.suffix(suppressed),
            )
        self._emit(ResyncFailed(key, attempts, reason, pause))

    # -- reporting -----------------------------------------------------------------------------------

    def _callback_failed(
        self, key: K, callback: Literal["on_snapshot", "on_delta"], exc: BaseException
    ) -> str:
        self.stats.callback_errors += 1
        error = _describe(exc)
        if (suppressed := self._limiter.allow("callback")) is not None:
            _log.error(
                "resync %r: %s raised, resynchronising%s",
                key,
                callback,
                LogLimiter.suffix(suppressed),
                exc_info=exc,
            )
        self._emit(CallbackFailed(key, callback, error))
        return f"{callback} raised {error}"

    def _emit(self, outcome: ResyncOutcome) -> None:
        if self._on_outcome is None:
            return
        try:
            self._on_outcome(outcome)
        except Exception:
            self.stats.outcome_errors += 1
            if (suppressed := self._limiter.allow("outcome")) is not None:
                _log.exception("resync: on_outcome raised%s", LogLimiter.suffix(suppressed))


def _is_async(func: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
        getattr(func, "__call__", None)  # noqa: B004 - an instance with an async __call__
    )


def _describe(exc: BaseException) -> str:
    """``Type: first line of the message``, the message masked (a URL's signature, a token)."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {redact_text(text)}" if text else type(exc).__name__
