"""A trading bot's skeleton: request/response with ``client.request``, and no trading while disconnected.

Started without a URL, it runs against wsclient's embedded fake feed on 127.0.0.1, which drops the
connection once (no close frame, like a crashed load balancer) so that the bot pauses, then resumes
after the reconnect. It exits on its own after a few seconds:

    python examples/trading_bot.py        # embedded feed
    python examples/trading_bot.py URL    # your endpoint (adapt the messages to your venue)

The fake feed has no order book, so the "order" below is ``{"op": "time"}``: its reply is correlated
by id exactly as an order acknowledgement would be.
"""

from __future__ import annotations

import asyncio
import sys
import time
from decimal import Decimal
from typing import Literal

from wsclient import (
    Client,
    ClientConfig,
    ClientEvent,
    Connected,
    ConnectionLostError,
    Disconnected,
    Heartbeat,
    Message,
    Reconnect,
    RequestTimeout,
)
from wsclient.testing import FeedServer


class Ticker(Message):
    type: Literal["ticker"]
    symbol: str
    bid: Decimal
    ask: Decimal


class TimeReply(Message):
    type: Literal["time"]
    id: int
    ts: float


class Bot:
    def __init__(self, client: Client) -> None:
        self.client = client
        self.trading = asyncio.Event()  # set while connected: the only time orders may go out
        self.quote: Ticker | None = None
        self.acked = 0
        self.unknown = 0
        self.pauses = 0

    def on_event(self, event: ClientEvent) -> None:
        # Sync callbacks run inline, before any later frame or send: the pause takes effect at once.
        if isinstance(event, Disconnected):
            self.pauses += 1
            self.trading.clear()
            print(f"paused trading: {event.reason}")
        elif isinstance(event, Connected):
            self.trading.set()
            print(f"{'resumed' if event.reconnect else 'started'} trading")

    def on_ticker(self, ticker: Ticker) -> None:
        self.quote = ticker

    async def place_order(self) -> None:
        await self.trading.wait()
        started = time.monotonic()
        try:
            reply: TimeReply = await self.client.request({"op": "time"}, timeout=2.0, model=TimeReply)
        except ConnectionLostError as exc:
            # Sent or not, we cannot know: never re-send blindly, reconcile with the venue instead.
            self.unknown += 1
            print(f"order status unknown, reconcile after reconnect: {exc}")
            return
        except RequestTimeout:
            self.unknown += 1
            print("no acknowledgement in time, reconcile after reconnect")
            return
        self.acked += 1
        if self.acked == 1:
            took = 1000 * (time.monotonic() - started)
            print(f"first order acknowledged in {took:.1f} ms (server time {reply.ts:.3f})")


async def run(url: str, feed: FeedServer | None, orders: int) -> None:
    client = Client(
        url,
        config=ClientConfig(
            heartbeat=Heartbeat(interval=1.0, timeout=1.0),
            reconnect=Reconnect(initial_delay=0.2, max_delay=5.0, max_attempts=20),
        ),
    )
    bot = Bot(client)
    client.on_event(bot.on_event)
    client.on(Ticker, bot.on_ticker)
    client.subscribe({"op": "subscribe", "channel": "ticker", "symbol": "BTC-USD"})

    async with client:
        for n in range(orders):
            if feed is not None and n == orders // 2:
                print("the feed drops every connection (no close frame)")
                await feed.drop_all()
            await bot.place_order()
            await asyncio.sleep(0.05)  # the bot's own pace
    quote = f"{bot.quote.bid}/{bot.quote.ask}" if bot.quote else "none"
    print(f"orders acknowledged={bot.acked} unknown={bot.unknown} pauses={bot.pauses} last quote {quote}")
    print(f"stats: connects={client.stats.connects} requests_pending={client.stats.requests_pending}")


async def main() -> None:
    if len(sys.argv) > 1:
        await run(sys.argv[1], None, orders=100)
        return
    async with FeedServer(rate=20) as feed:
        await run(feed.url, feed, orders=40)


if __name__ == "__main__":
    asyncio.run(main())
