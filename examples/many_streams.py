"""Many streams within a venue's limits: a Pool over several connections, exactly once.

Runs against an embedded fake venue that enforces Binance-like limits, scaled down so that it all
happens in a few seconds: 60 streams per connection, 5 client messages per second (pings included),
10 connects per 2 seconds, connections cut at 4 seconds of age. The pool packs 150 streams into three
connections, replaces each one before the venue cuts it (make-before-break), and the de-duplicator
makes every trade reach the handler once, in order, through every rotation.

    python examples/many_streams.py
"""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict
from typing import Literal

from wsclient import ClientConfig, Connected, Heartbeat, Message, Pool, StreamStale, VenueLimits
from wsclient.testing import VenueRules, VenueServer


class Trade(Message):
    e: Literal["trade"]  # the tag: Binance's event type field
    s: str  # the stream
    t: int  # the trade id, contiguous per stream
    p: str
    q: str


# What the venue allows (Binance's published limits are VenueLimits.binance_spot()).
LIMITS = VenueLimits(
    streams_per_connection=60,
    subscribe_batch=30,
    messages_per_second=5,
    count_control_frames=True,
    connects_per_window=10,
    connect_window=2.0,
    max_connection_age=4.0,
    age_jitter=0.2,
    rotation_overlap=1.0,
)


async def main() -> None:
    rules = VenueRules(
        streams_per_connection=60,
        messages_per_second=5,
        count_control_frames=True,
        connects_per_window=10,
        connect_window=2.0,
        max_connection_age=4.0,
        age_cut="abort",
    )
    async with VenueServer(rules, rate=20) as venue:
        ids = itertools.count(1)
        pool = Pool(
            venue.url,
            # Every venue spells its subscribe message its own way: the application builds it.
            subscribe=lambda streams: {"method": "SUBSCRIBE", "params": list(streams), "id": next(ids)},
            unsubscribe=lambda streams: {"method": "UNSUBSCRIBE", "params": list(streams), "id": next(ids)},
            config=ClientConfig(discriminator="e", heartbeat=Heartbeat(interval=2.0, timeout=1.5)),
            limits=LIMITS,
            dedup_key=lambda trade: (trade.s, trade.t),  # exactly once through rotations
            stale_after="auto",
        )
        seen: dict[str, list[int]] = defaultdict(list)
        pool.on(Trade, lambda trade: seen[trade.s].append(trade.t))
        pool.on_unknown(lambda frame: None)  # the venue's acknowledgements
        rotated = asyncio.Event()

        def on_event(event: object) -> None:
            if isinstance(event, StreamStale):
                print(event)
            # A replaced connection announces its successor: Connected(reconnect=True).
            if isinstance(event, Connected) and event.reconnect and pool.stats.rotations >= 6:
                rotated.set()

        pool.on_event(on_event)
        pool.add_streams(f"sym{i:03d}@trade" for i in range(150))
        print("shards:", [info.streams for info in pool.shards])

        async with pool:
            await pool.wait_open(10)
            async with asyncio.timeout(30):
                await rotated.wait()  # every shard replaced twice, on average
            stats = pool.stats

    copies = sum(len(ids) - len(set(ids)) for ids in seen.values())
    in_order = all(ids == list(range(ids[0], ids[0] + len(ids))) for ids in seen.values())
    print(f"streams={len(seen)} messages={sum(map(len, seen.values()))} rotations={stats.rotations}")
    print(f"copies dropped by the pool={stats.duplicates_dropped}; copies delivered={copies}")
    print(f"every stream exactly once, in order: {in_order}")
    print(f"venue: violations={venue.total_violations} age cuts={venue.age_cuts}")


if __name__ == "__main__":
    asyncio.run(main())
