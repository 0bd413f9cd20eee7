"""A threaded bot on ``wsclient.sync.Client``: no ``async`` anywhere in the application.

Started without a URL, it runs against wsclient's embedded fake feed, served from a background
thread (``ServerThread``), which restarts once so that the client reconnects and resubscribes:

    python examples/threaded_bot.py        # embedded feed
    python examples/threaded_bot.py URL    # your endpoint (adapt the messages to your venue)

Handlers run on the client's worker thread, in order; a "strategy" thread reads trades with a
blocking ``for`` loop over ``client.messages()``; the main thread sends a request and blocks in
``run_forever()`` until a handler closes the client. Ctrl-C at any point closes it cleanly too.
"""

from __future__ import annotations

import itertools
import sys
import threading
from decimal import Decimal
from typing import Literal

from wsclient import ClientConfig, ClientEvent, Connected, Disconnected, Heartbeat, Message, Reconnect
from wsclient.sync import Client
from wsclient.testing import FeedServer, ServerThread

SYMBOL = "BTC-USD"
TRADES_TO_HANDLE = 120


class Trade(Message):
    type: Literal["trade"]
    symbol: str
    price: Decimal
    seq: int


def run(url: str, restart: threading.Event | None) -> None:
    config = ClientConfig(
        heartbeat=Heartbeat(interval=5, timeout=5),
        reconnect=Reconnect(initial_delay=0.1, max_delay=2, max_attempts=10),
    )
    client = Client(url, config=config, handlers="worker")
    seqs: list[int] = []
    threads: set[str] = set()
    strategy_read: list[Trade] = []
    trades = client.messages(Trade, timeout=10)  # made before start(): misses nothing

    @client.on(Trade)
    def on_trade(trade: Trade) -> None:  # the worker thread: may block, may call client.send()
        seqs.append(trade.seq)
        threads.add(threading.current_thread().name)
        if len(seqs) == 40 and restart is not None:
            restart.set()  # the feed restarts: the client reconnects and resubscribes
        if len(seqs) == TRADES_TO_HANDLE:
            client.close()  # from a handler: scheduled, returns at once

    @client.on_event
    def on_event(event: ClientEvent) -> None:
        if isinstance(event, Connected):
            print(f"connected (reconnect={event.reconnect})")
        elif isinstance(event, Disconnected):
            print(f"disconnected: {event.reason} (retry={event.will_retry})")

    def strategy() -> None:  # an application thread of its own
        for trade in trades:  # ends when the client is closed
            strategy_read.append(trade)

    reader = threading.Thread(target=strategy, name="strategy")
    client.subscribe({"op": "subscribe", "channel": "trades", "symbol": SYMBOL})
    with client:
        reader.start()
        client.wait_open(timeout=10)
        reply = client.request({"op": "time"}, timeout=5)  # blocks until the correlated reply
        print(f"request answered: type={reply['type']}")
        client.run_forever()  # until the handler closes the client (or Ctrl-C)
    reader.join(10)
    in_order = all(a < b for a, b in itertools.pairwise(seqs))
    print(f"handled {len(seqs)} trades on {sorted(threads)}, in order: {in_order}")
    print(f"strategy thread read {len(strategy_read)} trades with a blocking for loop")
    stats = client.stats
    print(f"closed from a handler: state={client.state.value} connects={stats.connects}")


def main() -> None:
    if len(sys.argv) > 1:
        run(sys.argv[1], None)
    else:
        restart = threading.Event()
        with ServerThread(FeedServer(rate=50)) as feed:

            def restarter() -> None:
                if restart.wait(30):
                    feed.run(feed.server.restart())

            helper = threading.Thread(target=restarter, name="restarter", daemon=True)
            helper.start()
            run(feed.server.url, restart)
            restart.set()
            helper.join(10)
            # The client is closed once it has the server's answer; the server notes the code just
            # after, on its own thread.
            feed.run(feed.server.wait_until(lambda: len(feed.server.close_codes) >= 2))
            print(f"the feed saw close codes {feed.server.close_codes}")
    print(f"threads left: {sorted(t.name for t in threading.enumerate())}")


if __name__ == "__main__":
    main()
