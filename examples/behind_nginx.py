"""Behind a reverse proxy: choose the heartbeat from the proxy's idle timeout.

nginx closes a proxied WebSocket when the upstream sends nothing for ``proxy_read_timeout`` (60 s by
default); load balancers do the same (an AWS ALB after 60 s). A quiet feed (a private channel, a
market outside trading hours) is then cut over and over, with no close frame. A heartbeat whose
interval is below that timeout makes the server answer (a pong) often enough to keep the link open.

This runs the same quiet feed behind a ChaosProxy with a 1 s idle timeout (nginx's 60 s, scaled
down), first without a heartbeat, then with one, and exits after about 5 s:

    python examples/behind_nginx.py
"""

from __future__ import annotations

import asyncio

from pydantic import ValidationError

from wsclient import Client, ClientConfig, ClientEvent, Disconnected, Heartbeat, Reconnect
from wsclient.testing import ChaosProxy, FeedServer

IDLE_TIMEOUT = 1.0  # the proxy's; nginx: proxy_read_timeout 60s
WATCH = 2.5  # seconds each client is watched: two and a half idle timeouts


async def watch(proxy: ChaosProxy, url: str, heartbeat: Heartbeat) -> tuple[int, int]:
    """Connect through the proxy for WATCH seconds; return (idle cut-offs, disconnects)."""
    client = Client(url, config=ClientConfig(heartbeat=heartbeat, reconnect=Reconnect(initial_delay=0.05)))
    disconnects = 0

    @client.on_event
    def on_event(event: ClientEvent) -> None:
        nonlocal disconnects
        if isinstance(event, Disconnected):
            disconnects += 1
            print(f"  disconnected: {event.reason}")

    cuts_before = proxy.idle_cuts
    async with client:
        await client.wait_open(timeout=5)
        await asyncio.sleep(WATCH)  # no subscription: nothing comes from the feed on its own
    return proxy.idle_cuts - cuts_before, disconnects


async def main() -> None:
    async with FeedServer() as feed, ChaosProxy(feed.host, feed.port) as proxy:
        proxy.idle_timeout = IDLE_TIMEOUT
        url = proxy.url(feed.path)

        print(f"proxy idle timeout {IDLE_TIMEOUT}s; a client without heartbeat:")
        cuts, disconnects = await watch(proxy, url, Heartbeat(mode="off"))
        print(f"without heartbeat: the proxy cut the link {cuts} time(s), {disconnects} disconnect(s)")

        # The rule: interval below the idle timeout, with room for a late pong; half of it is a
        # safe choice (nginx 60 s -> interval 30 s or less). server_idle_timeout makes wsclient
        # check the rule when the config is built.
        heartbeat = Heartbeat(
            interval=IDLE_TIMEOUT / 2, timeout=IDLE_TIMEOUT / 2, server_idle_timeout=IDLE_TIMEOUT
        )
        print(f"a client with a heartbeat every {heartbeat.interval}s:")
        cuts, disconnects = await watch(proxy, url, heartbeat)
        print(f"with heartbeat: the proxy cut the link {cuts} time(s), {disconnects} disconnect(s)")

        try:
            Heartbeat(interval=IDLE_TIMEOUT * 1.5, server_idle_timeout=IDLE_TIMEOUT)
        except ValidationError as exc:
            reason = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
            print(f"refused at construction: {reason}")


if __name__ == "__main__":
    asyncio.run(main())
