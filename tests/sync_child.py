"""A threaded program on ``wsclient.sync.Client``, for the tests that signal or end a process.

    python tests/sync_child.py URL BACKEND MODE

It connects, subscribes to BTC-USD trades, prints ``ready`` once a trade was handled, then:

* ``run_forever``: blocks in ``client.run_forever()``;
* ``messages``: blocks iterating ``client.messages(Trade)``;
* ``forget``: returns without closing (the interpreter's exit must close the client).

On a ``KeyboardInterrupt`` it prints ``interrupted <state>``; at the end, the names of the threads
still alive (``threads: [...]``).
"""

from __future__ import annotations

import faulthandler
import signal
import sys
import threading
from typing import Literal

from wsclient import ClientConfig, Message
from wsclient.sync import Client

_kept: list[Client] = []


class Trade(Message):
    type: Literal["trade"]
    symbol: str
    seq: int


def main(url: str, backend: str, mode: str) -> None:
    faulthandler.register(signal.SIGQUIT)
    handled = threading.Event()
    client = Client(url, config=ClientConfig(transport=backend))  # type: ignore[arg-type]
    client.on(Trade, lambda trade: handled.set())
    stream = client.messages(Trade)
    client.subscribe({"op": "subscribe", "channel": "trades", "symbol": "BTC-USD"})
    if mode == "forget":
        client.start()
        client.wait_open(timeout=10)
        if not handled.wait(10):
            raise SystemExit("no trade came")
        print("ready", flush=True)
        _kept.append(client)  # never closed, still referenced: the interpreter's exit must close it
        return
    try:
        with client:
            client.wait_open(timeout=10)
            if not handled.wait(10):
                raise SystemExit("no trade came")
            print("ready", flush=True)
            if mode == "run_forever":
                client.run_forever()
            else:
                for _ in stream:
                    pass
    except KeyboardInterrupt:
        print("interrupted", client.state.value, flush=True)
    print("threads:", sorted(t.name for t in threading.enumerate()), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:4])
