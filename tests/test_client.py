"""The connection core against a real `websockets` server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import Awaitable, Callable

import pytest
from websockets.asyncio.server import ServerConnection

from wsclient import (
    Client,
    ClientClosedError,
    ClientConfig,
    Connected,
    ConnectFailed,
    ConnectionState,
    Disconnected,
    GaveUpError,
    HandshakeRejected,
    Heartbeat,
    HeartbeatMissed,
    MessageDropped,
    OutboxFullError,
    Reconnect,
    Reconnecting,
    StateChanged,
    TransportClosed,
)

from .conftest import Collector, Recorder, TestServer, poll_until

# Every test here runs on each transport backend (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("backend")

MakeServer = Callable[..., Awaitable[TestServer]]

FAST = Reconnect(initial_delay=0.01, max_delay=0.05, jitter=0, reset_after=0.5)
HB = Heartbeat(interval=0.05, timeout=0.1)


def fast_config(**overrides: object) -> ClientConfig:
    values: dict[str, object] = {
        "heartbeat": HB,
        "reconnect": FAST,
        "open_timeout": 1.0,
        "close_timeout": 0.2,
    }
    values.update(overrides)
    return ClientConfig(**values)  # type: ignore[arg-type]


async def test_connect_send_receive_close(server: TestServer) -> None:
    client = Client(server.url, config=fast_config())
    collector = Collector()
    client.on_message(collector)
    async with client:
        await client.wait_open(2)
        assert client.state is ConnectionState.OPEN
        await client.send({"op": "hello"})
        await client.send(b"\x00\x01")
        await server.wait_until(lambda: len(server.received) == 2)
        got = await collector.wait_for(2)
    assert client.state is ConnectionState.CLOSED
    assert server.received == ['{"op":"hello"}', b"\x00\x01"]
    assert got == server.received
    assert server.connections[0].close_code == 1000
    stats = client.stats
    assert stats.connects == 1 and stats.messages_out == 2 and stats.messages_in == 2


async def test_server_restart_replays_subscriptions_in_order(server: TestServer) -> None:
    client = Client(server.url, config=fast_config())
    client.subscribe({"op": "subscribe", "channel": "trades"})
    client.subscribe({"op": "subscribe", "channel": "book"})
    client.subscribe("third")
    recorder = Recorder(client)
    async with client:
        await server.wait_until(lambda: len(server.received) == 3)
        await server.stop(close_code=1012)
        await server.start()
        await recorder.wait_for(Connected, 2)
        await server.wait_until(lambda: len(server.received) == 6)
    subs = ['{"op":"subscribe","channel":"trades"}', '{"op":"subscribe","channel":"book"}', "third"]
    assert server.received == subs + subs
    disconnected = recorder.of(Disconnected)[0]
    assert isinstance(disconnected, Disconnected)
    assert disconnected.code == 1012 and disconnected.will_retry
    assert server.peak == 1


async def test_cancelled_subscription_sends_unsubscribe_and_is_not_replayed(
    server: TestServer,
) -> None:
    client = Client(server.url, config=fast_config())
    keep = client.subscribe("sub-a")
    gone = client.subscribe("sub-b", unsubscribe="unsub-b")
    recorder = Recorder(client)
    async with client:
        await client.wait_open(2)
        await gone.cancel()
        await gone.cancel()  # idempotent
        await server.wait_until(lambda: "unsub-b" in server.received)
        await server.drop_all()
        await recorder.wait_for(Connected, 2)
        await server.wait_until(lambda: len(server.received) == 4)
    assert server.received == ["sub-a", "sub-b", "unsub-b", "sub-a"]
    assert client.subscriptions == (keep,)
    assert keep.active and not gone.active


async def test_subscribe_while_open_is_sent_now_and_replayed(server: TestServer) -> None:
    client = Client(server.url, config=fast_config())
    recorder = Recorder(client)
    async with client:
        await client.wait_open(2)
        client.subscribe("late")
        await server.wait_until(lambda: server.received == ["late"])
        await server.drop_all()
        await recorder.wait_for(Connected, 2)
        await server.wait_until(lambda: len(server.received) == 2)
    assert server.received == ["late", "late"]


async def test_on_connect_runs_before_replay_and_can_send(server: TestServer) -> None:
    client = Client(server.url, config=fast_config())
    seen: list[bool] = []

    @client.on_connect
    async def login(conn: object) -> None:
        assert hasattr(conn, "send")
        seen.append(conn.reconnect)  # type: ignore[attr-defined]
        await conn.send({"op": "login"})  # type: ignore[attr-defined]

    client.subscribe("sub")
    recorder = Recorder(client)
    async with client:
        await client.wait_open(2)
        await client.send("after-open")
        await server.wait_until(lambda: len(server.received) == 3)
        await server.drop_all()
        await recorder.wait_for(Connected, 2)
        await server.wait_until(lambda: len(server.received) == 5)
    assert server.received == ['{"op":"login"}', "sub", "after-open", '{"op":"login"}', "sub"]
    assert seen == [False, True]


async def test_failing_on_connect_hook_is_retried_and_reported(server: TestServer) -> None:
    client = Client(server.url, config=fast_config())
    calls = 0
    errors: list[BaseException] = []
    client.on_error(lambda item, exc: errors.append(exc))

    @client.on_connect
    def flaky(conn: object) -> None:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise RuntimeError("auth service not ready")

    async with client:
        await client.wait_open(3)
    assert calls == 3
    assert [str(e) for e in errors] == ["auth service not ready"] * 2


@pytest.mark.parametrize("code", [1000, 1001, 1011, 1012, 1013, 1014, 4000])
async def test_retried_close_codes_reconnect(make_server: MakeServer, code: int) -> None:
    async def close_first(server: TestServer, ws: ServerConnection) -> None:
        if server.total == 1:
            await ws.close(code, "bye")
        else:
            await ws.wait_closed()

    server = await make_server(close_first)
    client = Client(server.url, config=fast_config())
    recorder = Recorder(client)
    async with client:
        await recorder.wait_for(Connected, 2)
    lost = recorder.of(Disconnected)[0]
    assert isinstance(lost, Disconnected)
    assert (lost.code, lost.reason, lost.will_retry) == (
        code,
        f"connection closed with code {code} (bye)",
        True,
    )
    assert server.peak == 1


@pytest.mark.parametrize("code", [1002, 1003, 1007, 1008, 1010])
async def test_fatal_close_codes_fail(make_server: MakeServer, code: int) -> None:
    async def close_at_once(server: TestServer, ws: ServerConnection) -> None:
        await ws.close(code, "policy")

    server = await make_server(close_at_once)
    client = Client(server.url, config=fast_config())
    recorder = Recorder(client)
    await client.start()
    with pytest.raises(GaveUpError) as info:
        async with asyncio.timeout(5):
            await client.wait_closed()
    assert client.state is ConnectionState.FAILED
    assert info.value.fatal
    assert isinstance(info.value.cause, TransportClosed) and info.value.cause.code == code
    assert server.total == 1
    assert recorder.of(Disconnected)[0] == Disconnected(
        1, code, f"connection closed with code {code} (policy)", False, None
    )
    with pytest.raises(ClientClosedError):
        await client.send("x")
    await client.close()  # a no-op on a failed client
    assert client.state is ConnectionState.FAILED


async def test_abnormal_drop_is_retried(server: TestServer) -> None:
    client = Client(server.url, config=fast_config())
    recorder = Recorder(client)
    async with client:
        await client.wait_open(2)
        await server.drop_all()
        await recorder.wait_for(Connected, 2)
    lost = recorder.of(Disconnected)[0]
    assert isinstance(lost, Disconnected) and lost.code == 1006


async def test_handshake_401_fails_with_status(server: TestServer) -> None:
    server.reject = (401, {})
    client = Client(server.url, config=fast_config())
    recorder = Recorder(client)
    await client.start()
    with pytest.raises(GaveUpError, match="HTTP 401") as info:
        async with asyncio.timeout(5):
            await client.wait_closed()
    assert isinstance(info.value.cause, HandshakeRejected)
    assert info.value.cause.status == 401
    assert len(server.handshake_times) == 1
    failed = recorder.of(ConnectFailed)[0]
    assert isinstance(failed, ConnectFailed) and failed.status == 401 and not failed.will_retry


async def test_handshake_429_honours_retry_after(server: TestServer) -> None:
    server.reject = (429, {"Retry-After": "1"})
    client = Client(server.url, config=fast_config())
    recorder = Recorder(client)
    async with client:
        await server.wait_until(lambda: len(server.handshake_times) == 1)
        server.reject = None
        await client.wait_open(5)
    first, second = server.handshake_times[:2]
    assert second - first >= 1.0
    reconnecting = recorder.of(Reconnecting)[0]
    assert isinstance(reconnecting, Reconnecting) and reconnecting.delay == 1.0
    failed = recorder.of(ConnectFailed)[0]
    assert isinstance(failed, ConnectFailed) and failed.retry_after == 1.0 and failed.delay == 1.0


async def test_retry_after_above_the_cap_is_cut_and_reported(
    server: TestServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A server asking for a day is not obeyed for a day: the wait is max_retry_after, and the event
    and the log say what was asked."""
    server.reject = (503, {"Retry-After": "86400"})
    policy = FAST.model_copy(update={"max_retry_after": 0.2})
    client = Client(server.url, config=fast_config(reconnect=policy))
    recorder = Recorder(client)
    async with client:
        await server.wait_until(lambda: len(server.handshake_times) == 1)
        server.reject = None
        await client.wait_open(5)
    failed = recorder.of(ConnectFailed)[0]
    assert isinstance(failed, ConnectFailed)
    assert failed.retry_after == 86400.0 and failed.delay == 0.2 and failed.will_retry
    assert server.handshake_times[1] - server.handshake_times[0] >= 0.2
    assert any("asked for 86400s" in r.getMessage() for r in caplog.records if r.name == "wsclient")


async def test_503_is_retried(server: TestServer) -> None:
    server.reject = (503, {})
    client = Client(server.url, config=fast_config())
    async with client:
        await server.wait_until(lambda: len(server.handshake_times) == 3)
        server.reject = None
        await client.wait_open(5)
    assert client.stats.connect_failures >= 3


async def test_accept_then_close_sees_growing_delays(make_server: MakeServer) -> None:
    async def slam(server: TestServer, ws: ServerConnection) -> None:
        await ws.close(1011, "overloaded")

    server = await make_server(slam)
    policy = Reconnect(initial_delay=0.01, max_delay=1.0, jitter=0, reset_after=5.0)
    client = Client(server.url, config=fast_config(reconnect=policy))
    recorder = Recorder(client)
    async with client:
        await recorder.wait_for(Reconnecting, 5)
        await server.wait_until(lambda: len(server.handshake_times) >= 6)
    delays = [e.delay for e in recorder.of(Reconnecting)[:5]]  # type: ignore[attr-defined]
    assert delays == [0.01, 0.02, 0.04, 0.08, 0.16]
    times = server.handshake_times
    gaps = [b - a for a, b in itertools.pairwise(times[:6])]
    assert all(g >= d for g, d in zip(gaps, delays, strict=True))


async def test_max_attempts_gives_up_with_cause_and_count() -> None:
    # A port nothing listens on: bind, read the port, close.
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    policy = Reconnect(initial_delay=0.01, max_delay=0.02, jitter=0, max_attempts=3)
    client = Client(f"ws://127.0.0.1:{port}/", config=fast_config(reconnect=policy))
    await client.start()
    with pytest.raises(GaveUpError, match="gave up after 3 attempt") as info:
        async with asyncio.timeout(5):
            await client.wait_closed()
    assert info.value.attempts == 3 and not info.value.fatal
    assert isinstance(info.value.cause, ConnectionRefusedError)
    with pytest.raises(GaveUpError):
        await client.wait_open(1)


async def test_attempts_reset_after_a_stable_connection(server: TestServer) -> None:
    policy = Reconnect(initial_delay=0.01, max_delay=1.0, jitter=0, reset_after=0.0)
    client = Client(server.url, config=fast_config(reconnect=policy))
    recorder = Recorder(client)
    async with client:
        for n in range(1, 4):
            await recorder.wait_for(Connected, n)
            await server.drop_all()
        await recorder.wait_for(Connected, 4)
    assert [e.delay for e in recorder.of(Reconnecting)][:3] == [0.01, 0.01, 0.01]  # type: ignore[attr-defined]


async def test_queued_sends_arrive_in_order_after_reconnect(server: TestServer) -> None:
    client = Client(server.url, config=fast_config())
    client.subscribe("sub")
    async with client:
        await client.wait_open(2)
        await server.stop()
        await client.wait_state(lambda s: s is not ConnectionState.OPEN, 2)
        for i in range(20):
            await client.send(f"queued-{i}")
        assert client.stats.outbox_queued == 20
        await server.start()
        await client.wait_open(5)
        await server.wait_until(lambda: len(server.received) == 22)
    assert server.received == ["sub", "sub"] + [f"queued-{i}" for i in range(20)]
    assert client.stats.dropped_out == 0


async def test_outbox_overflow_policies(server: TestServer) -> None:
    await server.stop()
    raising = Client(server.url, config=fast_config(outbox_size=2))
    await raising.start()
    await raising.send("a")
    await raising.send("b")
    with pytest.raises(OutboxFullError, match="outbox_size"):
        await raising.send("c")
    await raising.close()

    dropping = Client(server.url, config=fast_config(outbox_size=2, outbox_overflow="drop_oldest"))
    recorder = Recorder(dropping)
    await dropping.start()
    for item in ("a", "b", "c"):
        await dropping.send(item)
    assert dropping.stats.dropped_out == 1
    await server.start()
    await dropping.wait_open(5)
    await server.wait_until(lambda: len(server.received) == 2)
    await dropping.close()
    assert server.received == ["b", "c"]
    dropped = recorder.of(MessageDropped)
    assert dropped == [MessageDropped("out", "outbox full", "a")]


async def test_unsent_outbox_is_reported_on_close(server: TestServer) -> None:
    await server.stop()
    client = Client(server.url, config=fast_config())
    recorder = Recorder(client)
    await client.start()
    await client.send("never")
    await client.close()
    assert recorder.of(MessageDropped) == [MessageDropped("out", "client closed", "never")]
    with pytest.raises(ClientClosedError):
        await client.send("x")


async def test_never_two_connections_under_churn(server: TestServer) -> None:
    config = fast_config(reconnect=Reconnect(initial_delay=0.001, max_delay=0.005, jitter=0.002))
    clients = [Client(server.url, config=config) for _ in range(3)]
    for client in clients:
        await client.start()
    # Each of these forces a reconnect; the close() calls land at arbitrary points of the cycle.
    for round_ in range(15):
        await server.drop_all()
        await asyncio.sleep(0.002 * (round_ % 4))
    for client in clients:
        await client.close()
    await server.wait_until(lambda: server.current == 0)
    # Three clients: never more than three at once, i.e. never two for one client.
    assert server.peak <= 3


async def test_one_client_never_holds_two_connections(server: TestServer) -> None:
    client = Client(server.url, config=fast_config(reconnect=Reconnect(initial_delay=0.001, max_delay=0.002)))
    recorder = Recorder(client)
    await client.start()
    for n in range(1, 21):
        await recorder.wait_for(Connected, n)
        await server.drop_all()
    await client.close()
    await server.wait_until(lambda: server.current == 0)
    assert server.peak == 1
    assert server.total >= 20


async def test_close_is_idempotent_and_cancel_safe(server: TestServer) -> None:
    client = Client(server.url, config=fast_config())
    await client.start()
    await client.wait_open(2)
    closer = asyncio.create_task(client.close(4000, "done"))
    await asyncio.sleep(0)
    closer.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await closer
    await client.close()
    await client.close()
    await client.wait_closed()
    assert client.state is ConnectionState.CLOSED
    await server.wait_until(lambda: server.connections[0].close_code is not None)
    assert server.connections[0].close_code == 4000
    assert server.connections[0].close_reason == "done"


async def test_close_before_start_and_during_backoff(server: TestServer) -> None:
    idle = Client(server.url)
    await idle.close()
    assert idle.state is ConnectionState.CLOSED

    await server.stop()
    client = Client(server.url, config=fast_config(reconnect=Reconnect(initial_delay=5, max_delay=5)))
    await client.start()
    await client.wait_state(lambda s: s is ConnectionState.RECONNECTING, 2)
    started = time.monotonic()
    await client.close()
    assert time.monotonic() - started < 1.0
    assert client.state is ConnectionState.CLOSED


async def test_no_tasks_left_after_close(server: TestServer) -> None:
    before = asyncio.all_tasks()

    async def slow(frame: str | bytes) -> None:
        await asyncio.sleep(10)

    client = Client(
        server.url, config=fast_config(heartbeat=Heartbeat(interval=0.02, timeout=0.1, receive_timeout=5))
    )
    client.on_message(slow)
    client.on_event(lambda e: asyncio.sleep(10))  # async callbacks become tasks
    async with client:
        await client.wait_open(2)
        await client.send("x")
        await server.wait_until(lambda: len(server.received) == 1)
        await server.drop_all()
        await client.wait_open(2)
    leftover = asyncio.all_tasks() - before
    assert leftover == set(), leftover


async def test_no_sockets_left_after_close(server: TestServer) -> None:
    import os

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    baseline = open_fds()
    for _ in range(5):
        client = Client(server.url, config=fast_config())
        async with client:
            await client.wait_open(2)
            await server.drop_all()
            await client.wait_state(lambda s: s is ConnectionState.RECONNECTING, 2)
            await client.wait_open(2)
    # The server side of each connection closes once its handler notices: wait for that, bounded.
    await server.wait_until(lambda: server.current == 0)
    await poll_until(lambda: open_fds() <= baseline, timeout=5)


async def test_slow_handler_causes_no_false_dead_link(make_server: MakeServer) -> None:
    """A handler sleeping 5× the pong timeout must neither kill the link nor lose a frame."""
    total = 30

    async def stream(server: TestServer, ws: ServerConnection) -> None:
        for i in range(total):
            await ws.send(json.dumps({"seq": i}))
        await ws.wait_closed()

    server = await make_server(stream)
    heartbeat = Heartbeat(interval=0.02, timeout=0.04)
    # A tiny inbound queue forces the reader to stop reading (lossless "block" policy), so that
    # pongs sit unread behind frames: exactly the situation of the false "keepalive ping timeout".
    client = Client(server.url, config=fast_config(heartbeat=heartbeat, inbound_queue=2))
    recorder = Recorder(client)
    got: list[int] = []
    done = asyncio.Event()

    async def handler(frame: str | bytes) -> None:
        seq = json.loads(frame)["seq"]
        if seq in (0, 15):
            await asyncio.sleep(5 * heartbeat.timeout)
        got.append(seq)
        if len(got) == total:
            done.set()

    client.on_message(handler)
    async with client:
        async with asyncio.timeout(10):
            await done.wait()
    assert got == list(range(total))
    assert recorder.of(Disconnected) == []
    assert [e for e in recorder.of(HeartbeatMissed) if e.fatal] == []  # type: ignore[attr-defined]
    assert client.stats.connects == 1 and server.total == 1


async def test_inbound_drop_policies_count_what_they_drop(make_server: MakeServer) -> None:
    async def burst(server: TestServer, ws: ServerConnection) -> None:
        for i in range(50):
            await ws.send(str(i))
        await ws.wait_closed()

    server = await make_server(burst)
    for policy in ("drop_oldest", "drop_newest"):
        client = Client(server.url, config=fast_config(inbound_queue=5, inbound_overflow=policy))
        got: list[str | bytes] = []
        gate = asyncio.Event()

        async def handler(
            frame: str | bytes, got: list[str | bytes] = got, gate: asyncio.Event = gate
        ) -> None:
            await gate.wait()
            got.append(frame)

        client.on_message(handler)
        async with client:
            await poll_until(lambda c=client: c.stats.messages_in == 50)  # type: ignore[misc]
            gate.set()
            await poll_until(
                lambda c=client, g=got: len(g) + c.stats.dropped_in == 50  # type: ignore[misc]
            )
        stats = client.stats
        assert stats.dropped_in > 0
        assert len(got) + stats.dropped_in == 50, policy
        ints = [int(x) for x in got]
        assert ints == sorted(ints)
        # Frame 0 reached its handler before the burst: only queued frames are ever dropped.
        assert ints[0] == 0
        if policy == "drop_oldest":
            assert ints[-1] == 49


async def test_handler_error_does_not_stop_the_stream(server: TestServer) -> None:
    client = Client(server.url, config=fast_config())
    errors: list[tuple[object, BaseException]] = []
    collector = Collector()
    client.on_error(lambda item, exc: errors.append((item, exc)))

    def bad(frame: str | bytes) -> None:
        if frame == "boom":
            raise ValueError("bad frame")

    client.on_message(bad)
    client.on_message(collector)
    async with client:
        await client.wait_open(2)
        for frame in ("a", "boom", "b"):
            await client.send(frame)
        got = await collector.wait_for(3)
    assert got == ["a", "boom", "b"]
    assert len(errors) == 1 and errors[0][0] == "boom" and str(errors[0][1]) == "bad frame"
    assert client.stats.handler_errors == 1 and client.stats.connects == 1


async def test_missed_pong_declares_dead_and_reconnects(make_server: MakeServer) -> None:
    """A server that stops answering pings (socket open, nothing sent) is declared dead."""

    async def deaf(server: TestServer, ws: ServerConnection) -> None:
        if server.total == 1:
            # Stop reading: pings are never answered, and nothing is sent.
            ws.transport.pause_reading()
        await ws.wait_closed()

    server = await make_server(deaf)
    heartbeat = Heartbeat(interval=0.05, timeout=0.1)
    client = Client(server.url, config=fast_config(heartbeat=heartbeat))
    recorder = Recorder(client)
    async with client:
        await client.wait_open(2)
        opened = time.monotonic()
        await recorder.wait_for(Disconnected, 1)
        detected = time.monotonic() - opened
        await recorder.wait_for(Connected, 2)
    lost = recorder.of(Disconnected)[0]
    assert isinstance(lost, Disconnected)
    assert lost.code is None and "no pong" in lost.reason
    missed = recorder.of(HeartbeatMissed)[0]
    assert isinstance(missed, HeartbeatMissed) and missed.fatal and missed.kind == "pong"
    # Not a timing goal, a sanity bound: far below websockets' close_timeout of 10 s.
    assert detected < 2.0


async def test_silent_feed_is_declared_dead(make_server: MakeServer) -> None:
    async def silent(server: TestServer, ws: ServerConnection) -> None:
        await ws.wait_closed()  # answers pings (the protocol does), sends nothing

    server = await make_server(silent)
    heartbeat = Heartbeat(interval=0.02, timeout=0.1, receive_timeout=0.15)
    client = Client(server.url, config=fast_config(heartbeat=heartbeat))
    recorder = Recorder(client)
    async with client:
        await recorder.wait_for(Disconnected, 1)
    lost = recorder.of(Disconnected)[0]
    assert isinstance(lost, Disconnected) and "no inbound frame" in lost.reason
    assert recorder.of(HeartbeatMissed)[0].kind == "silence"  # type: ignore[attr-defined]


async def test_message_mode_heartbeat(make_server: MakeServer) -> None:
    async def app_pong(server: TestServer, ws: ServerConnection) -> None:
        async for message in ws:
            server.received.append(message)
            server.changed()
            # The first connection answers three pings, then goes deaf to them.
            if message == '{"op":"ping"}' and server.received.count(message) <= 3:
                await ws.send('{"op":"pong"}')
            elif message != '{"op":"ping"}':
                await ws.send(message)

    server = await make_server(app_pong)
    heartbeat = Heartbeat(
        mode="message",
        message={"op": "ping"},
        is_pong=lambda f: f == '{"op":"pong"}',
        interval=0.03,
        timeout=0.1,
    )
    client = Client(server.url, config=fast_config(heartbeat=heartbeat))
    got: list[str | bytes] = []
    client.on_message(got.append)
    recorder = Recorder(client)
    async with client:
        await client.wait_open(2)
        await client.send("data")
        await recorder.wait_for(Disconnected, 1)
    assert "data" in got
    assert '{"op":"pong"}' not in got, "application pongs are consumed, not dispatched"
    assert client.stats.last_rtt is None or client.stats.last_rtt >= 0
    lost = recorder.of(Disconnected)[0]
    assert isinstance(lost, Disconnected) and "no pong" in lost.reason


async def test_credentials_never_reach_logs_reprs_or_events(
    make_server: MakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "s3cr3t-T0KEN"

    async def reject_then_close(server: TestServer, ws: ServerConnection) -> None:
        await ws.close(1011, "oops")

    server = await make_server(reject_then_close)
    url = f"ws://user:{secret}@127.0.0.1:{server.port}/ws?token={secret}&symbol=BTC"
    caplog.set_level(1)  # everything: picows logs its upgrade request below DEBUG
    client = Client(url, headers={"Authorization": f"Bearer {secret}"}, config=fast_config())
    recorder = Recorder(client)
    async with client:
        await recorder.wait_for(Disconnected, 2)
    # The test server's own logs print what it received; only the client side is under test.
    client_logs = [r.getMessage() for r in caplog.records if not r.name.startswith("websockets.server")]
    assert any("GET /ws?token=***" in line for line in client_logs), "the handshake log line is gone"
    text = "\n".join(client_logs) + repr(client) + repr(recorder.events) + client.url
    assert secret not in text
    assert "symbol=BTC" in client.url and "token=***" in client.url


def test_redaction_helpers() -> None:
    from wsclient.redact import redact_headers, redact_url

    assert redact_url("wss://h/p?api_key=abc&x=1&signature=zz") == "wss://h/p?api_key=***&x=1&signature=***"
    assert redact_url("wss://bob:pw@h/p") == "wss://bob:***@h/p"
    assert redact_headers({"Authorization": "Bearer x", "Cookie": "a=b", "X-Id": "7"}) == {
        "Authorization": "***",
        "Cookie": "***",
        "X-Id": "7",
    }


async def test_send_before_start_and_after_close(server: TestServer) -> None:
    client = Client(server.url, config=fast_config())
    await client.send("early")  # queued until the first connection
    async with client:
        await server.wait_until(lambda: server.received == ["early"])
    with pytest.raises(ClientClosedError):
        await client.send("late")
    with pytest.raises(ClientClosedError):
        client.subscribe("late")
    with pytest.raises(ClientClosedError):
        await client.start()


async def test_half_open_link_is_detected_within_interval_plus_timeout(server: TestServer) -> None:
    """A proxy that stops forwarding both ways (no FIN, no RST): only the heartbeat can tell."""
    from wsclient.testing import ChaosProxy

    interval, timeout = 0.05, 0.1
    async with ChaosProxy("127.0.0.1", server.port) as proxy:
        config = fast_config(heartbeat=Heartbeat(interval=interval, timeout=timeout))
        client = Client(proxy.url("/ws"), config=config)
        client.subscribe("sub")
        recorder = Recorder(client)
        async with client:
            await client.wait_open(2)
            await server.wait_until(lambda: server.received == ["sub"])
            proxy.blackhole(True)
            cut = time.monotonic()
            await recorder.wait_for(Disconnected, 1)
            detected = time.monotonic() - cut
            proxy.blackhole(False)
            await recorder.wait_for(Connected, 2)
            await server.wait_until(lambda: server.received == ["sub", "sub"])
        lost = recorder.of(Disconnected)[0]
        assert isinstance(lost, Disconnected) and "no pong" in lost.reason and lost.will_retry
        # The bound of the issue: interval + timeout plus scheduling slack.
        assert detected <= interval + timeout + 0.5, detected


async def test_event_callbacks_see_the_new_state(server: TestServer) -> None:
    client = Client(server.url, config=fast_config())
    seen: list[tuple[str, ConnectionState]] = []
    client.on_event(
        lambda e: None if isinstance(e, StateChanged) else seen.append((type(e).__name__, client.state))
    )
    recorder = Recorder(client)
    async with client:
        await recorder.wait_for(Connected, 1)
        await server.drop_all()
        await recorder.wait_for(Connected, 2)
    assert seen[:4] == [
        ("Connected", ConnectionState.OPEN),
        ("Disconnected", ConnectionState.RECONNECTING),
        ("Reconnecting", ConnectionState.RECONNECTING),
        ("Connected", ConnectionState.OPEN),
    ]
    assert seen[-1] == ("Closed", ConnectionState.CLOSED)


async def test_seconds_since_last_inbound_survives_a_reconnect(server: TestServer) -> None:
    client = Client(server.url, config=fast_config())
    assert client.stats.seconds_since_last_inbound is None
    recorder = Recorder(client)
    collector = Collector()
    client.on_message(collector)
    async with client:
        await client.wait_open(2)
        assert client.stats.seconds_since_last_inbound is None  # nothing received yet
        await client.send("x")
        await collector.wait_for(1)
        first = client.stats.seconds_since_last_inbound
        assert first is not None and 0 <= first < 5
        await server.stop()
        await client.wait_state(lambda s: s is not ConnectionState.OPEN, 2)
        between = client.stats.seconds_since_last_inbound
        assert between is not None and between >= first
        await server.start()
        await recorder.wait_for(Connected, 2)


async def test_message_and_byte_counts_add_up_across_reconnects(server: TestServer) -> None:
    client = Client(server.url, config=fast_config())
    collector = Collector()
    client.on_message(collector)
    recorder = Recorder(client)
    sent: list[str | bytes] = []
    async with client:
        for round_ in range(3):
            await client.wait_open(2)
            for i in range(5):
                frame: str | bytes = f"r{round_}-é{i}" if i % 2 else bytes([round_, i])
                sent.append(frame)
                await client.send(frame)
            await collector.wait_for(len(sent))
            # The current connection's figures and the finished ones' are added up at any moment.
            assert client.stats.messages_in == len(sent)
            assert client.stats.bytes_in == sum(len(f) for f in sent)
            await server.drop_all()
            await recorder.wait_for(Disconnected, round_ + 1)
    assert collector.frames == sent
    assert client.stats.messages_in == 15
    assert client.stats.bytes_in == sum(len(f) for f in sent)


async def test_sync_and_async_callbacks_and_handlers_keep_arrival_order(server: TestServer) -> None:
    """Sync work runs as frames are read, async work on the dispatcher: the order must not change."""
    client = Client(server.url, config=fast_config())
    calls: list[tuple[str, str]] = []
    done = asyncio.Event()

    def sync_callback(frame: str | bytes) -> None:
        calls.append(("sync", str(frame)))

    async def async_callback(frame: str | bytes) -> None:
        if str(frame).startswith("a"):
            await asyncio.sleep(0.005)  # holds the dispatcher while later frames are read
        calls.append(("async", str(frame)))
        if frame == "end":
            done.set()

    client.on_message(sync_callback)
    async with client:
        await client.wait_open(2)
        frames = [f"{'a' if i % 3 == 0 else 's'}{i}" for i in range(30)] + ["end"]
        for frame in frames:
            await client.send(frame)
        await poll_until(lambda: len(calls) == len(frames))
        client.on_message(async_callback)  # registered while open: takes effect from now on
        for frame in frames:
            await client.send(frame)
        async with asyncio.timeout(5):
            await done.wait()
    first = [("sync", f) for f in frames]
    second = [pair for f in frames for pair in (("sync", f), ("async", f))]
    assert calls[: len(first)] == first
    assert calls[len(first) :] == second


async def test_a_handler_raising_cancelled_error_neither_stops_the_stream_nor_the_link(
    server: TestServer,
) -> None:
    client = Client(server.url, config=fast_config())
    got: list[str] = []
    errors: list[BaseException] = []
    client.on_error(lambda item, exc: errors.append(exc))
    cancelled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    cancelled.cancel()

    def sync_callback(frame: str | bytes) -> None:
        if frame == "sync-bad":
            cancelled.result()  # its own CancelledError: sync code cannot be cancelled from outside
        got.append(f"sync:{frame!s}")

    async def async_callback(frame: str | bytes) -> None:
        if frame == "async-bad":
            await cancelled  # a cancelled inner await escaping
        got.append(f"async:{frame!s}")

    client.on_message(sync_callback)
    client.on_message(async_callback)
    async with client:
        await client.wait_open(2)
        for frame in ("a", "sync-bad", "async-bad", "b"):
            await client.send(frame)
        await poll_until(lambda: "async:b" in got)
        assert client.stats.connects == 1
    assert got == ["sync:a", "async:a", "async:sync-bad", "sync:async-bad", "sync:b", "async:b"]
    assert [type(exc) for exc in errors] == [asyncio.CancelledError] * 2
    assert client.stats.handler_errors == 2


async def test_last_rtt_survives_a_reconnect_with_its_age(server: TestServer) -> None:
    client = Client(server.url, config=fast_config())
    recorder = Recorder(client)
    async with client:
        await client.wait_open(2)
        await poll_until(lambda: client.stats.last_rtt is not None)
        await server.stop()  # no server: the client is between connections for a while
        await recorder.wait_for(Disconnected)
        between = client.stats
        await server.start()
        await recorder.wait_for(Connected, 2)
    assert between.last_rtt is not None and between.last_rtt_age is not None
    assert between.last_rtt_age >= 0.0


async def test_a_subscription_cancelled_during_the_replay_is_unsubscribed(server: TestServer) -> None:
    """The replay already sent its subscribe on the connection being opened: cancelling it then must
    send the unsubscribe (after the replay), not leave the server subscribed."""
    client = Client(server.url, config=fast_config(replay_interval=0.05))
    first = client.subscribe("sub-a", unsubscribe="unsub-a")
    client.subscribe("sub-b")
    client.subscribe("sub-c")
    async with client:
        await server.wait_until(lambda: "sub-a" in server.received)
        assert client.state is ConnectionState.CONNECTING  # still replaying
        await first.cancel()
        await server.wait_until(lambda: "unsub-a" in server.received)
    assert server.received == ["sub-a", "sub-b", "sub-c", "unsub-a"]


async def test_a_subscription_cancelled_before_the_replay_reaches_it_is_never_sent(
    server: TestServer,
) -> None:
    client = Client(server.url, config=fast_config(replay_interval=0.05))
    client.subscribe("sub-a")
    late = client.subscribe("sub-b", unsubscribe="unsub-b")
    client.subscribe("sub-c")
    async with client:
        await server.wait_until(lambda: "sub-a" in server.received)
        await late.cancel()
        await client.wait_open(2)
        await client.send("marker")
        await server.wait_until(lambda: "marker" in server.received)
    assert server.received == ["sub-a", "sub-c", "marker"]
