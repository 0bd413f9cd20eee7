"""The pytest plugin, as a user's suite sees it: fixtures used from a test file run by pytester."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

# A user's test file: a bot's client through the proxy, a dead link, a recovery; plus the factories.
USER_TESTS = """
import asyncio

import pytest

from wsclient import Client, ClientConfig, Connected, Heartbeat, HeartbeatMissed, Reconnect
from wsclient.testing import ChaosProxy, FeedServer

pytest_plugins = ["wsclient.testing.pytest_plugin"]

CONFIG = ClientConfig(
    heartbeat=Heartbeat(interval=0.05, timeout=0.1),
    reconnect=Reconnect(initial_delay=0.01, max_delay=0.05, jitter=0),
    open_timeout=0.5,
)
SEEN = []


async def until(condition, timeout=5.0):
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


@pytest.mark.asyncio
async def test_dead_link_through_the_proxy(feed_server, chaos_proxy):
    SEEN.extend([feed_server, chaos_proxy])
    assert isinstance(feed_server, FeedServer) and feed_server.running
    assert isinstance(chaos_proxy, ChaosProxy) and chaos_proxy.upstream == ("127.0.0.1", feed_server.port)
    client = Client(chaos_proxy.url(feed_server.path), config=CONFIG)
    frames, events = [], []
    client.on_message(frames.append)
    client.on_event(events.append)
    client.subscribe({"op": "subscribe", "channel": "trades", "symbol": "BTC-USD"})
    async with client:
        await client.wait_open(timeout=5)
        await until(lambda: len(frames) >= 3)
        chaos_proxy.blackhole(True)
        await until(lambda: any(isinstance(e, HeartbeatMissed) and e.fatal for e in events))
        chaos_proxy.blackhole(False)
        await until(lambda: any(isinstance(e, Connected) and e.reconnect for e in events))
        await feed_server.wait_for_subscriptions("anonymous", 1)


@pytest.mark.asyncio
async def test_factories(make_feed_server, make_chaos_proxy):
    server = await make_feed_server(rate=200, symbols=["XRP-USD"])
    proxy = await make_chaos_proxy(server)
    raw = await make_chaos_proxy(("127.0.0.1", server.port))
    SEEN.extend([server, proxy, raw])
    assert server.symbols == ("XRP-USD",) and server.rate == 200
    assert proxy.port != raw.port
    client = Client(raw.url(server.path), config=CONFIG)
    async with client:
        await client.wait_open(timeout=5)
        await client.send({"op": "subscribe", "channel": "ticker", "symbol": "XRP-USD"})
        await server.wait_until(lambda: server.messages_sent(channel="ticker") >= 5)


@pytest.mark.asyncio
async def test_everything_was_stopped():
    assert len(SEEN) == 5
    assert not any(s.running for s in SEEN if isinstance(s, FeedServer))
    assert all(p.connections == 0 for p in SEEN if isinstance(p, ChaosProxy))
    for port in {s.port for s in SEEN}:
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)


@pytest.mark.asyncio
async def test_a_failing_user_test_still_fails(feed_server):
    assert feed_server.total_connections == 1, "expected: nobody connected"
"""


@pytest.mark.parametrize("mode", ["strict", "auto"])
def test_user_suite_runs_the_fixtures(pytester: pytest.Pytester, mode: str) -> None:
    pytester.makeini(f"[pytest]\nasyncio_mode = {mode}\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", timeout=60)
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*expected: nobody connected*"])


def test_plugin_is_opt_in(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_user="def test_uses_it(feed_server):\n    pass\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", timeout=60)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'feed_server' not found*"])


def test_proxy_factory_needs_a_started_server(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(
        test_user="""
import pytest
from wsclient.testing import FeedServer

pytest_plugins = ["wsclient.testing.pytest_plugin"]

async def test_unstarted(make_chaos_proxy):
    with pytest.raises(ValueError, match="start it before proxying"):
        await make_chaos_proxy(FeedServer())
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", timeout=60)
    result.assert_outcomes(passed=1)


# A user's suite against a recorded session: the replay_server fixture on their recording, and the
# factory with options; both stopped after each test.
REPLAY_TESTS = """
import asyncio
from pathlib import Path

import pytest

from wsclient import Client, ClientConfig, Disconnected, Reconnect
from wsclient.testing import ReplayServer

pytest_plugins = ["wsclient.testing.pytest_plugin"]

SESSION = Path(__file__).parent / "session.jsonl.gz"
CONFIG = ClientConfig(reconnect=Reconnect(initial_delay=0.01, max_delay=0.02, jitter=0))
SEEN = []


@pytest.fixture
def replay_recording():
    return SESSION


async def consume(url, count):
    frames, drops, done = [], [], asyncio.Event()
    client = Client(url, config=CONFIG)
    client.on_message(lambda f: (frames.append(f), len(frames) >= count and done.set()))
    client.on_event(lambda e: drops.append((len(frames), e.code)) if isinstance(e, Disconnected) else None)
    async with client:
        await asyncio.wait_for(done.wait(), 10)
    return frames, drops


async def test_the_bot_on_the_recording(replay_server):
    SEEN.append(replay_server)
    assert isinstance(replay_server, ReplayServer) and replay_server.speed == "max"
    frames, drops = await consume(replay_server.url, 4)
    assert frames == ["a1", "a2", b"\\x00a3", "b1"]
    assert drops == [(3, 4000)]


async def test_the_factory(make_replay_server):
    server = await make_replay_server(SESSION, speed=50, disconnects=False)
    SEEN.append(server)
    frames, drops = await consume(server.url, 4)
    assert frames == ["a1", "a2", b"\\x00a3", "b1"] and drops == []


async def test_everything_was_stopped():
    assert len(SEEN) == 2 and not any(s.running for s in SEEN)
    for server in SEEN:
        with pytest.raises(ConnectionRefusedError):
            await asyncio.open_connection("127.0.0.1", server.port)
"""


def test_user_suite_replays_a_recording(pytester: pytest.Pytester) -> None:
    from wsclient.recording import RecordingWriter

    with RecordingWriter(pytester.path / "session.jsonl.gz", "wss://venue.example/ws") as writer:
        writer.connected(1)
        for frame in ("a1", "a2", b"\x00a3"):
            writer.frame(frame)
        writer.disconnected(1, 4000, "kicked", "connection closed with code 4000 (kicked)")
        writer.connected(2)
        writer.frame("b1")
    pytester.makeini("[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_user=REPLAY_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", timeout=60)
    result.assert_outcomes(passed=3)


def test_replay_server_needs_the_users_recording(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(
        test_user='pytest_plugins = ["wsclient.testing.pytest_plugin"]\n\n'
        "async def test_it(replay_server):\n    pass\n"
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q", timeout=60)
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'replay_recording' not found*"])
