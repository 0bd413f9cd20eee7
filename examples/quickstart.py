"""Quickstart: subscribe to a feed, survive a server restart, print what arrives.

Runs with no network: it starts wsclient's embedded test feed on 127.0.0.1. Point the client at a
real endpoint (and drop the FeedServer) to use it for real.

    python examples/quickstart.py
"""

import asyncio
import json

from wsclient import Client, ClientConfig, ClientEvent, Connected, Heartbeat, Reconnect
from wsclient.testing import FeedServer


async def main() -> None:
    async with FeedServer(rate=50) as feed:
        client = Client(
            feed.url,
            config=ClientConfig(
                heartbeat=Heartbeat(interval=1.0, timeout=1.0, server_idle_timeout=60),
                reconnect=Reconnect(initial_delay=0.1, max_delay=5.0, max_attempts=10),
            ),
        )
        client.subscribe({"op": "subscribe", "channel": "trades", "symbol": "BTC-USD"})
        trades = 0
        reconnected = asyncio.Event()

        @client.on_message
        def on_frame(frame: str | bytes) -> None:
            nonlocal trades
            if json.loads(frame).get("type") == "trade":
                trades += 1

        @client.on_event
        def on_event(event: ClientEvent) -> None:
            print(event)
            if isinstance(event, Connected) and event.reconnect:
                reconnected.set()

        async with client:
            await client.wait_open(timeout=5)
            await asyncio.sleep(0.5)
            await feed.restart()  # closes with 1012: the client reconnects and resubscribes
            await asyncio.wait_for(reconnected.wait(), timeout=5)
            await asyncio.sleep(0.5)
        print(f"trades={trades} connects={client.stats.connects}")


if __name__ == "__main__":
    asyncio.run(main())
