"""Many streams over several connections, within a venue's limits: :class:`Pool`.

A pool is a set of :class:`~wsclient.Client` shards, one connection each, that share:

* one :class:`~wsclient.budget.ConnectGate` (every connect and reconnect of every shard waits its turn
  in the venue's connect quota: a herd after an outage is spread, never a burst);
* one :class:`~wsclient.dedup.Dedup` (with ``dedup_key``): a stream arriving on two connections for a
  moment, during a rotation or a move between shards, reaches the handlers exactly once, in order;
* the application's registrations (``on``, ``on_message``, ``on_gap``, ``on_event``, ``on_error``,
  ``on_unknown``, ``on_connect``), applied to every shard, present and future.

Streams are packed first-fit into shards of at most ``VenueLimits.streams_per_connection``, in subscribe
messages of at most ``subscribe_batch`` streams built by the application's ``subscribe(streams)``
function (every venue spells them differently; the SDK holds no venue-specific code). A shard's
reconnect replays its batches, paced by the venue's message budget; its age rotation is
make-before-break. Removing streams sends the unsubscribe messages, closes shards left empty and, when
the streams left fit in fewer connections, moves the streams of the emptiest shard onto the others,
make-before-break.

With ``stale_after``, the pool watches every stream: one silent for longer than its limit (counted while
its connection is open: a reconnect replays its subscription anyway) is resubscribed on its connection;
if that brings nothing within another limit, the connection is replaced (make-before-break). Each step
is a :class:`StreamStale` event and a counter.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

from pydantic import BaseModel

from .budget import ConnectGate
from .client import Client
from .config import ClientConfig, VenueLimits
from .dedup import Dedup
from .errors import ClientClosedError, ConfigError
from .events import ClientStats
from .metrics import MetricsRecorder
from .routing import SequenceGap, SequenceTracker
from .session import Outgoing, Subscription
from .state import ConnectionState
from .transport import Connector

__all__ = ["Pool", "PoolStats", "ShardInfo", "StreamStale"]

logger = logging.getLogger("wsclient.pool")

M = TypeVar("M", bound=BaseModel)
F = TypeVar("F", bound=Callable[..., Any])
DedupKey = Callable[[Any], "tuple[Hashable, int] | None"]


@dataclass(frozen=True, slots=True)
class StreamStale:
    """A stream stayed silent longer than its limit (a pool event, to ``on_event`` callbacks).

    ``action`` is what the pool did: ``"resubscribed"`` (sent the stream's subscribe message again
    on its connection) or ``"replaced"`` (the resubscribe brought nothing: the connection is being
    replaced, make-before-break).
    """

    stream: str
    shard: int
    silent_for: float
    limit: float
    action: Literal["resubscribed", "replaced"]


@dataclass(frozen=True, slots=True)
class ShardInfo:
    """One shard of a pool, as :attr:`Pool.shards` reports it.

    The shards share one de-duplicator, so the copies it drops are counted pool-wide only
    (:attr:`PoolStats.duplicates_dropped`).
    """

    index: int
    state: ConnectionState
    streams: int
    connects: int
    rotations: int
    messages_in: int


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot of a pool's counters: the totals over its shards, and each shard's own."""

    shards: tuple[ClientStats, ...]
    streams: int
    messages_in: int
    messages_out: int
    connects: int
    rotations: int
    budget_waits: int
    connect_waits: int
    """Connect attempts that waited for the venue's connect quota."""
    duplicates_dropped: int
    """Copies the de-duplicator did not deliver (a rotation's or a move's overlap)."""
    held: int
    """Messages held while a link ran ahead during an overlap, then delivered in order."""
    sequence_gaps: int
    stale_resubscribes: int
    stale_replacements: int
    moves: int
    """Streams moved between shards (repacking after removals)."""


@dataclass(slots=True)
class _Batch:
    """Streams sent in one subscribe message (replayed as one)."""

    streams: list[str]
    sub: Subscription | None = None


@dataclass(slots=True)
class _Watch:
    """What the staleness check knows of one stream."""

    limit: float | None
    last_seq: int | None = None
    since: float = 0.0  # when the stream last moved (or was added)
    step: int = 0  # 0: fine, 1: resubscribed, 2: connection replaced
    learned: float | None = None
    first_seq: int | None = None
    first_at: float = 0.0


@dataclass(slots=True)
class _Shard:
    index: int
    client: Client
    batches: list[_Batch] = field(default_factory=list)
    of: dict[str, _Batch] = field(default_factory=dict)
    started: bool = False
    closing: bool = False
    recorders: dict[Callable[[int], MetricsRecorder], MetricsRecorder] = field(default_factory=dict)
    """The recorder each of the pool's metrics factories made for this shard."""

    @property
    def count(self) -> int:
        return len(self.of)


class Pool:
    """Streams spread over several connections to one venue, within its limits.

    ``subscribe(streams)`` returns the venue's subscribe message for a list of streams (``unsubscribe``
    likewise, to remove streams at run time). ``limits`` (or ``config.limits``) gives the streams per
    connection, the subscribe batch, the message budget, the connect quota and the connection age.
    ``dedup_key(message) -> (stream, seq)`` makes delivery exactly once through rotations and moves;
    its ``stream`` must be the stream's name as given to :meth:`add_streams` for the staleness watch.
    ``stale_after``: seconds of silence after which a stream is resubscribed (``"auto"``: learned from
    each stream's observed rate, at least ``stale_floor``; None: not watched). ``connect_gate`` shares
    a connect quota with other pools and clients (the default is one gate for this pool).
    """

    def __init__(
        self,
        url: str | Callable[[], Any],
        *,
        subscribe: Callable[[Sequence[str]], Outgoing],
        unsubscribe: Callable[[Sequence[str]], Outgoing] | None = None,
        config: ClientConfig | None = None,
        limits: VenueLimits | None = None,
        headers: Mapping[str, str] | Callable[[], Any] | None = None,
        secrets: Iterable[str] = (),
        connector: Connector | None = None,
        dedup_key: DedupKey | None = None,
        connect_gate: ConnectGate | None = None,
        stale_after: float | Literal["auto"] | None = None,
        stale_floor: float = 5.0,
        max_held: int = 100_000,
    ) -> None:
        if not callable(subscribe):
            raise ConfigError("subscribe must be a function: streams -> the venue's subscribe message")
        if unsubscribe is not None and not callable(unsubscribe):
            raise ConfigError("unsubscribe must be a function: streams -> the venue's unsubscribe message")
        config = config if config is not None else ClientConfig()
        if limits is None:
            limits = config.limits if config.limits is not None else VenueLimits()
        config = config.model_copy(update={"limits": limits})
        if isinstance(stale_after, str) and stale_after != "auto":
            raise ConfigError(f"stale_after must be seconds, 'auto' or None, got {stale_after!r}")
        if isinstance(stale_after, int | float) and stale_after <= 0:
            raise ConfigError(f"stale_after must be > 0 seconds, got {stale_after}")
        if stale_after is not None and dedup_key is None:
            raise ConfigError(
                "stale_after needs dedup_key (message -> (stream, seq)): the pool watches each stream by "
                "its sequence numbers"
            )
        if stale_floor <= 0:
            raise ConfigError(f"stale_floor must be > 0 seconds, got {stale_floor}")
        self._url = url
        self._config = config
        self._limits = limits
        self._headers = headers
        self._secrets = tuple(secrets)
        self._connector = connector
        self._subscribe = subscribe
        self._unsubscribe = unsubscribe
        self._dedup_key = dedup_key
        self.dedup: Dedup | None = Dedup(SequenceTracker(), max_held=max_held) if dedup_key else None
        """The de-duplicator all shards share (with ``dedup_key``)."""
        if connect_gate is None and limits.connects_per_window is not None:
            connect_gate = ConnectGate(
                limits.connects_per_window, limits.connect_window, margin=limits.margin
            )
        self.connect_gate = connect_gate
        """The connect quota every shard waits on (None: no quota)."""
        self._stale_after = stale_after
        self._stale_floor = stale_floor
        self._shards: list[_Shard] = []
        self._shard_ids = itertools.count(0)
        self._registrations: list[Callable[[Client], object]] = []
        self._event_callbacks: tuple[Callable[[Any], Any], ...] = ()
        self._tasks: set[asyncio.Task[None]] = set()
        self._watch: dict[str, _Watch] = {}
        self._state: Literal["idle", "running", "closing", "closed"] = "idle"
        self._task: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._stats = {"stale_resubscribes": 0, "stale_replacements": 0, "moves": 0}
        self._ended: list[ClientStats] = []  # figures of shards closed for good
        self._metrics: list[Callable[[int], MetricsRecorder]] = []

    # -- registration: applied to every shard, now and later --------------------------------------

    def _register(self, apply: Callable[[Client], object]) -> None:
        self._registrations.append(apply)
        for shard in self._shards:
            apply(shard.client)

    def on(self, model: type[M], handler: Callable[[M], Any] | None = None, **kwargs: Any) -> Any:
        """Like :meth:`Client.on`, for the messages of every shard (decorator or direct call)."""
        if handler is None:

            def decorator(func: Callable[[M], Any]) -> Callable[[M], Any]:
                self.on(model, func, **kwargs)
                return func

            return decorator
        self._register(lambda client: client.on(model, handler, **kwargs))
        return None

    def on_message(self, callback: F) -> F:
        """Like :meth:`Client.on_message`: every frame of every shard's current connection."""
        self._register(lambda client: client.on_message(callback))
        return callback

    def on_unknown(self, callback: F) -> F:
        """Like :meth:`Client.on_unknown`."""
        self._register(lambda client: client.on_unknown(callback))
        return callback

    def on_gap(self, callback: Callable[[SequenceGap], Any]) -> Callable[[SequenceGap], Any]:
        """Like :meth:`Client.on_gap`: gaps no overlap covered (a shard died and came back)."""
        self._register(lambda client: client.on_gap(callback))
        return callback

    def on_event(self, callback: Callable[[Any], Any]) -> Callable[[Any], Any]:
        """Like :meth:`Client.on_event`, for every shard's events, plus :class:`StreamStale`."""
        self._register(lambda client: client.on_event(callback))
        self._event_callbacks = (*self._event_callbacks, callback)
        return callback

    def on_error(self, callback: F) -> F:
        """Like :meth:`Client.on_error`."""
        self._register(lambda client: client.on_error(callback))
        return callback

    def on_connect(self, hook: F) -> F:
        """Like :meth:`Client.on_connect`: run on every connection of every shard (e.g. a login)."""
        self._register(lambda client: client.on_connect(hook))
        return hook

    def add_metrics(self, recorder_for: Callable[[int], MetricsRecorder]) -> None:
        """Time every shard, present and future: ``recorder_for(shard_index)`` makes the shard's
        :class:`~wsclient.metrics.MetricsRecorder` (see :meth:`Client.add_metrics`)."""
        if not callable(recorder_for):
            raise ConfigError("add_metrics takes a function: shard index -> the shard's metrics recorder")
        if recorder_for in self._metrics:
            return
        self._metrics.append(recorder_for)
        for shard in self._shards:
            self._attach_metrics(shard, recorder_for)

    def remove_metrics(self, recorder_for: Callable[[int], MetricsRecorder]) -> None:
        """Detach what ``recorder_for`` made from every shard, and make no more."""
        if recorder_for in self._metrics:
            self._metrics.remove(recorder_for)
        for shard in self._shards:
            recorder = shard.recorders.pop(recorder_for, None)
            if recorder is not None:
                shard.client.remove_metrics(recorder)

    def _attach_metrics(self, shard: _Shard, recorder_for: Callable[[int], MetricsRecorder]) -> None:
        recorder = recorder_for(shard.index)
        shard.recorders[recorder_for] = recorder
        shard.client.add_metrics(recorder)

    # -- streams -------------------------------------------------------------------------------------

    @property
    def streams(self) -> tuple[str, ...]:
        """Every stream of the pool."""
        return tuple(s for shard in self._shards for s in shard.of)

    def shard_of(self, stream: str) -> int | None:
        """The index of the shard carrying ``stream``."""
        for shard in self._shards:
            if stream in shard.of:
                return shard.index
        return None

    def delivering(self, stream: str) -> bool:
        """Whether ``stream`` is in the pool and flowing: with ``dedup_key``, a message of it was
        delivered since it was added; without one (nothing to tell it by), its connection is open."""
        for shard in self._shards:
            if stream in shard.of:
                if self.dedup is not None:
                    return self.dedup.sequences.last(stream) is not None
                return shard.client.state is ConnectionState.OPEN
        return False

    def add_streams(self, streams: Iterable[str], *, stale_after: float | None = None) -> None:
        """Add streams (those already in the pool are ignored), packed first-fit into the shards.

        On a running pool the subscribe messages go out at once on the shards' open connections
        (paced by the budget), and new shards connect within the connect quota. ``stale_after``
        overrides the pool's staleness limit for these streams.
        """
        if self._state in ("closing", "closed"):
            raise ClientClosedError("add_streams() on a closed pool")
        limit = self._limits.streams_per_connection
        batch_size = self._limits.subscribe_batch
        known = set(self.streams)
        added: dict[int, dict[int, list[str]]] = {}
        new_batches: list[tuple[_Shard, _Batch]] = []
        for stream in streams:
            if not isinstance(stream, str) or not stream:
                raise ConfigError(f"a stream is a non-empty string, got {stream!r}")
            if stream in known:
                continue
            known.add(stream)
            shard = next(
                (s for s in self._shards if not s.closing and (limit is None or s.count < limit)), None
            )
            if shard is None:
                shard = self._new_shard()
            batch = shard.batches[-1] if shard.batches else None
            if batch is None or len(batch.streams) >= batch_size:
                batch = _Batch([])
                shard.batches.append(batch)
                new_batches.append((shard, batch))
            elif all(batch is not b for _, b in new_batches):
                added.setdefault(shard.index, {}).setdefault(id(batch), []).append(stream)
            batch.streams.append(stream)
            shard.of[stream] = batch
            self._watch[stream] = _Watch(stale_after if stale_after is not None else None, since=self._now())
        # Streams added to a batch that went out already: one subscribe message for them now.
        for shard in self._shards:
            for batch in shard.batches:
                extra = added.get(shard.index, {}).get(id(batch))
                if extra and batch.sub is not None:
                    batch.sub.send_delta(self._subscribe(list(extra)))
        for shard, batch in new_batches:
            batch.sub = shard.client.subscribe(self._batch_message(batch))
        self._poke()

    def remove_streams(self, streams: Iterable[str]) -> None:
        """Remove streams: their unsubscribe messages go out (with ``unsubscribe``), shards left empty
        close, and when the rest fits in fewer connections the emptiest shard's streams move to the
        others, make-before-break."""
        gone: dict[int, tuple[_Batch, list[str]]] = {}
        for stream in streams:
            for shard in self._shards:
                batch = shard.of.pop(stream, None)
                if batch is None:
                    continue
                batch.streams.remove(stream)
                gone.setdefault(id(batch), (batch, []))[1].append(stream)
                if not batch.streams:
                    shard.batches.remove(batch)
                break
            self._watch.pop(stream, None)
            if self.dedup is not None:
                self.dedup.forget(stream)
        for batch, names in gone.values():
            sub = batch.sub
            if sub is None:
                continue
            if self._unsubscribe is not None:
                sub.send_delta(self._unsubscribe(names))
            if not batch.streams:
                batch.sub = None
                self._cancel_later(sub)  # no more replays; its unsubscribe went out above
        self._poke()

    def _batch_message(self, batch: _Batch) -> Callable[[], Outgoing]:
        subscribe = self._subscribe
        return lambda: subscribe(list(batch.streams))

    def _cancel_later(self, sub: Subscription) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            sub.active = False  # not running: nothing was sent, nothing to undo
            return
        task = loop.create_task(sub.cancel())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _new_shard(self) -> _Shard:
        index = next(self._shard_ids)
        client = Client(
            self._url,
            config=self._config,
            headers=self._headers,
            secrets=self._secrets,
            connector=self._connector,
            connect_gate=self.connect_gate,
            dedup=self.dedup,
            dedup_key=self._dedup_key,
        )
        shard = _Shard(index, client)
        for apply in self._registrations:
            apply(client)
        for recorder_for in self._metrics:
            self._attach_metrics(shard, recorder_for)
        self._shards.append(shard)
        return shard

    # -- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start every shard (they connect within the connect quota) and the pool's own task."""
        if self._state != "idle":
            raise ClientClosedError(f"start() on a pool that is {self._state}")
        self._state = "running"
        self._wake = asyncio.Event()
        for shard in self._shards:
            await self._start_shard(shard)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="wsclient-pool")

    async def _start_shard(self, shard: _Shard) -> None:
        if not shard.started:
            shard.started = True
            await shard.client.start()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def wait_open(self, timeout: float | None = None) -> None:
        """Wait until every shard is ``OPEN`` (``TimeoutError`` after ``timeout`` seconds)."""
        async with asyncio.timeout(timeout):
            for shard in list(self._shards):
                if shard.started and not shard.closing:
                    await shard.client.wait_open()

    async def close(self) -> None:
        """Close every shard (1000) and stop the pool's task. Idempotent."""
        if self._state in ("closing", "closed"):
            if self._task is not None:
                await asyncio.gather(self._task, return_exceptions=True)
            return
        self._state = "closing"
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await asyncio.gather(*(shard.client.close() for shard in self._shards), return_exceptions=True)
        for pending in list(self._tasks):
            pending.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._state = "closed"

    # -- the pool's task: start new shards, retire empty ones, repack, watch staleness ---------------

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _now(self) -> float:
        try:
            return asyncio.get_running_loop().time()
        except RuntimeError:
            return 0.0

    def _check_every(self) -> float | None:
        if self._stale_after is None:
            return None
        floor = self._stale_floor if self._stale_after == "auto" else float(self._stale_after)
        limits = [w.limit for w in self._watch.values() if w.limit is not None]
        return max(0.01, min([floor, *limits]) / 4)

    async def _run(self) -> None:
        assert self._wake is not None
        wake = self._wake
        while self._state == "running":  # ends with close(), which cancels the task
            wake.clear()
            try:
                await self._reconcile()
                every = self._check_every()
                if every is not None:
                    self._check_stale()
            except Exception:
                # A bug here must not leave the pool unattended: logged, and tried again.
                logger.exception("pool maintenance failed")
                every = 1.0
            try:
                async with asyncio.timeout(every):
                    await wake.wait()
            except TimeoutError:
                pass

    async def _reconcile(self) -> None:
        for shard in list(self._shards):
            if shard.closing:
                continue
            if shard.count == 0 and len(self._shards) > 1:
                await self._retire(shard)
            elif shard.count and not shard.started:
                await self._start_shard(shard)
        await self._repack()

    async def _retire(self, shard: _Shard) -> None:
        shard.closing = True
        self._ended.append(shard.client.stats)
        await shard.client.close()
        self._shards.remove(shard)

    async def _repack(self) -> None:
        """When the streams fit in fewer connections, move the emptiest shard's onto the others."""
        limit = self._limits.streams_per_connection
        live = [s for s in self._shards if not s.closing and s.count]
        if limit is None or len(live) < 2:
            return
        total = sum(s.count for s in live)
        if math.ceil(total / limit) >= len(live):
            return
        source = min(live, key=lambda s: s.count)
        targets = [s for s in live if s is not source]
        room = sum(limit - s.count for s in targets)
        if room < source.count:
            return
        moving = list(source.of)
        dedup = self.dedup
        if dedup is not None:
            for stream in moving:
                dedup.begin_move(stream)
        moved_to: dict[str, _Shard] = {}
        try:
            # Make: the streams go onto the other shards first (both deliver meanwhile, the dedup
            # holds whatever runs ahead), then break: the source shard unsubscribes and closes.
            placed = 0
            for target in targets:
                free = limit - target.count
                if free <= 0:
                    continue
                chunk = moving[placed : placed + free]
                placed += len(chunk)
                self._place(target, chunk)
                moved_to.update(dict.fromkeys(chunk, target))
                if placed >= len(moving):
                    break
            for target in targets:
                if target.started:
                    await self._settle(target)
            # The overlap, bounded: both connections deliver the moved streams until each new one
            # has delivered every stream it took over (its subscriptions took effect).
            step = 0.01
            for _ in range(max(1, int(self._limits.rotation_overlap / step))):
                if all(moved_to[s].client.has_seen(s) for s in moved_to):
                    break
                await asyncio.sleep(step)
        finally:
            for stream in moving:
                source.of.pop(stream, None)
            source.batches.clear()
            await self._retire(source)
            for stream in moving:
                to = moved_to.get(stream)
                if to is not None:
                    # What the new connection brought ahead of the old one follows, in order.
                    to.client.end_move(stream)
                elif dedup is not None:
                    dedup.end_move(stream)
            self._stats["moves"] += len(moving)

    def _place(self, target: _Shard, streams: list[str]) -> None:
        batch_size = self._limits.subscribe_batch
        for start in range(0, len(streams), batch_size):
            batch = _Batch(list(streams[start : start + batch_size]))
            target.batches.append(batch)
            for stream in batch.streams:
                target.of[stream] = batch
            batch.sub = target.client.subscribe(self._batch_message(batch))

    async def _settle(self, shard: _Shard) -> None:
        """Wait (bounded) until ``shard``'s queued subscribe messages have left."""
        client = shard.client
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._config.open_timeout):
                await client.wait_open()
                await client.drain()

    # -- staleness -------------------------------------------------------------------------------------

    def _check_stale(self) -> None:
        dedup = self.dedup
        if dedup is None:
            return
        now = self._now()
        auto = self._stale_after == "auto"
        default = None if auto else float(self._stale_after)  # type: ignore[arg-type]
        # A stream whose connection is down is silent for that reason; the reconnect replays its
        # subscription. Its silence counts from when the connection is open again.
        down = {
            stream
            for shard in self._shards
            if shard.client.state is not ConnectionState.OPEN
            for stream in shard.of
        }
        for stream, watch in self._watch.items():
            seq = dedup.sequences.last(stream)
            if seq != watch.last_seq:
                if watch.first_seq is None and seq is not None:
                    watch.first_seq, watch.first_at = seq, now
                elif seq is not None and watch.first_seq is not None and now > watch.first_at:
                    rate = (seq - watch.first_seq) / (now - watch.first_at)
                    # Learned: as long as 20 messages take at the observed rate.
                    watch.learned = 20.0 / rate if rate > 0 else None
                watch.last_seq, watch.since, watch.step = seq, now, 0
                continue
            if stream in down:
                watch.since, watch.step = now, 0
                continue
            limit = watch.limit if watch.limit is not None else default
            if limit is None:
                limit = (
                    max(self._stale_floor, watch.learned or 0.0) if watch.learned else self._stale_floor * 4
                )
            silent = now - watch.since
            if silent < limit * (watch.step + 1):
                continue
            shard = next((s for s in self._shards if stream in s.of), None)
            if shard is None or shard.client.state is not ConnectionState.OPEN:
                continue
            if watch.step == 0:
                watch.step = 1
                batch = shard.of[stream]
                if batch.sub is not None:
                    batch.sub.send_delta(self._subscribe([stream]))
                self._stats["stale_resubscribes"] += 1
                self._emit(StreamStale(stream, shard.index, silent, limit, "resubscribed"))
            elif watch.step == 1:
                watch.step = 2
                shard.client.rotate(self._limits.rotation_overlap)
                self._stats["stale_replacements"] += 1
                self._emit(StreamStale(stream, shard.index, silent, limit, "replaced"))
                # One replacement per shard per check: its other silent streams wait for the result.
                for other, w in self._watch.items():
                    if other in shard.of and w.step == 1:
                        w.step = 2

    def _emit(self, event: StreamStale) -> None:
        logger.warning(
            "stream %s silent for %.1fs (limit %.1fs): %s",
            event.stream,
            event.silent_for,
            event.limit,
            event.action,
        )
        for callback in self._event_callbacks:
            try:
                callback(event)
            except Exception:
                logger.exception("on_event callback failed")

    # -- reporting -------------------------------------------------------------------------------------

    @property
    def shards(self) -> tuple[ShardInfo, ...]:
        """Each shard's state and figures."""
        out = []
        for shard in self._shards:
            stats = shard.client.stats
            out.append(
                ShardInfo(
                    shard.index,
                    shard.client.state,
                    shard.count,
                    stats.connects,
                    stats.rotations,
                    stats.messages_in,
                )
            )
        return tuple(out)

    @property
    def stats(self) -> PoolStats:
        """Totals over the shards (closed ones included) and each shard's :class:`ClientStats`."""
        live = tuple(shard.client.stats for shard in self._shards)
        every = (*self._ended, *live)
        dedup = self.dedup
        gate = self.connect_gate
        return PoolStats(
            shards=live,
            streams=sum(s.count for s in self._shards),
            messages_in=sum(s.messages_in for s in every),
            messages_out=sum(s.messages_out for s in every),
            connects=sum(s.connects for s in every),
            rotations=sum(s.rotations for s in every),
            budget_waits=sum(s.budget_waits for s in every),
            connect_waits=gate.waits if gate is not None else 0,
            duplicates_dropped=dedup.dropped if dedup is not None else 0,
            held=dedup.held if dedup is not None else 0,
            sequence_gaps=(dedup.sequences.gaps + dedup.sequences.resets) if dedup is not None else 0,
            stale_resubscribes=self._stats["stale_resubscribes"],
            stale_replacements=self._stats["stale_replacements"],
            moves=self._stats["moves"],
        )

    def __repr__(self) -> str:
        return f"<Pool {len(self._shards)} shards, {len(self.streams)} streams, {self._state}>"
