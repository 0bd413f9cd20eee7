"""Exactly once, in per-stream order, across the connections that carry a stream. Pure.

When two connections carry the same stream for a moment (a make-before-break rotation, a stream
moved between a pool's connections), every message arrives twice, and not in step: either link may
be ahead. :class:`Dedup` decides, for each message keyed ``(stream, seq)`` by the application's
``dedup_key``, whether the handlers see it:

* ``seq`` right after the last delivered one (or the stream's first): **deliver**;
* ``seq`` at or below the last delivered one: a copy, **drop** it (a counter, not a set: the state is
  one integer per stream, the high-water mark, whatever the traffic);
* ``seq`` further ahead while the stream is *merging* (two links carry it): **hold** it. The other
  link may still bring the numbers in between; a held message is delivered as soon as it continues
  the stream, and whatever is still held when the overlap ends is delivered then, in order, its gap
  reported honestly by the sequence tracker.
* further ahead when only one link carries the stream: deliver; it is a real gap, reported.

Resets (a venue's counter starting again: a number at or below the tracker's ``start``, or far below
the last) are delivered, never mistaken for copies.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from .routing import Judgement, SequenceTracker

__all__ = ["Dedup", "Judgement"]


class Dedup:
    """Per-stream high-water marks and the messages held while two links overlap.

    ``sequences`` is the tracker the marks live in (shared with gap reporting: a pool gives one to
    all its connections). ``max_held`` bounds the messages held over all streams; beyond it, a
    message ahead is delivered with its gap reported rather than held.
    """

    __slots__ = (
        "_held",
        "_moving",
        "calm",
        "dropped",
        "held",
        "holding",
        "max_held",
        "overflowed",
        "sequences",
    )

    def __init__(self, sequences: SequenceTracker | None = None, *, max_held: int = 100_000) -> None:
        if max_held < 0:
            raise ValueError(f"max_held must be >= 0, got {max_held}")
        self.sequences = sequences if sequences is not None else SequenceTracker()
        self.max_held = max_held
        self._held: dict[Hashable, dict[int, Any]] = {}
        self.holding = 0
        """Messages held at the moment, over all streams."""
        self.calm = True
        """Nothing held and no stream being moved: the router's fast path applies."""
        self._moving: dict[Hashable, int] = {}
        self.dropped = 0
        """Copies not delivered."""
        self.held = 0
        """Messages held, then delivered in order."""
        self.overflowed = 0
        """Messages delivered ahead of a gap because ``max_held`` was reached."""

    # -- which streams merge -------------------------------------------------------------------------

    def begin_move(self, stream: Hashable) -> None:
        """``stream`` is about to arrive on a second link (moved between connections)."""
        self._moving[stream] = self._moving.get(stream, 0) + 1
        self.calm = False

    def end_move(self, stream: Hashable) -> list[tuple[Hashable, Any]]:
        """The move of ``stream`` is over; what was held for it, to deliver now (in order)."""
        count = self._moving.get(stream, 0) - 1
        if count > 0:
            self._moving[stream] = count
            return []
        self._moving.pop(stream, None)
        released = self.release_all((stream,))
        self._settle()
        return released

    @property
    def moving(self) -> bool:
        """Whether any stream is being moved between links."""
        return bool(self._moving)

    def merging(self, stream: Hashable) -> bool:
        """Whether ``stream`` is being moved between links."""
        return stream in self._moving

    # -- judging -------------------------------------------------------------------------------------

    def judge(self, stream: Hashable, seq: int, *, merging: bool) -> Judgement:
        """Deliver, drop or hold message ``seq`` of ``stream`` (``merging``: the link carrying it
        overlaps another that carries the same streams)."""
        last = self.sequences.last(stream)
        if last is None or seq == last + 1:
            return Judgement.DELIVER
        if seq <= last:
            if self.sequences.is_reset(stream, seq):
                return Judgement.DELIVER
            self.dropped += 1
            return Judgement.DROP
        if (merging or stream in self._moving) and self.holding < self.max_held:
            return Judgement.HOLD
        if merging or stream in self._moving:
            self.overflowed += 1
        return Judgement.DELIVER

    def hold(self, stream: Hashable, seq: int, item: Any) -> None:
        """Keep ``item`` (message ``seq`` of ``stream``) until it continues the stream."""
        held = self._held.get(stream)
        if held is None:
            held = self._held[stream] = {}
        if seq in held:
            self.dropped += 1  # both links brought it ahead of the stream: a copy
            return
        held[seq] = item
        self.holding += 1
        self.calm = False

    def has_held(self, stream: Hashable) -> bool:
        """Whether messages of ``stream`` are held."""
        return stream in self._held

    @property
    def held_now(self) -> int:
        """Messages held at the moment, over all streams (:attr:`holding`)."""
        return self.holding

    def release(self, stream: Hashable) -> list[Any]:
        """The held messages that now continue ``stream``, in order (removed from the hold); copies
        of what was delivered meanwhile are dropped."""
        held = self._held.get(stream)
        last = self.sequences.last(stream)
        if held is None or last is None:
            return []
        out: list[Any] = []
        for seq in [s for s in held if s <= last]:
            del held[seq]
            self.holding -= 1
            self.dropped += 1
        expected = last + 1
        while expected in held:  # bounded by the number held
            out.append(held.pop(expected))
            self.holding -= 1
            expected += 1
        if not held:
            del self._held[stream]
        self.held += len(out)
        self._settle()
        return out

    def release_all(self, streams: tuple[Hashable, ...] | None = None) -> list[tuple[Hashable, Any]]:
        """Everything held (for ``streams``, or for every stream not being moved), in per-stream
        order, copies dropped: what the end of an overlap delivers, gaps and all."""
        if streams is None:
            streams = tuple(s for s in self._held if s not in self._moving)
        out: list[tuple[Hashable, Any]] = []
        for stream in streams:
            held = self._held.pop(stream, None)
            if not held:
                continue
            self.holding -= len(held)
            last = self.sequences.last(stream)
            for seq in sorted(held):
                if last is not None and seq <= last:
                    self.dropped += 1
                    continue
                out.append((stream, held[seq]))
                last = seq
        self.held += len(out)
        self._settle()
        return out

    def forget(self, stream: Hashable) -> None:
        """Drop what is known of ``stream`` (unsubscribed for good): its mark and anything held."""
        held = self._held.pop(stream, None)
        if held:
            self.holding -= len(held)
        self._moving.pop(stream, None)
        self.sequences.forget(stream)
        self._settle()

    def _settle(self) -> None:
        # Dicts keep their table at its largest size: empty ones are made anew, so the state after
        # an overlap is back to one mark per stream.
        if not self._held:
            self._held = {}
        if not self._moving:
            self._moving = {}
        self.calm = not self.holding and not self._moving

    def __repr__(self) -> str:
        return f"<Dedup dropped={self.dropped} held_now={self.holding} moving={len(self._moving)}>"
