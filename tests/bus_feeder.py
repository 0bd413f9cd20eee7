"""A feeder process for the bus tests: a Pool of the fake venue's trades into JetStream.

    python tests/bus_feeder.py VENUE_URL NATS_URL STREAMS... [--fleet NAME --member ID
        --redundancy K --lease S]

Without ``--fleet`` it carries every stream; with it, its share of the fleet. It prints one JSON line
``{"ready": ...}`` once its sink is connected (and its fleet joined), runs until SIGTERM or SIGINT,
then closes cleanly and prints ``{"stats": {...}}``.
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import itertools
import json
import signal
import sys
import time
from typing import Any

from wsclient import ClientConfig, Heartbeat, Pool, Reconnect, VenueLimits
from wsclient.sinks import JetStreamSpec, NatsJetStreamSink
from wsclient.testing.venue import VenueTrade

STREAM = JetStreamSpec(name="MD", subjects=("md.>",), duplicate_window=60.0)


def subject(m: VenueTrade) -> str:
    return f"md.trades.{m.s.split('@')[0]}"


def msg_id(m: VenueTrade) -> str:
    return f"{m.s}:{m.t}"


def dump_tasks() -> None:
    for task in asyncio.all_tasks():
        print(f"--- {task.get_name()}", file=sys.stderr)
        task.print_stack(limit=12, file=sys.stderr)
    sys.stderr.flush()


async def main(argv: list[str]) -> None:
    # A stop that hangs is shown by the test: every thread's stack (SIGUSR2, answered even by a
    # blocked loop) and every task's (SIGQUIT).
    faulthandler.register(signal.SIGUSR2)
    parser = argparse.ArgumentParser()
    parser.add_argument("venue")
    parser.add_argument("nats")
    parser.add_argument("streams", nargs="+")
    parser.add_argument("--fleet")
    parser.add_argument("--member")
    parser.add_argument("--redundancy", type=int, default=1)
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--per-connection", type=int, default=50)
    args = parser.parse_args(argv)

    ids = itertools.count(1)
    pool = Pool(
        args.venue,
        subscribe=lambda streams: {"method": "SUBSCRIBE", "params": list(streams), "id": next(ids)},
        unsubscribe=lambda streams: {"method": "UNSUBSCRIBE", "params": list(streams), "id": next(ids)},
        config=ClientConfig(
            discriminator="e",
            heartbeat=Heartbeat(interval=1.0, timeout=1.0),
            reconnect=Reconnect(initial_delay=0.05, max_delay=0.5),
        ),
        limits=VenueLimits(streams_per_connection=args.per_connection, subscribe_batch=args.per_connection),
        dedup_key=lambda m: (m.s, m.t),
    )
    sink = NatsJetStreamSink(args.nats, subject=subject, msg_id=msg_id, stream=STREAM, max_pending=512)
    pool.on(VenueTrade, sink)
    pool.on_unknown(lambda frame: None)  # the venue's acks
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGQUIT, dump_tasks)

    fleet: Any = None
    await sink.start(timeout=10)
    if args.fleet:
        from wsclient.fleet import Fleet

        fleet = Fleet(
            pool,
            args.nats,
            args.streams,
            name=args.fleet,
            member=args.member,
            redundancy=args.redundancy,
            lease=args.lease,
        )
        await fleet.start()
    else:
        pool.add_streams(args.streams)
    await pool.start()
    print(json.dumps({"ready": args.member or True}), flush=True)
    await stop.wait()
    started = time.monotonic()

    def step(what: str) -> None:  # on stderr, which a failing test shows
        print(f"{time.monotonic() - started:.2f}s {what}", file=sys.stderr, flush=True)

    if fleet is not None:
        await fleet.close()
        step("fleet closed")
    await pool.close()
    step("pool closed")
    await sink.close(timeout=10)
    step("sink closed")
    stats = sink.stats
    out = {
        "received": stats.received,
        "stored": stats.stored,
        "duplicates": stats.duplicates,
        "abandoned": stats.abandoned,
    }
    if fleet is not None:
        out["taken"] = fleet.stats.taken
    print(json.dumps({"stats": out}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
