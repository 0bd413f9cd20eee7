"""Hostile or broken servers that still got the better of the client: one regression test per defect.

Every server here is real and on 127.0.0.1: a hand-written peer (tests/rawpeer.py) where a server must
misbehave, a `websockets` server where it need not. Each test states the contract the client keeps
and runs on both transport backends.

* A send waiting on backpressure when the link ends raises, and is not counted as sent.
* A close frame from a server that then keeps TCP open (or never answers ours) ends the link within
  ``close_timeout``: the socket is aborted and the client reconnects.
* Nothing after a server's close frame is delivered.
* A ping flood from a server that never reads cannot grow the client's memory without bound.
* ``close()`` is valid at every moment, right after ``start()`` included.
* A sync handler blocking the event loop while a ping is in flight is no dead link.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, Self

import pytest

from wsclient import (
    Client,
    ClientConfig,
    ClientEvent,
    Closed,
    Connected,
    ConnectionLostError,
    ConnectionState,
    Disconnected,
    Heartbeat,
    HeartbeatMissed,
    Message,
    Reconnect,
)

from .conftest import Collector, Recorder, TestServer, poll_until
from .rawpeer import BINARY, CLOSE, PING, PONG, TEXT, MakeRaw, RawPeer, frame

# Every test here runs on each transport backend (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("backend")

FAST = Reconnect(initial_delay=0.01, max_delay=0.05, jitter=0, reset_after=0.5)
#: A heartbeat that never pings within a test: only the rule under test may act.
QUIET = Heartbeat(interval=5.0, timeout=5.0)


def config(**overrides: object) -> ClientConfig:
    values: dict[str, object] = {
        "heartbeat": QUIET,
        "reconnect": FAST,
        "open_timeout": 1.0,
        "close_timeout": 0.2,
    }
    values.update(overrides)
    return ClientConfig(**values)


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return code.to_bytes(2, "big") + reason


async def next_ping(peer: RawPeer) -> bytes:
    """Read frames until the client's next ping; return its payload (unanswered)."""
    while True:
        _, opcode, data = await peer.read_frame()
        if opcode == PING:
            return data


async def read_until_close(peer: RawPeer) -> None:
    """Read, answering nothing, until the client's close frame; returning then closes TCP."""
    while (await peer.read_frame())[1] != CLOSE:
        pass


async def hold_open(peer: RawPeer) -> None:
    """Keep the connection open and do nothing, until the server is stopped."""
    await asyncio.Event().wait()


async def disconnected_within(recorder: Recorder, client: Client, timeout: float) -> Disconnected:
    """The first Disconnected, waited for at most ``timeout``; failing says where the client is stuck."""
    with contextlib.suppress(TimeoutError):
        await recorder.wait_for(Disconnected, 1, timeout=timeout)
    if not recorder.of(Disconnected):
        pytest.fail(f"no Disconnected within {timeout}s: the client is still {client.state.value}")
    lost = recorder.of(Disconnected)[0]
    assert isinstance(lost, Disconnected)
    return lost


# -- 5. a send waiting on backpressure when the link ends ------------------------------------------

BIG = bytes(256 * 1024)


async def _deaf(peer: RawPeer) -> None:
    # Handshake, then read nothing ever: the client's frames fill the kernel buffers, then its own.
    await peer.handshake()
    peer.stop_reading()
    await hold_open(peer)


class Sender:
    """Sends BIG frames one after another and records how each send ended (None: it returned)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.outcomes: list[BaseException | None] = []
        # Only ever seen True from another task while a send is suspended, and a send suspends
        # only to wait for the write buffer to drain (or for the link to end): backpressure.
        self.in_flight = False
        self.stop = False

    async def run(self, limit: int = 64) -> None:
        for _ in range(limit):
            self.in_flight = True
            try:
                await self.client.send(BIG)
            except Exception as exc:
                self.outcomes.append(exc)
                return
            finally:
                self.in_flight = False
            self.outcomes.append(None)
            if self.stop:
                return


@pytest.mark.parametrize("ending", ["dead link", "close()"])
async def test_send_waiting_on_backpressure_raises_when_the_link_ends(
    raw_server: MakeRaw, ending: Literal["dead link", "close()"]
) -> None:
    """Defect 5 (websockets): a send waiting on a full buffer returned, and counted, when the link died.

    The server never read the frame; reporting it sent is how an order gets lost without a trace.
    The waiting send must raise ConnectionLostError, and only sends that returned count as sent.
    """
    server = await raw_server(_deaf)
    heartbeat = Heartbeat(interval=0.05, timeout=0.1) if ending == "dead link" else QUIET
    client = Client(server.url, config=config(heartbeat=heartbeat))
    recorder = Recorder(client)
    sender = Sender(client)
    async with client:
        await client.wait_open(2)
        sending = asyncio.create_task(sender.run())
        try:
            await poll_until(lambda: sender.in_flight or sending.done(), timeout=2)
            assert sender.in_flight, f"no send ever waited on backpressure: {sender.outcomes}"
            stuck = len(sender.outcomes)
            sender.stop = True
            if ending == "dead link":
                await disconnected_within(recorder, client, 2.0)
            else:
                await client.close()
            async with asyncio.timeout(2):
                await sending
        finally:
            sending.cancel()
    outcome = sender.outcomes[stuck]
    assert isinstance(outcome, ConnectionLostError), (
        f"the send waiting when the link ended must raise ConnectionLostError, got {outcome!r} "
        "(None: it returned as if sent)"
    )
    returned = sender.outcomes.count(None)
    stats = client.stats
    assert (stats.messages_out, stats.bytes_out) == (returned, returned * len(BIG))


# -- 6. a close frame, and then a server that never closes TCP ---------------------------------------

NO_HEARTBEAT = Heartbeat(mode="off")  # nothing else may end the link: only the close rule
CLOSE_BOUND = 1.0  # close_timeout (0.2 s) and a wide margin for a loaded machine


@pytest.mark.parametrize("code", [1001, 1011])
async def test_close_frame_from_a_server_that_keeps_tcp_open_ends_the_link(
    raw_server: MakeRaw, code: int
) -> None:
    """Defect 6a (websockets): after the server's close frame, with TCP kept open, the client stayed OPEN.

    It must report the server's code within about close_timeout, abort the socket and reconnect.
    """
    sent_at: list[float] = []

    async def script(peer: RawPeer) -> None:
        await peer.handshake()
        if peer.attempt > 1:
            await peer.serve()
            return
        await peer.read_frame()  # "sub": the client is OPEN
        peer.send(frame(CLOSE, close_payload(code, b"bye")))
        sent_at.append(time.monotonic())
        await peer.discard_until_eof()

    server = await raw_server(script)
    client = Client(server.url, config=config(heartbeat=NO_HEARTBEAT))
    client.subscribe("sub")
    recorder = Recorder(client)
    async with client:
        lost = await disconnected_within(recorder, client, 2.0)
        took = time.monotonic() - sent_at[0]
        first = server.peers[0]
        await first.wait_for(lambda: first.hung_up, timeout=1)
        await server.wait_for_connections(2, timeout=2)
        await client.wait_open(2)
    assert lost.code == code and lost.will_retry, lost
    assert took < CLOSE_BOUND, f"{took:.3f}s after the close frame; close_timeout is 0.2s"


OVERSIZED = frame(BINARY, length=2**20)  # announced only: the client must refuse it from the header
BAD_CLOSE_REASON = frame(CLOSE, close_payload(1000, b"\xff"))


@pytest.mark.parametrize(
    ("bad", "code"),
    [(OVERSIZED, 1009), (BAD_CLOSE_REASON, 1007)],
    ids=["oversized-1009", "invalid-utf8-close-reason-1007"],
)
async def test_close_sent_by_the_client_and_never_answered_ends_the_link(
    raw_server: MakeRaw, bad: bytes, code: int
) -> None:
    """Defect 6b (websockets): the client failed the link (1009, 1007), the server never answered.

    The client stayed OPEN; it must end the link as in 6a, with its own code, and retry.

    (An invalid UTF-8 text *message* already ended on websockets: it fails the link from recv(),
    which enforces close_timeout. Failures found while parsing, like these two, did not.)
    """
    sent_at: list[float] = []

    async def script(peer: RawPeer) -> None:
        await peer.handshake()
        if peer.attempt > 1:
            await peer.serve()
            return
        await peer.read_frame()  # "sub": the client is OPEN
        peer.send(bad)
        sent_at.append(time.monotonic())
        await peer.discard_until_eof()

    server = await raw_server(script)
    client = Client(server.url, config=config(heartbeat=NO_HEARTBEAT, max_size=64 * 1024))
    client.subscribe("sub")
    recorder = Recorder(client)
    async with client:
        lost = await disconnected_within(recorder, client, 2.0)
        took = time.monotonic() - sent_at[0]
        first = server.peers[0]
        await first.wait_for(lambda: first.hung_up, timeout=1)
        await server.wait_for_connections(2, timeout=2)
        await client.wait_open(2)
    assert lost.code == code and lost.will_retry, lost
    assert took < CLOSE_BOUND, f"{took:.3f}s after the bad frame; close_timeout is 0.2s"


# -- 7. data after the close frame ---------------------------------------------------------------


class Tick(Message):
    type: Literal["tick"]
    n: int


async def test_nothing_after_the_servers_close_frame_is_delivered(raw_server: MakeRaw) -> None:
    """Defect 7: a data frame right behind the server's close frame reached the handlers (picows)."""
    ticks = [f'{{"type":"tick","n":{n}}}'.encode() for n in (1, 2, 3)]

    async def script(peer: RawPeer) -> None:
        await peer.handshake()
        if peer.attempt > 1:
            await peer.serve()
            return
        await peer.read_frame()  # "sub": the client is OPEN
        # One write, so that the client reads the close frame and what follows it together.
        peer.send(
            frame(TEXT, ticks[0])
            + frame(CLOSE, close_payload(1001))
            + frame(TEXT, ticks[1])
            + frame(TEXT, ticks[2])
        )
        await read_until_close(peer)

    server = await raw_server(script)
    client = Client(server.url, config=config())
    client.subscribe("sub")
    collector = Collector()
    client.on_message(collector)
    typed: list[int] = []
    client.on(Tick, lambda tick: typed.append(tick.n))
    recorder = Recorder(client)
    async with client:
        # The first connection's frames are all delivered before its Disconnected, so by the
        # second Connected nothing of it is left in flight.
        await recorder.wait_for(Connected, 2, timeout=2)
        lost = recorder.of(Disconnected)[0]
    assert isinstance(lost, Disconnected) and lost.code == 1001
    assert collector.frames == [ticks[0].decode()], "only the frame before the close frame is delivered"
    assert typed == [1]
    assert client.stats.messages_in == 1


# -- 8. a ping flood from a server that never reads -------------------------------------------------

#: 512 pings with the largest control payload (125 bytes): ~65 KB per write.
PING_BURST = b"".join(frame(PING, bytes([i % 256]) * 125) for i in range(512))
FLOOD_CAP = 40 * 2**20
GROWTH_LIMIT = 8 * 2**20


class PingFlood:
    """A server that floods pings and reads nothing (not the pongs either) on its first connection.

    The flood stops when the client hangs up, after FLOOD_CAP bytes, or as soon as the client's
    traced memory grew past GROWTH_LIMIT (the test has failed then: no need to go on).
    """

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.ended = asyncio.Event()
        self.baseline = 0
        self.written = 0
        self.why = ""

    async def script(self, peer: RawPeer) -> None:
        await peer.handshake()
        if peer.attempt > 1:
            await peer.serve()
            return
        await peer.read_frame()  # "sub": the client is OPEN
        peer.stop_reading()
        await self.go.wait()
        try:
            while True:
                if peer.writer.is_closing():
                    self.why = "client hung up"
                    break
                if tracemalloc.get_traced_memory()[0] - self.baseline > GROWTH_LIMIT:
                    self.why = "client memory past the limit"
                    break
                if self.written >= FLOOD_CAP:
                    self.why = "cap reached"
                    break
                peer.send(PING_BURST)
                self.written += len(PING_BURST)
                await peer.writer.drain()  # the flood goes as fast as the client reads it
        except ConnectionError:
            self.why = "client hung up"
        finally:
            self.ended.set()
        await hold_open(peer)


@pytest.mark.serial
async def test_ping_flood_from_a_peer_that_never_reads_is_bounded_and_ends_the_link(
    raw_server: MakeRaw,
) -> None:
    """Defect 8: each ping queued a pong the peer never read, so a flood grew memory without bound.

    The client must keep its memory bounded, close that link itself saying the peer is not reading,
    count it in ``stats.write_stalls`` and reconnect.
    """
    flood = PingFlood()
    server = await raw_server(flood.script)
    # A heartbeat that stays out of the way: the pings it would send wait behind the pongs.
    client = Client(server.url, config=config(heartbeat=Heartbeat(interval=30.0, timeout=10.0)))
    client.subscribe("sub")
    recorder = Recorder(client)
    tracing = tracemalloc.is_tracing()
    if not tracing:
        tracemalloc.start()
    try:
        async with client:
            await client.wait_open(2)
            tracemalloc.reset_peak()
            flood.baseline = tracemalloc.get_traced_memory()[0]
            flood.go.set()
            async with asyncio.timeout(30):  # the flood is bounded; this only guards a hang
                await flood.ended.wait()
            growth = tracemalloc.get_traced_memory()[1] - flood.baseline
            assert growth < GROWTH_LIMIT, (
                f"traced memory grew by {growth / 2**20:.1f} MiB while the server wrote "
                f"{flood.written / 2**20:.1f} MiB of pings and read nothing ({flood.why})"
            )
            lost = await disconnected_within(recorder, client, 5.0)
            await server.wait_for_connections(2, timeout=2)
            await client.wait_open(2)
            growth = tracemalloc.get_traced_memory()[1] - flood.baseline
    finally:
        if not tracing:
            tracemalloc.stop()
    assert growth < GROWTH_LIMIT, f"traced memory grew by {growth / 2**20:.1f} MiB"
    assert flood.why == "client hung up", flood.why
    assert "not reading" in lost.reason, lost
    assert lost.will_retry, lost
    assert client.stats.write_stalls >= 1


# -- 9. close() right after start(), and at every other moment ----------------------------------


class TaskWatch:
    """Keeps every task created while active, so that a crashed one is seen without waiting for GC.

    (asyncio logs "Task exception was never retrieved" only once the task is collected, which a
    test cannot time.) The client names all of its tasks "wsclient-…".
    """

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[Any]] = []
        self._previous: Any = None

    def __enter__(self) -> Self:
        loop = asyncio.get_running_loop()
        self._previous = loop.get_task_factory()
        loop.set_task_factory(self._create)
        return self

    def __exit__(self, *exc_info: object) -> None:
        asyncio.get_running_loop().set_task_factory(self._previous)

    def _create(self, loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        if self._previous is not None:
            task: asyncio.Task[Any] = self._previous(loop, coro, **kwargs)
        else:
            task = asyncio.Task(coro, loop=loop, **kwargs)
        self.tasks.append(task)
        return task

    def crashed(self) -> list[str]:
        return [
            f"{t.get_name()}: {t.exception()!r}"
            for t in self.tasks
            if t.get_name().startswith("wsclient-") and t.done() and not t.cancelled() and t.exception()
        ]


@dataclass
class Shutdown:
    closed: list[ClientEvent]
    state: ConnectionState
    wait_closed_returned: bool
    leftover: list[str]
    crashed: list[str]


def _wsclient_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("wsclient-")]


async def _settle(client: Client, recorder: Recorder, watch: TaskWatch) -> Shutdown:
    """What close() left behind, observed within bounds; stray tasks are then stopped."""
    try:
        await asyncio.wait_for(client.wait_closed(), 1.0)
        returned = True
    except TimeoutError:
        returned = False
    with contextlib.suppress(TimeoutError):
        await poll_until(lambda: not _wsclient_tasks(), timeout=0.5)
    stray = _wsclient_tasks()
    leftover = sorted(t.get_name() for t in stray)
    for task in stray:  # not to leak into later tests when the test fails
        task.cancel()
    await asyncio.gather(*stray, return_exceptions=True)
    return Shutdown(recorder.of(Closed), client.state, returned, leftover, watch.crashed())


def _check_shutdown(outcome: Shutdown, caplog: pytest.LogCaptureFixture) -> None:
    gc.collect()  # a task destroyed while pending, say, is logged when collected
    logged = [r.getMessage() for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR]
    assert outcome.crashed == [], "a background task crashed"
    assert logged == [], "asyncio logged errors"
    assert len(outcome.closed) == 1, f"exactly one Closed event, got {outcome.closed}"
    assert outcome.state is ConnectionState.CLOSED
    assert outcome.wait_closed_returned, "wait_closed() did not return"
    assert outcome.leftover == [], "tasks left running after close()"


CloseRightAway = Callable[[Client], Awaitable[None]]


async def _async_with_empty_body(client: Client) -> None:
    async with client:
        pass


async def _async_with_body_raising(client: Client) -> None:
    with pytest.raises(RuntimeError, match="before any await"):
        async with client:
            raise RuntimeError("before any await")


async def _start_then_close(client: Client) -> None:
    await client.start()
    await client.close()


@pytest.mark.parametrize(
    "close_right_away",
    [_async_with_empty_body, _async_with_body_raising, _start_then_close],
    ids=["async-with-empty-body", "async-with-body-raising", "start-then-close"],
)
async def test_close_right_after_start_shuts_down_cleanly(
    server: TestServer, caplog: pytest.LogCaptureFixture, close_right_away: CloseRightAway
) -> None:
    """Defect 9: close() before the supervisor's first step left it to crash (IllegalTransitionError).

    Then no Closed event, wait_closed() hung, and the dispatcher task leaked.
    """
    gc.collect()  # the garbage of earlier tests must not log into this one
    caplog.set_level(logging.ERROR, logger="asyncio")
    caplog.clear()

    with TaskWatch() as watch:
        client = Client(server.url, config=config())
        recorder = Recorder(client)
        await close_right_away(client)
        outcome = await _settle(client, recorder, watch)
    _check_shutdown(outcome, caplog)
    await server.wait_until(lambda: server.current == 0, timeout=2)


@pytest.mark.parametrize("moment", ["handshake in flight", "backoff sleep"])
async def test_close_during_a_connect_attempt_or_the_backoff_shuts_down_cleanly(
    raw_server: MakeRaw, caplog: pytest.LogCaptureFixture, moment: str
) -> None:
    """Defect 9, the other moments: close() while the 101 is awaited, and while waiting to retry.

    These worked before the fix; they hold it to "close() is valid in every state at every moment".
    The 101 is sent only once close() has begun: it must not bring a connection back to life.
    """
    gc.collect()
    caplog.set_level(logging.ERROR, logger="asyncio")
    caplog.clear()
    release = asyncio.Event()

    async def late_101(peer: RawPeer) -> None:
        await peer.read_request()
        await release.wait()
        with contextlib.suppress(ConnectionError):
            await peer.handshake()
        await peer.discard_until_eof()

    async def hang_up(peer: RawPeer) -> None:
        await peer.read_request()  # returning closes the connection: the attempt fails

    server = await raw_server(late_101 if moment == "handshake in flight" else hang_up)

    long_backoff = Reconnect(initial_delay=5, max_delay=5, jitter=0)
    with TaskWatch() as watch:
        client = Client(server.url, config=config(reconnect=long_backoff))
        recorder = Recorder(client)
        await client.start()
        if moment == "handshake in flight":
            await server.wait_for_connections(1, timeout=2)
            await poll_until(lambda: bool(server.peers[0].request), timeout=2)
            started = time.monotonic()
            closing = asyncio.create_task(client.close())
            await client.wait_state(lambda s: s is not ConnectionState.CONNECTING, 2)
            release.set()
            await closing
        else:
            await client.wait_state(lambda s: s is ConnectionState.RECONNECTING, 2)
            started = time.monotonic()
            await client.close()
        took = time.monotonic() - started
        outcome = await _settle(client, recorder, watch)
    _check_shutdown(outcome, caplog)
    assert took < 1.0, f"close() took {took:.3f}s: neither the handshake nor the backoff may hold it up"
    assert len(server.peers) == 1, "no attempt after close()"
    peer = server.peers[0]
    if moment == "handshake in flight":
        await peer.wait_for(lambda: peer.hung_up, timeout=2)


# -- 10. a handler blocking the event loop while a ping is in flight --------------------------------


async def test_handler_blocking_the_loop_while_a_ping_is_in_flight_is_no_dead_link(
    raw_server: MakeRaw,
) -> None:
    """Defect 10: a sync handler blocking the loop past the pong timeout got a live link declared dead.

    Each cycle: the server sends a frame (read and counted at once); an async on_message callback
    holds its delivery until the server has the client's next ping; the sync callback then blocks
    the loop for 4× the pong timeout. The server answers promptly, but it shares the loop: it writes
    the pong in the step after the one that releases the handler, so when the loop wakes the pong is
    in the socket, as a remote server's would be. The loop then runs the socket's read callback (the
    pong resolves the ping) *before* the expired timeout, but the pinger's wake-up *after* it: the
    ping times out with its pong in hand. And no frame arrived after the ping (the blocking one was
    counted before it), so the rule that forgives a miss when frames arrived meanwhile did not apply.

    A frame sent *after* the ping does not reproduce it: read together with the pong, the pong's
    wake-up is queued before the timer fires; read on its own, it counts as traffic after the ping
    and the miss is forgiven.
    """
    heartbeat = Heartbeat(interval=0.05, timeout=0.1)
    block = 4 * heartbeat.timeout
    cycles = 2
    ping_arrived = asyncio.Event()
    plain_pongs = 0

    async def script(peer: RawPeer) -> None:
        nonlocal plain_pongs
        await peer.handshake()
        if peer.attempt > 1:
            await peer.serve()
            return
        await peer.read_frame()  # "sub": the client is OPEN
        for _ in range(cycles):
            peer.send(frame(TEXT, b"slow"))
            payload = await next_ping(peer)
            ping_arrived.set()
            await asyncio.sleep(0)  # the released handler runs first, then the pong is written
            peer.send(frame(PONG, payload))
            # An ordinary round trip: the next "slow" frame goes out with its pong, so it is counted
            # before the ping it will block under.
            peer.send(frame(PONG, await next_ping(peer)))
        while True:
            peer.send(frame(PONG, await next_ping(peer)))
            plain_pongs += 1

    server = await raw_server(script)
    client = Client(server.url, config=config(heartbeat=heartbeat))
    client.subscribe("sub")
    recorder = Recorder(client)
    blocked = 0

    async def awaits_the_venue(data: str | bytes) -> None:
        await ping_arrived.wait()
        ping_arrived.clear()

    def blocks_the_loop(data: str | bytes) -> None:
        nonlocal blocked
        time.sleep(block)
        blocked += 1

    client.on_message(awaits_the_venue)
    client.on_message(blocks_the_loop)
    async with client:
        # Two more pings answered after the last block: the verdict on the last one is in.
        await poll_until(
            lambda: (blocked == cycles and plain_pongs >= 2) or bool(recorder.of(Disconnected)),
            timeout=cycles * (block + 0.5) + 2,
        )
    assert recorder.of(Disconnected) == [], "a live link was declared dead"
    assert [e for e in recorder.of(HeartbeatMissed) if isinstance(e, HeartbeatMissed) and e.fatal] == []
    assert blocked == cycles
    assert len(server.peers) == 1 and client.stats.connects == 1
