"""``wsclient.sync.Client`` against real servers: a ``FeedServer`` on the loop of a thread of its own
(``ServerThread``), the client's blocking API called from the test's thread, from handlers, from
other threads, from inside a running event loop, and in a child process sent SIGINT."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import itertools
import json
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import pytest

from wsclient import (
    ClientClosedError,
    Closed,
    ConfigError,
    Connected,
    ConnectionState,
    Message,
    StateChanged,
)
from wsclient.sync import Client, HandlerThread
from wsclient.testing import FeedServer, ServerThread

CHILD = Path(__file__).with_name("sync_child.py")
TRADES = {"op": "subscribe", "channel": "trades", "symbol": "BTC-USD"}
HANDLERS = ("loop", "worker", "executor")


class Trade(Message):
    type: Literal["trade"]
    symbol: str
    seq: int


Feed = ServerThread[FeedServer]


@pytest.fixture
def feed() -> Iterator[Feed]:
    with ServerThread(FeedServer(rate=200)) as thread:
        yield thread


@pytest.fixture
def app_executor() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="app")
    try:
        yield executor
    finally:
        executor.shutdown(wait=True)


def handler_mode(name: str, executor: concurrent.futures.Executor) -> HandlerThread:
    return executor if name == "executor" else name  # type: ignore[return-value]


class Seen:
    """What handlers recorded, in order, with an event-driven bounded wait."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._changed = threading.Condition()

    def add(self, item: Any) -> None:
        with self._changed:
            self.items.append(item)
            self._changed.notify_all()

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Any]:
        """The first ``count`` items (more may have come by the time this thread wakes)."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.items) >= count, timeout):
                raise TimeoutError(f"{len(self.items)} of {count} items after {timeout}s")
            return self.items[:count]


def poll_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Bounded wait on a condition with no event to wait on (a client counter)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s")
        time.sleep(0.002)


def open_fds() -> set[str]:
    """This process's open file descriptors (with what they point to, for a readable failure)."""
    if os.path.isdir("/proc/self/fd"):
        found = set()
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):  # the listing's own descriptor, closed already
                found.add(f"{fd}:{os.readlink(f'/proc/self/fd/{fd}')}")
        return found
    import psutil  # type: ignore[import-untyped]

    return {str(n) for n in range(psutil.Process().num_fds())}


def wait_closes(feed: Feed, count: int) -> list[int]:
    server = feed.server
    feed.run(server.wait_until(lambda: len(server.close_codes) >= count))
    return list(server.close_codes)


def assert_consecutive(seqs: list[int]) -> None:
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs


# ------------------------------------------------------------------------------------------ handlers


@pytest.mark.parametrize("handlers", HANDLERS)
def test_typed_handlers_run_in_order_in_the_chosen_thread(
    feed: Feed, backend: str, handlers: str, app_executor: concurrent.futures.Executor
) -> None:
    seen = Seen()
    events = Seen()
    running = 0
    overlap = 0
    lock = threading.Lock()

    def on_trade(trade: Trade) -> None:
        nonlocal running, overlap
        with lock:
            running += 1
            overlap = max(overlap, running)
        time.sleep(0.0005)  # long enough for a second executor thread to overlap, if it could
        seen.add((trade.seq, threading.current_thread().name))
        with lock:
            running -= 1

    with Client(feed.server.url, handlers=handler_mode(handlers, app_executor)) as client:
        client.on(Trade, on_trade)
        client.on_event(lambda event: events.add(threading.current_thread().name))
        client.subscribe(TRADES)
        client.wait_open(timeout=5)
        got = seen.wait_for(60)
    assert_consecutive([seq for seq, _ in got])
    names = {name for _, name in got} | set(events.items)
    prefix = {"loop": "wsclient-loop-", "worker": "wsclient-handlers-", "executor": "app"}[handlers]
    assert all(name.startswith(prefix) for name in names), names
    assert overlap == 1  # one at a time, also on a four-thread executor
    assert client.state is ConnectionState.CLOSED


def test_a_full_handler_queue_holds_the_client_back_without_loss(feed: Feed) -> None:
    release = threading.Event()
    seen = Seen()

    def slow(trade: Trade) -> None:
        release.wait(10)
        seen.add(trade.seq)

    with Client(feed.server.url, handler_queue=4) as client:
        client.on(Trade, slow)
        client.subscribe(TRADES)
        client.wait_open(timeout=5)
        # The worker is stuck and its queue full: frames now wait in the client's own inbound queue.
        poll_until(lambda: client.stats.inbound_queued >= 20)
        release.set()
        got = seen.wait_for(150)
        stats = client.stats
    assert_consecutive(got)
    assert stats.dropped_in == 0


@pytest.mark.parametrize("handlers", ["worker", "executor"])
def test_a_handler_error_off_the_loop_is_reported_and_the_feed_goes_on(
    feed: Feed, handlers: str, app_executor: concurrent.futures.Executor
) -> None:
    seen = Seen()
    errors = Seen()

    def picky(trade: Trade) -> None:
        if trade.seq % 2:
            raise ValueError(f"odd {trade.seq}")
        seen.add(trade.seq)

    with Client(feed.server.url, handlers=handler_mode(handlers, app_executor)) as client:
        client.on(Trade, picky)
        client.on_error(lambda item, exc: errors.add((item, str(exc), threading.current_thread().name)))
        client.subscribe(TRADES)
        got = seen.wait_for(10)
        errs = errors.wait_for(5)
        poll_until(lambda: client.stats.handler_errors >= 5)
    assert got == list(range(got[0], got[0] + 20, 2))
    item, text, thread = errs[0]
    assert isinstance(item, Trade) and text == f"odd {item.seq}"
    assert not thread.startswith("wsclient-loop-")  # reported where the handler ran


def test_on_connect_hook_blocks_on_a_login_before_the_replay(
    feed: Feed, backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    logins = Seen()
    server = feed.server

    client = Client(server.url)

    # Registered before start(): the loop runs on its own thread, so a hook registered inside the
    # ``with`` could come after the first connection ran its hooks (it then runs from the next one).
    @client.on_connect
    def login(conn: Any) -> None:
        reply = conn.request({"op": "time"}, timeout=5)
        logins.add((reply["type"], conn.reconnect, threading.current_thread().name))

    client.subscribe(TRADES)
    with client:
        client.wait_open(timeout=5)
        assert len(logins.items) == 1  # hooks run before the client is OPEN
        feed.run(server.restart())
        got = logins.wait_for(2, timeout=15)  # a restart, a reconnect, then the login: slow when loaded
        client.wait_open(timeout=5)
    frames = [json.loads(frame) for _, frame in server.received]
    assert [f["op"] for f in frames] == ["time", "subscribe", "time", "subscribe"]
    assert "ran its hooks" not in caplog.text  # registered before start(): no warning
    assert [(kind, again) for kind, again, _ in got] == [("time", False), ("time", True)]
    assert not any(name.startswith("wsclient-loop-") for _, _, name in got)


def test_a_hook_registered_once_open_is_said_to_run_from_the_next_reconnect(
    feed: Feed, backend: str, caplog: pytest.LogCaptureFixture
) -> None:
    logins = Seen()
    server = feed.server
    with Client(server.url) as client:
        client.subscribe(TRADES)
        client.wait_open(timeout=5)
        client.on_connect(lambda conn: logins.add(conn.reconnect))
        assert "registered after connection 1 ran its hooks" in caplog.text
        feed.run(server.restart())
        assert logins.wait_for(1, timeout=15) == [True]  # the reconnect ran it
    frames = [json.loads(frame)["op"] for _, frame in server.received]
    assert frames == ["subscribe", "subscribe"]


# ------------------------------------------------------------------------------------------ sending


def test_send_and_request(feed: Feed, backend: str) -> None:
    server = feed.server
    with Client(server.url) as client:
        client.wait_open(timeout=5)
        client.send({"op": "ping", "id": 7})
        reply = client.request({"op": "time"}, timeout=5)
        stats = client.stats
    assert reply["type"] == "time" and isinstance(reply["ts"], float)
    assert [json.loads(f)["op"] for _, f in server.received] == ["ping", "time"]
    assert stats.messages_out == 2 and stats.requests_pending == 0
    with pytest.raises(ClientClosedError):
        client.send({"op": "ping"})


def test_a_blocking_call_on_the_loop_thread_raises_instead_of_deadlocking(feed: Feed) -> None:
    outcome: concurrent.futures.Future[str] = concurrent.futures.Future()

    def answer(trade: Trade) -> None:
        if not outcome.done():
            try:
                client.send({"op": "ping"})
            except RuntimeError as exc:
                outcome.set_result(str(exc))

    with Client(feed.server.url, handlers="loop") as client:
        client.on(Trade, answer)
        client.subscribe(TRADES)
        message = outcome.result(timeout=5)
    assert "handlers='worker'" in message and "loop thread" in message


# ------------------------------------------------------------------------------------------ iteration


def test_messages_and_events_as_blocking_iterators(feed: Feed, backend: str) -> None:
    client = Client(feed.server.url)
    trades = client.messages(Trade, timeout=5)
    events = client.events(timeout=5)
    client.subscribe(TRADES)
    with client:
        first = list(itertools.islice(trades, 50))
        opened = next(e for e in events if isinstance(e, Connected))
    assert_consecutive([t.seq for t in first])
    assert opened.reconnect is False
    rest = list(trades)  # ends once closed and what was buffered has been read
    assert not rest or rest[0].seq == first[-1].seq + 1
    tail = list(events)  # ends once closed
    # The move to CLOSED, then the Closed event emitted right after it: the stream ends with both.
    assert isinstance(tail[-2], StateChanged) and tail[-2].new is ConnectionState.CLOSED
    assert isinstance(tail[-1], Closed)


def test_a_quiet_iteration_times_out_and_stays_usable(feed: Feed) -> None:
    with Client(feed.server.url) as client:
        trades = client.messages(Trade, timeout=0.2)
        client.wait_open(timeout=5)
        with pytest.raises(TimeoutError):
            next(trades)  # nothing subscribed yet
        client.subscribe(TRADES)
        trades.timeout = 5
        assert next(trades).symbol == "BTC-USD"
        trades.close()
        assert list(itertools.islice(trades, 1000)) is not None  # ends: unregistered


# ------------------------------------------------------------------------------------------ closing


@pytest.mark.parametrize("handlers", HANDLERS)
def test_close_from_inside_a_handler(
    feed: Feed, backend: str, handlers: str, app_executor: concurrent.futures.Executor
) -> None:
    before = set(threading.enumerate())
    seen = Seen()
    client = Client(feed.server.url, handlers=handler_mode(handlers, app_executor))

    @client.on(Trade)
    def on_trade(trade: Trade) -> None:
        seen.add(trade.seq)
        if len(seen.items) == 5:
            client.close()  # schedules the close and returns: waiting here would wait on itself
            with pytest.raises(RuntimeError, match="would wait for itself"):
                client.wait_closed()

    client.subscribe(TRADES)
    client.start()
    client.wait_closed(timeout=10)
    assert client.state is ConnectionState.CLOSED
    # The application's executor threads are the application's: the client's own are gone.
    assert {t for t in threading.enumerate() if not t.name.startswith("app")} == before
    assert wait_closes(feed, 1) == [1000]
    if handlers != "loop":
        # Off the loop, the messages queued behind the closing handler are dropped, not run.
        assert len(seen.items) == 5
    assert_consecutive(seen.items)


def test_close_from_another_thread_ends_run_forever(feed: Feed, backend: str) -> None:
    before = set(threading.enumerate())
    client = Client(feed.server.url)
    opened = threading.Event()
    events = Seen()
    client.on_event(lambda event: isinstance(event, Connected) and opened.set())
    client.on_event(events.add)
    closer = threading.Thread(target=lambda: opened.wait(10) and client.close(1000, "bye"))
    closer.start()
    client.run_forever()  # returns once the other thread's close() is done
    closer.join(10)
    assert client.state is ConnectionState.CLOSED
    assert set(threading.enumerate()) == before
    assert wait_closes(feed, 1) == [1000]
    # Events queued for the worker at close are delivered, the final Closed included.
    assert isinstance(events.items[-1], Closed) and events.items[-1].reason == "bye"
    client.close()  # idempotent


@pytest.mark.parametrize("handlers", ["worker", "loop"])
def test_no_thread_or_socket_outlives_close(feed: Feed, backend: str, handlers: HandlerThread) -> None:
    server = feed.server

    def one_client() -> None:
        client = Client(server.url, handlers=handlers)
        client.on(Trade, lambda trade: None)
        client.on_connect(lambda conn: conn.send({"op": "ping", "id": 1}))
        client.subscribe(TRADES)
        with client:
            client.wait_open(timeout=5)
            client.request({"op": "time"}, timeout=5)
        feed.run(server.wait_until(lambda: server.current_connections() == 0))

    one_client()  # whatever is made once per process (imports, caches) is made now
    threads, fds = set(threading.enumerate()), open_fds()
    for _ in range(3):
        one_client()
        assert set(threading.enumerate()) == threads
    assert open_fds() == fds


def test_a_dropped_client_is_closed_by_the_garbage_collector(feed: Feed) -> None:
    before = set(threading.enumerate())
    client = Client(feed.server.url)
    client.start()
    client.wait_open(timeout=5)
    del client
    gc.collect()
    assert set(threading.enumerate()) == before
    assert wait_closes(feed, 1) == [1001]


def test_bad_arguments_fail_at_construction_and_start_nothing() -> None:
    before = set(threading.enumerate())
    with pytest.raises(ConfigError, match="handlers must be 'worker', 'loop' or a concurrent"):
        Client("ws://127.0.0.1:9/", handlers="threads")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"handler_queue must be .* at least 1"):
        Client("ws://127.0.0.1:9/", handler_queue=0)
    with pytest.raises(ConfigError):
        Client("http://127.0.0.1:9/")
    client = Client("ws://127.0.0.1:9/")

    async def handler(trade: Trade) -> None: ...

    with pytest.raises(TypeError, match=r"is async; wsclient\.sync\.Client runs plain functions"):
        client.on(Trade, handler)
    with pytest.raises(ClientClosedError, match="not started"):
        client.send({"op": "ping"})
    assert set(threading.enumerate()) == before
    client.close()  # never started: closed without a connection, on a loop of its own
    assert client.state is ConnectionState.CLOSED
    assert set(threading.enumerate()) == before


# ------------------------------------------------------------------------------------------ event loops


def test_works_inside_a_running_event_loop(feed: Feed, backend: str) -> None:
    """What a notebook cell does: blocking calls from a coroutine of a loop running in this thread."""

    async def cell() -> tuple[Any, list[Trade], set[asyncio.Task[Any]]]:
        loop = asyncio.get_running_loop()
        with Client(feed.server.url) as client:
            trades = client.messages(Trade, timeout=5)
            client.subscribe(TRADES)
            client.wait_open(timeout=5)
            reply = client.request({"op": "time"}, timeout=5)
            got = list(itertools.islice(trades, 5))
        return reply, got, asyncio.all_tasks(loop)

    reply, got, tasks = asyncio.run(cell())
    assert reply["type"] == "time"
    assert_consecutive([t.seq for t in got])
    assert len(tasks) == 1  # nothing of the client's ever ran on the caller's loop


# ------------------------------------------------------------------------------------------ processes


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise TimeoutError(f"no line from the child within {timeout}s")
    return proc.stdout.readline()


def run_child(feed: Feed, backend: str, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(CHILD), feed.server.url, backend, mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("mode", ["run_forever", "messages"])
def test_ctrl_c_closes_the_client_and_leaves_no_thread(feed: Feed, backend: str, mode: str) -> None:
    proc = run_child(feed, backend, mode)
    try:
        assert read_line(proc, 20) == "ready\n"
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert out.splitlines() == ["interrupted closed", "threads: ['MainThread']"], (out, err)
    assert "Traceback" not in err
    assert wait_closes(feed, 1) == [1000]


def test_a_client_left_open_is_closed_at_interpreter_exit(feed: Feed, backend: str) -> None:
    proc = run_child(feed, backend, "forget")
    try:
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert out == "ready\n"
    assert "Traceback" not in err
    assert wait_closes(feed, 1) == [1001]
