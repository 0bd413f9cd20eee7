"""The ``wsclient`` command: the demo end to end, ``listen``, ``serve``, signals and error paths."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from wsclient.cli import EXIT_CODES, main
from wsclient.testing import FeedServer

from .conftest import TestServer

WSCLIENT = [sys.executable, "-m", "wsclient"]
TRADES = '{"op": "subscribe", "channel": "trades", "symbol": "BTC-USD"}'


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*WSCLIENT, *args], capture_output=True, text=True, timeout=timeout, check=False)


async def spawn(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *WSCLIENT, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )


async def finish(proc: asyncio.subprocess.Process, timeout: float = 20) -> tuple[int, str, str]:
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def feed() -> AsyncIterator[FeedServer]:
    async with FeedServer(rate=100) as server:
        yield server


# ------------------------------------------------------------------------------------------------- demo

CONNECTION = re.compile(
    r"^\s+#(\d+)\s+([\d.]+)s (.+): sent (\d+), received (\d+), lost in flight (\d+)$", re.MULTILINE
)


def figure(name: str, text: str) -> int:
    match = re.search(rf"^\s+{name}:\s+(\d+)", text, re.MULTILINE)
    assert match, (name, text)
    return int(match.group(1))


def test_demo_accounts_for_every_message_the_feed_sent() -> None:
    result = run("demo", "--duration", "6", "--plain", "--seed", "3")
    out = result.stdout
    assert result.returncode == 0, (out, result.stderr)
    assert "Traceback" not in result.stderr
    received, sent, lost = (figure(n, out) for n in ("messages received", "sent by feed", "lost in flight"))
    assert received > 100
    assert received + lost == sent
    assert "received + lost in flight = sent by feed: OK" in out

    connections = CONNECTION.findall(out)
    assert len(connections) >= 4, out  # restart, black hole and 1012 close: three reconnects at least
    assert sum(int(c[3]) for c in connections) == sent
    assert sum(int(c[4]) for c in connections) == received
    for _, _, ended_by, c_sent, c_received, c_lost in connections:
        assert int(c_sent) - int(c_received) == int(c_lost)
        if "closed with code" in ended_by or ended_by.startswith("end of the demo"):
            assert int(c_lost) == 0, ended_by  # a close frame comes after every data frame
    assert connections[-1][2] == "end of the demo (unsubscribed)"
    ends = [c[2] for c in connections]
    assert any("1001" in e for e in ends) and any("1012" in e for e in ends), ends
    assert any("link declared dead" in e for e in ends), ends  # the black hole, seen by the heartbeat

    gaps = re.search(r"sequence gaps:\s+(\d+) \((\d+) at a reconnect, (\d+) within a connection", out)
    assert gaps and int(gaps.group(2)) >= 1 and int(gaps.group(3)) >= 1, out
    assert "idle cut-offs:       0 while the feed was quiet" in out
    for fault in ("the feed goes quiet", "the feed goes down", "black hole for", "the feed closes every"):
        assert f"fault: {fault}" in out


def run_on_a_tty(args: list[str], timeout: float = 60) -> tuple[int, str]:
    """Run the command with stdout on a pseudo-terminal; return its exit code and output."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(args, stdout=slave, stderr=subprocess.PIPE, env={**os.environ, "COLUMNS": "120"})
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.5)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    return code, b"".join(chunks).decode(errors="replace")


def test_demo_live_view_on_a_terminal() -> None:
    code, out = run_on_a_tty([*WSCLIENT, "demo", "--duration", "4"])
    assert code == 0, out
    assert "wsclient demo:" in out and "symbol" in out and "msgs/s" in out and "╭" in out
    assert "BTC-USD" in out and "events" in out
    assert "received + lost in flight = sent by feed: OK" in out


def test_demo_without_rich_prints_plain_lines_even_on_a_terminal() -> None:
    blocked = (
        "import sys; sys.modules['rich'] = None; from wsclient.cli import main; "
        "sys.exit(main(['demo', '--duration', '4']))"
    )
    code, out = run_on_a_tty([sys.executable, "-c", blocked])
    assert code == 0, out
    assert "╭" not in out
    assert re.search(r"^\[\s*\d+\.\d\ds\] connected \(connection 1\)", out, re.MULTILINE), out
    assert "received + lost in flight = sent by feed: OK" in out


SHARD = re.compile(r"^    shard (\d+)\s+OPEN\s+(\d+) streams, (\d+) connects, (\d+) rotations", re.M)
STREAM_OK = re.compile(r"^ {4}(s\d{3}@trade)\s+ids \d+-\d+: \d+ delivered.*exactly once, in order: OK$", re.M)
POOL_OK = re.compile(
    r"^  accounting:\s+every trade id reached the handlers exactly once, in order, .*: OK$", re.M
)


def test_demo_pool_spreads_streams_over_shards_exactly_once_within_the_venues_limits() -> None:
    result = run("demo", "--pool", "--plain", "--duration", "8")
    out = result.stdout
    assert result.returncode == 0, (out, result.stderr)
    assert "Traceback" not in result.stderr
    for index in (0, 1, 2):
        assert re.search(rf"^\[\s*\d+\.\d\ds\] shard {index} opens with 40 streams$", out, re.M), out
    shards = SHARD.findall(out)
    assert len(shards) == 3 and all(int(streams) == 40 for _, streams, *_ in shards), out
    assert figure("rotations", out) > 0
    assert figure("duplicates dropped", out) > 0
    assert figure("moves", out) > 0  # the removal freed a connection: the emptiest shard's streams moved
    assert figure("venue violations", out) == 0
    assert figure("copies delivered", out) == 0 and "unreported gaps: 0" in out
    assert POOL_OK.search(out), out
    assert len(STREAM_OK.findall(out)) == 120, out
    gaps = re.search(r"^  gaps reported:\s+(\d+) on \d+ streams: (\d+) trade ids", out, re.M)
    assert gaps and int(gaps.group(1)) >= 120 and int(gaps.group(2)) > 0, out  # the restart, reported
    for step in (
        "fault: the venue silently stops sending",
        "fault: the venue restarts",
        "change: the application removes",
        "change: the application adds",
    ):
        assert step in out, step


def test_demo_pool_live_view_on_a_terminal() -> None:
    code, out = run_on_a_tty([*WSCLIENT, "demo", "--pool", "--duration", "8", "--streams", "50"])
    assert code == 0, out
    assert "wsclient demo --pool:" in out and "╭" in out
    for column in ("shard", "state", "streams", "connects", "rotations", "msgs/s"):
        assert column in out
    assert "duplicates dropped" in out and "venue violations 0" in out and "events" in out
    assert POOL_OK.search(out.replace("\r", "")), out


# ------------------------------------------------------------------------------------------------- listen


async def test_listen_prints_the_subscribed_frames_and_stops_after_count(feed: FeedServer) -> None:
    proc = await spawn("listen", feed.url, "--subscribe", TRADES, "--count", "4")
    code, out, err = await finish(proc)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 4
    stamps, frames = zip(*(line.split("  ", 1) for line in lines), strict=True)
    assert all(re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3}", s) for s in stamps)
    ack, *trades = (json.loads(f) for f in frames)
    assert (ack["type"], ack["channel"], ack["symbol"]) == ("ack", "trades", "BTC-USD")
    seqs = [t["seq"] for t in trades]
    assert all(t["type"] == "trade" for t in trades) and seqs == list(range(seqs[0], seqs[0] + 3))
    assert [json.loads(f) for _, f in feed.received] == [json.loads(TRADES)]
    assert "connected to " + feed.url in err


async def test_listen_json_output(feed: FeedServer) -> None:
    ticker = '{"op": "subscribe", "channel": "ticker", "symbol": "ETH-USD"}'
    proc = await spawn(
        "listen", feed.url, "--subscribe", TRADES, "--subscribe", ticker, "--count", "6", "--output", "json"
    )
    code, out, err = await finish(proc)
    assert code == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 6
    assert all(isinstance(r["ts"], float) and isinstance(r["frame"], dict) for r in records)
    acks = [r["frame"] for r in records if r["frame"]["type"] == "ack"]
    assert [(a["channel"], a["symbol"]) for a in acks] == [("trades", "BTC-USD"), ("ticker", "ETH-USD")]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
async def test_listen_closes_with_a_close_frame_on_a_signal(server: TestServer, sig: signal.Signals) -> None:
    proc = await spawn("listen", server.url, "--subscribe", '{"op": "hello"}')
    try:
        assert proc.stdout is not None
        echoed = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode()
        assert echoed.endswith('  {"op":"hello"}\n')  # the echo server's answer
        assert server.received == ['{"op":"hello"}']
        proc.send_signal(sig)
        code, out, err = await finish(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    await server.wait_until(lambda: server.current == 0)
    assert code == 0, err
    assert server.connections[0].close_code == 1000
    assert out == ""  # nothing more came
    assert "Traceback" not in err


async def test_listen_reconnects_and_replays_the_subscription(feed: FeedServer) -> None:
    proc = await spawn(
        "listen", feed.url, "--subscribe", TRADES, "--ping-interval", "0.2", "--ping-timeout", "1"
    )
    try:
        await feed.wait_for_subscriptions("anonymous", 1, timeout=15)
        await feed.close_all(1012, "restart")
        await feed.wait_for_connections(2)
        await feed.wait_for_subscriptions("anonymous", 1)
        proc.send_signal(signal.SIGINT)
        code, _, err = await finish(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == 0, err
    assert "code 1012" in err or "1012" in err
    assert "reconnected to" in err


async def test_listen_message_heartbeat_sends_application_pings(feed: FeedServer) -> None:
    proc = await spawn(
        "listen", feed.url, "--heartbeat-mode", "message", "--ping-interval", "0.05", "--ping-timeout", "1"
    )
    try:
        await feed.wait_received(lambda _key, frame: frame == '{"op":"ping"}', timeout=15)
        await feed.wait_until(lambda: feed.responses_sent() >= 3)  # pongs answered, then consumed
        proc.send_signal(signal.SIGINT)
        code, out, err = await finish(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == 0, err
    assert '"pong"' not in out  # recognised as heartbeat replies, not printed as frames
    assert "link declared dead" not in err


async def test_listen_fatal_close_code_exits_3_with_one_line(feed: FeedServer) -> None:
    proc = await spawn("listen", feed.url, "--subscribe", TRADES, "--heartbeat-mode", "off")
    try:
        await feed.wait_for_subscriptions("anonymous", 1, timeout=15)
        await feed.close_all(1008, "policy violation")
        code, _, err = await finish(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == 3
    assert err.splitlines()[-1] == (
        f"wsclient: error: connection to {feed.url} lost: "
        "connection closed with code 1008 (policy violation) (fatal, not retried)"
    )
    assert "Traceback" not in err


def test_listen_gives_up_on_a_refused_port_with_one_line() -> None:
    port = free_port()
    result = run("listen", f"ws://127.0.0.1:{port}/", "--max-retries", "2", "--max-delay", "0.05")
    assert result.returncode == 3
    last = result.stderr.splitlines()[-1]
    url = f"ws://127.0.0.1:{port}/"
    assert last == f"wsclient: error: cannot connect to {url}: connection refused (gave up after 2 attempts)"
    assert "Traceback" not in result.stderr and result.stdout == ""


async def test_listen_rejected_with_401_exits_4(feed: FeedServer) -> None:
    feed.reject(401)
    proc = await spawn("listen", feed.url, "--header", "Authorization: Bearer s3cret")
    code, out, err = await finish(proc)
    assert code == 4
    assert err.splitlines() == [
        f"wsclient: error: {feed.url}: the server rejected the connection with HTTP 401"
    ]
    assert "s3cret" not in err and out == ""


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["listen"], "the following arguments are required: URL"),
        (["listen", "http://example.com/"], "url scheme must be ws or wss"),
        (["listen", "ws://x/", "--subscribe", "{nope"], "argument --subscribe: invalid JSON"),
        (["listen", "ws://x/", "--header", "no colon"], "argument --header: expected 'Name: value'"),
        (["listen", "ws://x/", "--ping-interval", "0"], "argument --ping-interval: must be a positive"),
        (["listen", "ws://x/", "--ping-interval", "30", "--idle-timeout", "20"], "must be below"),
        (["listen", "ws://x/", "--output", "xml"], "argument --output: invalid choice"),
        (["demo", "--duration", "1"], "--duration must be at least 4 seconds"),
        (["demo", "--pool", "--duration", "5"], "--duration must be at least 8 seconds"),
        (["demo", "--streams", "10"], "--streams needs --pool"),
        (["demo", "--pool", "--symbols", "BTC-USD"], "--symbols is for the feed scene"),
        (["demo", "--pool", "--streams", "0"], "argument --streams: must be between 1 and 1000"),
        (["demo", "--pool", "--streams", "many"], "argument --streams: expected a whole number"),
        (["serve", "--idle-cutoff", "5"], "--idle-cutoff needs --proxy-port"),
        (["serve", "--port", "70000"], "must be a TCP port"),
        (["nonsense"], "invalid choice"),
        ([], "the following arguments are required: COMMAND"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    try:
        code = main(args)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code  # type: ignore[assignment]
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert err.startswith("wsclient") and ": error: " in err and message in err


def test_usage_error_in_a_process_has_no_traceback() -> None:
    result = run("listen", "ws://x/", "--subscribe", "{nope")
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1 and "Traceback" not in result.stderr


def test_help_documents_the_exit_codes() -> None:
    result = run("--help")
    assert result.returncode == 0
    for code, text in EXIT_CODES.items():
        assert f"{code:<4} {text}" in result.stdout
    for command in ("demo", "listen", "serve"):
        assert command in result.stdout


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "wsclient"
    assert script.exists()
    result = subprocess.run(
        [str(script), "--version"], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0 and result.stdout.startswith("wsclient ")


# ------------------------------------------------------------------------------------------------- serve


async def test_serve_runs_the_feed_and_proxy_until_sigterm() -> None:
    from wsclient import Client

    proc = await spawn("serve", "--port", "0", "--proxy-port", "0", "--idle-cutoff", "5", "--rate", "100")
    try:
        assert proc.stdout is not None
        feed_line = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode()
        proxy_line = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode()
        feed_url = re.fullmatch(r"feed\s+(ws://127\.0\.0\.1:\d+/stream)\n", feed_line)
        proxy_url = re.fullmatch(
            r"proxy\s+(ws://127\.0\.0\.1:\d+/stream) \(closes links idle for 5s\)\n", proxy_line
        )
        assert feed_url and proxy_url, (feed_line, proxy_line)
        frames: list[str | bytes] = []
        got = asyncio.Event()
        for url in (feed_url.group(1), proxy_url.group(1)):
            client = Client(url)
            client.subscribe(json.loads(TRADES))
            client.on_message(frames.append)
            client.on_message(lambda f: got.set() if '"type":"trade"' in str(f) else None)
            async with client:
                await asyncio.wait_for(got.wait(), 10)
            got.clear()
        proc.send_signal(signal.SIGTERM)
        code, _, err = await finish(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == 0, err
    assert any('"type":"trade"' in str(f) for f in frames)


def test_serve_on_a_busy_port_is_one_line_and_exit_1() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = run("serve", "--port", str(port))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"wsclient: error: cannot listen on 127.0.0.1:{port}: address already in use"
    ]
