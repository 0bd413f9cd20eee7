"""The pydantic v2 models every typed variant validates into, and the per-message work.

One discriminated union on ``type`` over Trade / Book / Ticker (plus the stream's End marker), with
Decimal prices. Bare variants call ``ADAPTER.validate_json(frame)`` and hand the result to the same
handler object that wsclient variants register with ``client.on(Model, handler)``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import Field, TypeAdapter

from wsclient import Message

__all__ = ["ADAPTER", "MODELS", "Book", "End", "LatencySink", "Sink", "Ticker", "Trade"]


class Trade(Message):
    type: Literal["trade"]
    symbol: str
    seq: int
    ts: int
    price: Decimal
    size: Decimal
    side: Literal["buy", "sell"]
    trade_id: int


class Book(Message):
    type: Literal["book"]
    symbol: str
    seq: int
    ts: int
    side: Literal["bid", "ask"]
    price: Decimal
    size: Decimal
    level: int
    action: Literal["new", "update", "delete"]


class Ticker(Message):
    type: Literal["ticker"]
    symbol: str
    seq: int
    ts: int
    bid: Decimal
    ask: Decimal
    last: Decimal
    volume: Decimal


class End(Message):
    type: Literal["end"]
    seq: int
    ts: int


MODELS: tuple[type[Message], ...] = (Trade, Book, Ticker, End)
Any_ = Annotated[Trade | Book | Ticker | End, Field(discriminator="type")]
ADAPTER: TypeAdapter[Trade | Book | Ticker | End] = TypeAdapter(Any_)


class Sink:
    """The work per message in throughput runs: count, time the first message and the end marker."""

    __slots__ = ("count", "done", "t_first", "t_last")

    def __init__(self, done: Callable[[], object]) -> None:
        self.count = 0
        self.t_first = 0.0
        self.t_last = 0.0
        self.done = done

    def __call__(self, msg: Message) -> None:
        self.count += 1
        if self.count == 1:
            self.t_first = time.perf_counter()
        if msg.__class__ is End:
            self.t_last = time.perf_counter()
            self.done()


class LatencySink:
    """The work per message in latency runs: handler time minus the server's write-time stamp."""

    __slots__ = ("done", "samples")

    def __init__(self, done: Callable[[], object]) -> None:
        self.samples: list[int] = []
        self.done = done

    def __call__(self, msg: Message) -> None:
        now = time.monotonic_ns()
        if msg.__class__ is End:
            self.done()
        else:
            self.samples.append(now - msg.ts)  # type: ignore[attr-defined]
