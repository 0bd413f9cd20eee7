"""``wsclient record`` and ``wsclient serve --replay``, as processes: record, serve, listen."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from wsclient.cli import main
from wsclient.recording import load
from wsclient.testing import FeedServer

WSCLIENT = [sys.executable, "-m", "wsclient"]
TRADES = '{"op": "subscribe", "channel": "trades", "symbol": "BTC-USD"}'


async def spawn(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *WSCLIENT, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )


async def finish(proc: asyncio.subprocess.Process, timeout: float = 30) -> tuple[int, str, str]:
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def feed() -> AsyncIterator[FeedServer]:
    async with FeedServer(rate=100) as server:
        yield server


async def test_record_then_serve_replay_then_listen(feed: FeedServer, tmp_path: Path) -> None:
    out = tmp_path / "feed.jsonl.gz"
    recorder = await spawn("record", feed.url, "--subscribe", TRADES, "--out", str(out), "--count", "60")
    try:
        await feed.wait_for_subscriptions("anonymous", 1, timeout=20)
        await feed.wait_until(lambda: feed.messages_sent() >= 20)
        await feed.close_all(1012, "service restart")  # the disconnect in the middle
        code, stdout, stderr = await finish(recorder)
    finally:
        if recorder.returncode is None:
            recorder.kill()
            await recorder.wait()
    assert code == 0, stderr
    assert re.fullmatch(rf"recorded 60 frames, 2 connections, 1 disconnect in [\d.]+s to {out}\n", stdout), (
        stdout
    )
    assert "reconnected to" in stderr and "[code 1012]" in stderr
    recording = load(out)
    assert recording.complete and len(recording.frames) == 60 and recording.url == feed.url
    first, _ = recording.segments
    assert first.end is not None and (first.end.code, first.end.reason) == (1012, "service restart")

    server = await spawn("serve", "--replay", str(out), "--speed", "max", "--port", "0")
    try:
        assert server.stdout is not None
        line = (await asyncio.wait_for(server.stdout.readline(), 20)).decode()
        match = re.fullmatch(r"replay (ws://127\.0\.0\.1:\d+/)\n", line)
        assert match, line
        about = (await asyncio.wait_for(server.stdout.readline(), 20)).decode()
        assert about.startswith(f"60 frames recorded from {feed.url} at ")
        assert "(2 connections, 1 disconnect reproduced; speed max); Ctrl-C stops" in about
        listener = await spawn(
            "listen", match.group(1), "--subscribe", TRADES, "--count", "60", "--output", "json"
        )
        code, stdout, stderr = await finish(listener)
        assert code == 0, stderr
        frames = [json.loads(line)["frame"] for line in stdout.splitlines()]
        assert frames == [json.loads(f) for f in recording.frames if isinstance(f, str)]
        assert "1012" in stderr and "service restart" in stderr  # the recorded disconnect, replayed
        server.send_signal(signal.SIGINT)
        code, _, stderr = await finish(server)
    finally:
        if server.returncode is None:
            server.kill()
            await server.wait()
    assert code == 0, stderr
    assert "Traceback" not in stderr


async def test_record_stops_cleanly_on_ctrl_c(feed: FeedServer, tmp_path: Path) -> None:
    out = tmp_path / "until-ctrl-c.jsonl"
    recorder = await spawn("record", feed.url, "--subscribe", TRADES, "--out", str(out))
    try:
        await feed.wait_for_subscriptions("anonymous", 1, timeout=20)
        await feed.wait_until(lambda: feed.messages_sent() >= 10)
        recorder.send_signal(signal.SIGINT)
        code, stdout, stderr = await finish(recorder)
    finally:
        if recorder.returncode is None:
            recorder.kill()
            await recorder.wait()
    assert code == 0, stderr
    await feed.wait_until(lambda: feed.total_connections == 1 and not feed.subscriptions("anonymous"))
    recording = load(out)
    assert recording.complete and recording.entries[-1].kind == "end"
    assert len(recording.frames) >= 10 and stdout.startswith(f"recorded {len(recording.frames)} frames")


async def test_record_for_a_duration(feed: FeedServer, tmp_path: Path) -> None:
    out = tmp_path / "short.jsonl.gz"
    code, stdout, stderr = await finish(
        await spawn("record", feed.url, "--subscribe", TRADES, "--out", str(out), "--duration", "0.5")
    )
    assert code == 0, stderr
    recording = load(out)
    assert recording.complete and recording.frames
    assert recording.entries[-1].t >= 0.5  # ends at the duration, not before
    assert stdout.startswith(f"recorded {len(recording.frames)} frames, 1 connection, 0 disconnects in ")


async def test_record_gives_up_like_listen_and_keeps_the_file(feed: FeedServer, tmp_path: Path) -> None:
    out = tmp_path / "fatal.jsonl"
    recorder = await spawn("record", feed.url, "--subscribe", TRADES, "--out", str(out))
    try:
        await feed.wait_for_subscriptions("anonymous", 1, timeout=20)
        await feed.close_all(1008, "policy violation")
        code, stdout, stderr = await finish(recorder)
    finally:
        if recorder.returncode is None:
            recorder.kill()
            await recorder.wait()
    assert code == 3
    assert stderr.splitlines()[-1] == (
        f"wsclient: error: connection to {feed.url} lost: "
        "connection closed with code 1008 (policy violation) (fatal, not retried)"
    )
    recording = load(out)
    assert recording.complete and recording.segments[0].end is not None
    assert recording.segments[0].end.code == 1008
    n = len(recording.frames)
    assert stdout.startswith(f"recorded {n} frame{'s' if n != 1 else ''}, 1 connection, 1 disconnect in ")


def test_record_refuses_to_overwrite_without_force(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "kept.jsonl"
    out.write_text("precious\n")
    assert main(["record", "ws://127.0.0.1:9/", "--out", str(out)]) == 2
    assert capsys.readouterr().err == (
        f"wsclient: error: {out} exists: choose another --out, or pass --force to overwrite it\n"
    )
    assert out.read_text() == "precious\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["record", "ws://x/"], "the following arguments are required: --out"),
        (["record", "http://x/", "--out", "{tmp}/a.jsonl"], "url scheme must be ws or wss"),
        (["record", "ws://x/", "--out", "a", "--count", "3", "--duration", "1"], "not allowed with argument"),
        (["record", "ws://x/", "--out", "a", "--duration", "0"], "argument --duration: must be a positive"),
        (["serve", "--speed", "10"], "--speed needs --replay"),
        (["serve", "--start", "message"], "--start needs --replay"),
        (["serve", "--no-disconnects"], "--no-disconnects needs --replay"),
        (["serve", "--replay", "x", "--rate", "5"], "--rate is for the fake feed"),
        (["serve", "--replay", "x", "--speed", "0"], "argument --speed: must be a positive factor"),
        (["serve", "--replay", "x", "--speed", "fast"], "argument --speed: expected a factor"),
        (["serve", "--replay", "{tmp}/missing.jsonl"], "--replay {tmp}/missing.jsonl: no such file"),
        (["serve", "--replay", "{tmp}/bad.jsonl"], "not a wsclient recording"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "bad.jsonl").write_text('{"hello": "world"}\n')
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    try:
        code = main(args)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code  # type: ignore[assignment]
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert (
        err.startswith("wsclient") and ": error: " in err and message.replace("{tmp}", str(tmp_path)) in err
    )
    assert not (tmp_path / "a.jsonl").exists()
