"""A market-data feeder: typed messages, subscriptions, sequence-gap handling and statistics.

Started without a URL, it runs against wsclient's embedded fake feed on 127.0.0.1, restarts that
feed once to show a reconnect (and the sequence gap it leaves), prints its statistics and exits:

    python examples/market_data_feeder.py                # embedded feed, ~3 s
    python examples/market_data_feeder.py URL [SECONDS]  # your endpoint (adapt the subscribe messages)
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from decimal import Decimal
from typing import Literal

from wsclient import (
    Client,
    ClientConfig,
    ClientEvent,
    Connected,
    Disconnected,
    Heartbeat,
    Message,
    Reconnect,
    SequenceGap,
)
from wsclient.testing import FeedServer

SYMBOLS = ("BTC-USD", "ETH-USD")


class Trade(Message):
    type: Literal["trade"]  # the tag: ClientConfig.discriminator is "type" by default
    symbol: str
    price: Decimal  # exact prices: never a float
    qty: Decimal
    side: Literal["buy", "sell"]
    seq: int


class Ticker(Message):
    type: Literal["ticker"]
    symbol: str
    bid: Decimal
    ask: Decimal
    seq: int


class Feeder:
    """Keeps the latest prices and counts what it saw."""

    def __init__(self) -> None:
        self.last: dict[str, Decimal] = {}
        self.spread: dict[str, Decimal] = {}
        self.counts: Counter[str] = Counter()
        self.gaps: list[SequenceGap] = []

    def on_trade(self, trade: Trade) -> None:
        self.last[trade.symbol] = trade.price
        self.counts["trades"] += 1

    def on_ticker(self, ticker: Ticker) -> None:
        self.spread[ticker.symbol] = ticker.ask - ticker.bid
        self.counts["tickers"] += 1

    def on_gap(self, gap: SequenceGap) -> None:
        # A real feeder would fetch a snapshot (or resubscribe) for this stream here: messages
        # between gap.expected and gap.received - 1 never arrived.
        self.gaps.append(gap)
        where = "across a reconnect" if gap.across_reconnect else "on a live connection"
        print(
            f"gap in {gap.stream}: expected seq {gap.expected}, got {gap.received} "
            f"({gap.missing} missed, {where}) -> resync this stream"
        )


def build_client(url: str) -> tuple[Client, Feeder]:
    client = Client(
        url,
        config=ClientConfig(
            heartbeat=Heartbeat(interval=1.0, timeout=1.0, server_idle_timeout=60),
            reconnect=Reconnect(initial_delay=0.1, max_delay=5.0),
        ),
    )
    feeder = Feeder()
    # (stream, seq): one sequence per channel and symbol, checked for gaps by wsclient.
    client.on(Trade, feeder.on_trade, seq_key=lambda t: (("trades", t.symbol), t.seq))
    client.on(Ticker, feeder.on_ticker, seq_key=lambda t: (("ticker", t.symbol), t.seq))
    client.on_gap(feeder.on_gap)
    for symbol in SYMBOLS:
        for channel in ("trades", "ticker"):
            # Remembered: replayed in order after every reconnect.
            client.subscribe({"op": "subscribe", "channel": channel, "symbol": symbol})
    return client, feeder


async def run(url: str, seconds: float, feed: FeedServer | None) -> None:
    client, feeder = build_client(url)
    reconnected = asyncio.Event()

    @client.on_event
    def on_event(event: ClientEvent) -> None:
        if isinstance(event, Connected):
            print(f"connected (reconnect={event.reconnect})")
            if event.reconnect:
                reconnected.set()
        elif isinstance(event, Disconnected):
            print(f"disconnected: {event.reason}; retry in {event.delay:.2f}s")

    async with client:
        await client.wait_open(timeout=5)
        await asyncio.sleep(seconds / 2)
        if feed is not None:
            print("restarting the feed (close 1012)")
            await feed.restart()
            await asyncio.wait_for(reconnected.wait(), timeout=5)
        await asyncio.sleep(seconds / 2)

    stats = client.stats
    prices = ", ".join(f"{s} {p}" for s, p in sorted(feeder.last.items()))
    print(f"last prices: {prices}")
    print(
        f"trades={feeder.counts['trades']} tickers={feeder.counts['tickers']} gaps={len(feeder.gaps)} "
        f"reconnects={stats.reconnects} messages_in={stats.messages_in} invalid={stats.invalid_messages}"
    )


async def main() -> None:
    if len(sys.argv) > 1:
        await run(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 30.0, None)
        return
    async with FeedServer(rate=20, symbols=SYMBOLS) as feed:
        await run(feed.url, 2.0, feed)


if __name__ == "__main__":
    asyncio.run(main())
