"""A fleet of feeders sharing a set of streams, coordinated through a JetStream key-value bucket.

Each feeder process runs a :class:`~wsclient.pool.Pool` and a :class:`Fleet`. The fleet keeps a
lease in the bucket (one key per member, renewed every ``lease / 3`` seconds; the bucket's TTL is the
lease, so the key of a member that stops renewing vanishes ``lease`` seconds after its last renewal)
and reads the live members back at every renewal. Every member computes the same assignment from the
same member list: each stream goes to the ``redundancy`` members with the highest rendezvous
(highest-random-weight) score for it, so a change of membership moves only the streams of the
member that came or went.

* A member that dies: its key expires within ``lease``; the others see it at their next renewal and
  subscribe to its streams. The gap, if any, is that time plus one subscribe, and the stream
  sequence checks downstream report it. With ``redundancy=2`` every stream already runs on a second
  member, and nothing is lost.
* A member that joins: it subscribes to its share at once, and lists in its key's value the streams
  its pool delivers (``Pool.delivering``). The members that carried those streams keep them until
  a new owner lists them, at most ``handoff`` seconds (make-before-break). JetStream's duplicate
  window drops the copies published during the overlap, as long as the sinks give the same ids.
* A member that leaves cleanly (:meth:`Fleet.close`) removes its key, so the others take over at
  their next renewal instead of after the lease, and keeps its streams until they list them.

Pure parts (:func:`owners`, :func:`share`) are plain functions, testable without a server.

Requires the ``nats`` extra: ``pip install 'wsclient[nats]'``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from ._tasks import cancel_and_wait
from .logs import LogLimiter
from .pool import Pool

try:
    import nats
    from nats.aio.client import Client as NatsClient
    from nats.js.errors import BadRequestError
    from nats.js.kv import KeyValue
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("wsclient.fleet needs nats-py: pip install 'wsclient[nats]'") from exc

__all__ = ["Fleet", "FleetStats", "owners", "share"]

_log = logging.getLogger("wsclient.fleet")

_KEY = re.compile(r"[^-_=a-zA-Z0-9]")
_BUCKET = re.compile(r"^[a-zA-Z0-9_-]+$")


def _score(member: str, stream: str) -> int:
    digest = hashlib.blake2b(f"{member}\x00{stream}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owners(stream: str, members: Iterable[str], redundancy: int = 1) -> tuple[str, ...]:
    """The members that carry ``stream``: the ``redundancy`` highest rendezvous scores."""
    ranked = sorted(members, key=lambda m: (_score(m, stream), m), reverse=True)
    return tuple(ranked[:redundancy])


def share(streams: Iterable[str], members: Sequence[str], member: str, redundancy: int = 1) -> set[str]:
    """The streams of ``streams`` that ``member`` carries among ``members``."""
    if member not in members:
        return set()
    return {s for s in streams if member in owners(s, members, redundancy)}


@dataclass(frozen=True, slots=True)
class FleetStats:
    """A snapshot of a fleet member's view."""

    member: str
    """This member's id."""
    members: tuple[str, ...]
    """The live members, sorted, as last read."""
    mine: int
    """Streams this member carries now (handed-off ones included until they go)."""
    taken: int
    """Streams taken over or added since start."""
    released: int
    """Streams handed over to other members since start."""
    renewals: int
    """Leases renewed."""
    renew_failures: int
    """Renewals that failed (the bus unreachable)."""


class Fleet:
    """Share ``streams`` with the other feeders of the fleet ``name``: this member's share is added
    to ``pool`` and kept up to date as members come and go (see the module).

    ::

        pool = Pool(venue_url, limits=..., subscribe=..., dedup_key=...)
        pool.on(Trade, sink)
        fleet = Fleet(pool, "nats://127.0.0.1:4222", streams, name="binance-trades", redundancy=2)
        async with sink, pool, fleet:
            await stop.wait()

    Args:
        pool: The pool this member's streams go to; the fleet adds and removes them.
        servers: NATS URL(s) of the bucket.
        streams: Every stream of the fleet (the same list in every member).
        name: The fleet, and its bucket (``[a-zA-Z0-9_-]``).
        member: This member's id (unique in the fleet); host, pid and a random suffix by default.
        redundancy: How many members carry each stream (at most the number of live members).
        lease: Seconds a member stays in the fleet without renewing.
        handoff: The longest a stream stays here after another member took it over, waiting for
            the new owner to deliver it; ``3 * lease`` by default.
    """

    def __init__(
        self,
        pool: Pool,
        servers: str | Sequence[str],
        streams: Iterable[str],
        *,
        name: str = "feeders",
        member: str | None = None,
        redundancy: int = 1,
        lease: float = 5.0,
        handoff: float | None = None,
    ) -> None:
        if not _BUCKET.match(name):
            raise ValueError(f"name must be letters, digits, '-' or '_' (a bucket name), got {name!r}")
        if redundancy < 1:
            raise ValueError(f"redundancy must be at least 1, got {redundancy!r}")
        if not lease > 0.5:
            raise ValueError(f"lease must be above 0.5 seconds, got {lease!r}")
        if handoff is not None and handoff < 0:
            raise ValueError(f"handoff must not be negative, got {handoff!r}")
        self.pool = pool
        self.servers = [servers] if isinstance(servers, str) else list(servers)
        self.streams = tuple(dict.fromkeys(streams))
        if not self.streams:
            raise ValueError("streams must name at least one stream")
        self.name = name
        default = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.member = _KEY.sub("_", member or default)
        self.redundancy = redundancy
        self.lease = lease
        self.handoff = 3 * lease if handoff is None else handoff
        self._nc: NatsClient | None = None
        self._kv: KeyValue | None = None
        self._task: asyncio.Task[None] | None = None
        self._members: tuple[str, ...] = ()
        self._mine: set[str] = set()  # what the pool carries for the fleet
        self._leaving: dict[str, float] = {}  # stream -> when another member became its owner
        self._live: dict[str, frozenset[str]] = {}  # member -> the streams it says it delivers
        self._changed = asyncio.Event()
        self._limiter = LogLimiter(burst=3)
        self._taken = self._released = self._renewals = self._failures = 0

    @property
    def _subject_prefix(self) -> str:
        return f"$KV.{self.name}."

    async def start(self) -> None:
        """Join: connect, take a lease, and a third of the lease later (when the members that
        started with this one are known) add this member's share to the pool."""
        if self._task is not None:
            return
        self._nc = await nats.connect(
            self.servers, name=f"wsclient-fleet-{self.member}", error_cb=self._on_nats_error
        )
        js = self._nc.jetstream()
        try:
            self._kv = await js.create_key_value(bucket=self.name, ttl=self.lease, history=1)
        except BadRequestError:  # the bucket exists (made by another member): use it as it is
            self._kv = await js.key_value(self.name)
        # Announce first, take streams one renewal period later: members started together see each
        # other by then, instead of each subscribing to everything and handing most of it back.
        await self._renew(apply=False)
        await asyncio.sleep(self.lease / 3)
        await self._renew()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="wsclient-fleet")

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Leave, make-before-break: stop renewing and remove the lease, so that the others take
        this member's streams at their next renewal, and keep carrying them until the new owners
        deliver them (at most ``handoff`` seconds). The pool's streams are left to the pool: close
        it next."""
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task, f"fleet {self.name}'s renewal task")
        nc, self._nc = self._nc, None
        if nc is None:
            return
        try:
            js = nc.jetstream()
            with contextlib.suppress(Exception):  # gone anyway once the lease runs out
                await js.purge_stream(f"KV_{self.name}", subject=self._subject_prefix + self.member)
                others = tuple(m for m in self._members if m != self.member)
                if others and self._mine:
                    await self._hand_over(others)
        finally:
            self._leaving.clear()
            with contextlib.suppress(Exception):
                await nc.close()

    async def _hand_over(self, others: tuple[str, ...]) -> None:
        """Wait (bounded by ``handoff``) until every stream here is delivered by its new owner."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.handoff
        pending = set(self._mine)
        while pending and loop.time() < deadline:
            await asyncio.sleep(min(self.lease / 6, max(deadline - loop.time(), 0.0)))
            await self._read_live(others)
            pending = {s for s in pending if not self._taken_over(s, others)}

    @property
    def stats(self) -> FleetStats:
        """This member's view, now."""
        return FleetStats(
            member=self.member,
            members=self._members,
            mine=len(self._mine),
            taken=self._taken,
            released=self._released,
            renewals=self._renewals,
            renew_failures=self._failures,
        )

    async def _on_nats_error(self, exc: Exception) -> None:
        # nats-py's default prints a traceback per failed attempt; one rate-limited line says it all.
        if self._limiter.allow("nats") is not None:
            _log.warning("fleet %s: NATS error: %s", self.name, exc)

    async def wait_members(self, count: int, timeout: float | None = None) -> None:
        """Return once this member sees ``count`` live members (tests, start-up scripts)."""

        async def seen() -> None:
            while len(self._members) != count:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(seen(), timeout)

    async def _run(self) -> None:
        period = self.lease / 3
        while True:
            await asyncio.sleep(period)
            await self._renew()

    async def _renew(self, *, apply: bool = True) -> None:
        assert self._kv is not None and self._nc is not None
        delivering = self.pool.delivering
        live = sorted(s for s in self._mine if delivering(s))
        try:
            await self._kv.put(self.member, json.dumps(live, separators=(",", ":")).encode())
            self._renewals += 1
            info = await self._nc.jetstream().stream_info(
                f"KV_{self.name}", subjects_filter=self._subject_prefix + ">"
            )
        except Exception as exc:
            # The bus is unreachable: the lease runs out on its side and the others take over; here
            # the streams stay (their copies are dropped by the duplicate window).
            self._failures += 1
            _log.warning("fleet %s: lease renewal failed (%s)", self.name, exc)
            return
        if not apply:
            return
        prefix = len(self._subject_prefix)
        members = tuple(sorted(s[prefix:] for s in (info.state.subjects or {})))
        if self.member not in members:  # our own put is there, unless it expired meanwhile
            members = tuple(sorted((*members, self.member)))
        if members != self._members:
            _log.info("fleet %s: members %s", self.name, ", ".join(members))
            self._members = members
            self._apply(share(self.streams, members, self.member, self.redundancy))
            self._changed.set()
        if self._leaving:
            await self._release_taken_over()

    async def _read_live(self, members: Iterable[str]) -> None:
        """What each of ``members`` says it delivers (the value of its key)."""
        assert self._kv is not None
        for member in members:
            try:
                entry = await self._kv.get(member)
                self._live[member] = frozenset(json.loads(entry.value or b"[]"))
            except Exception:  # gone, or not a list (an older member): it delivers nothing known
                self._live[member] = frozenset()

    def _taken_over(self, stream: str, members: Sequence[str]) -> bool:
        """Whether a member other than this one that owns ``stream`` says it delivers it."""
        return any(
            stream in self._live.get(m, ())
            for m in owners(stream, members, self.redundancy)
            if m != self.member
        )

    async def _release_taken_over(self) -> None:
        """Hand over the streams the new owners deliver now, or that waited ``handoff`` for it."""
        now = asyncio.get_running_loop().time()
        new_owners = {m for s in self._leaving for m in owners(s, self._members, self.redundancy)}
        await self._read_live(new_owners - {self.member})
        for stream, since in list(self._leaving.items()):
            late = now - since >= self.handoff
            if self._taken_over(stream, self._members) or late:
                if late:
                    _log.warning(
                        "fleet %s: %s handed over without a sign of its new owner", self.name, stream
                    )
                self._release(stream)

    def _apply(self, wanted: set[str]) -> None:
        for stream in wanted & self._leaving.keys():
            del self._leaving[stream]  # ours again before it left: it stays
        add = wanted - self._mine
        if add:
            _log.info("fleet %s: taking %d stream(s)", self.name, len(add))
            self.pool.add_streams(sorted(add))
            self._mine |= add
            self._taken += len(add)
        now = asyncio.get_running_loop().time()
        for stream in self._mine - wanted:
            self._leaving.setdefault(stream, now)

    def _release(self, stream: str) -> None:
        self._leaving.pop(stream, None)
        self._mine.discard(stream)
        self._released += 1
        with contextlib.suppress(Exception):  # a pool closing meanwhile: nothing to hand over
            self.pool.remove_streams([stream])
