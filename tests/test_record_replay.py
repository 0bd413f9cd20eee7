"""Record a real session, replay it to a bot: the recording format, ReplayServer, both backends."""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from wsclient import (
    Client,
    ClientConfig,
    ClientEvent,
    ConnectFailed,
    ConnectionState,
    Decision,
    Disconnected,
    Failure,
    GaveUpError,
    Reconnect,
)
from wsclient.recording import Recording, RecordingError, RecordingWriter, load
from wsclient.testing import FeedServer, ReplayServer

TRADES = {"op": "subscribe", "channel": "trades", "symbol": "BTC-USD"}
PER_CONNECTION = 80  # frames recorded on each side of the disconnect


async def record_a_session(path: Path) -> None:
    """A client on a real FeedServer, recorded: trades, a 1012 restart in the middle, more trades."""
    async with FeedServer(rate=100) as feed:
        config = ClientConfig(reconnect=Reconnect(initial_delay=0.01, max_delay=0.05))
        client = Client(feed.url, config=config)
        client.subscribe(TRADES)
        with RecordingWriter(path, feed.url) as writer:
            writer.attach(client)
            async with client:
                await client.wait_open(timeout=5)
                await feed.wait_until(lambda: writer.frames >= PER_CONNECTION, timeout=10)
                await feed.close_all(1012, "service restart")
                await feed.wait_for_connections(2)
                await feed.wait_until(lambda: writer.frames >= 2 * PER_CONNECTION, timeout=10)


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("recording") / "session.jsonl.gz"
    asyncio.run(record_a_session(path))
    return path


@dataclass
class Run:
    """What a bot saw: every frame in order, and after how many frames each connection dropped."""

    frames: list[str | bytes] = field(default_factory=list)
    drops: list[tuple[int, str]] = field(default_factory=list)
    seconds: float = 0.0


async def bot(url: str, expected: int, **reconnect: object) -> Run:
    """A test bot on a wsclient Client: subscribes, consumes until it has ``expected`` frames."""
    run = Run()
    done = asyncio.Event()
    options: dict[str, object] = {"initial_delay": 0.01, "max_delay": 0.02, "jitter": 0, **reconnect}
    client = Client(url, config=ClientConfig(reconnect=Reconnect(**options)))  # type: ignore[arg-type]
    client.subscribe(TRADES)

    def on_frame(frame: str | bytes) -> None:
        run.frames.append(frame)
        if len(run.frames) >= expected:
            done.set()

    def on_event(event: ClientEvent) -> None:
        # At "max" the replay can outrun the client's opening (its subscription replay): a recorded
        # close that lands before the client is OPEN is a failed attempt, not a lost connection. The
        # drop point is the same either way: after the same frame, for the same reason.
        if isinstance(event, Disconnected | ConnectFailed):
            run.drops.append((len(run.frames), event.reason))

    client.on_message(on_frame)
    client.on_event(on_event)
    started = time.monotonic()
    async with client:
        async with asyncio.timeout(20):
            await done.wait()
        run.seconds = time.monotonic() - started
    return run


def expected_run(recording: Recording) -> Run:
    drops, count = [], 0
    for segment in recording.segments:
        count += len(segment.frames)
        if segment.end is not None:
            drops.append((count, segment.end.detail))
    return Run(frames=recording.frames, drops=drops)


def test_the_recording_holds_the_session(session: Path) -> None:
    recording = load(session)
    assert recording.complete and recording.url.startswith("ws://127.0.0.1:")
    kinds = [e.kind for e in recording.entries]
    assert kinds.count("connected") == 2 and kinds.count("disconnected") == 1 and kinds[-1] == "end"
    first, second = recording.segments
    assert first.end is not None and (first.end.code, first.end.reason) == (1012, "service restart")
    assert second.end is None
    assert len(first.frames) >= PER_CONNECTION and len(recording.frames) >= 2 * PER_CONNECTION
    for segment in (first, second):
        ack, *trades = (json.loads(e.data) for e in segment.frames if isinstance(e.data, str))
        assert ack["type"] == "ack" and len(trades) >= PER_CONNECTION // 2
        seqs = [t["seq"] for t in trades]
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # one stream, in order, no gap
    times = [e.t for e in recording.entries]
    assert times == sorted(times) and recording.duration > 1.0
    walls = [e.wall for e in recording.entries]
    assert walls == sorted(walls) and abs(walls[0] - times[0] - json_started(session)) < 1.0


def json_started(path: Path) -> float:
    from datetime import datetime

    with gzip.open(path, "rt") as file:
        header = json.loads(file.readline())
    assert header["format"] == "wsclient-recording" and header["version"] == 1
    return datetime.fromisoformat(header["started"]).timestamp()


@pytest.mark.usefixtures("backend")
@pytest.mark.parametrize("speed", ["max", 10])
async def test_a_bot_sees_the_replay_identically_twice(session: Path, speed: float | str) -> None:
    recording = load(session)
    expected = expected_run(recording)
    async with ReplayServer(recording, speed=speed) as server:  # type: ignore[arg-type]
        first = await bot(server.url, len(expected.frames))
        await server.wait_played()
        server.rewind()
        second = await bot(server.url, len(expected.frames))
        assert server.connections == 4 and server.disconnects_played == 2
    for run in (first, second):
        assert run.frames == expected.frames  # same messages, same order
        assert run.drops == expected.drops  # same disconnect point
    ((at, why),) = expected.drops
    assert at >= PER_CONNECTION and why == "connection closed with code 1012 (service restart)"
    # Ordering is what is asserted; of timing, only what cannot flake: a replay at speed 10 never
    # sends a frame before its scaled offset, and "max" stays far below the recorded pace.
    floor = sum(s.frames[-1].t - s.start for s in recording.segments) / 10
    if speed == 10:
        assert first.seconds >= floor and second.seconds >= floor
    else:
        assert first.seconds < recording.duration and second.seconds < recording.duration


@pytest.mark.usefixtures("backend")
async def test_without_disconnects_every_client_gets_every_frame(session: Path) -> None:
    recording = load(session)
    async with ReplayServer(recording, speed="max", disconnects=False) as server:
        runs = await asyncio.gather(*(bot(server.url, len(recording.frames)) for _ in range(3)))
        await server.wait_played(3)
    assert all(run.frames == recording.frames and run.drops == [] for run in runs)
    assert server.connections == 3 and server.disconnects_played == 0


@pytest.mark.usefixtures("backend")
async def test_start_on_message_waits_for_the_client(session: Path) -> None:
    recording = load(session)
    async with ReplayServer(recording, speed="max", start="message") as server:
        client = Client(server.url)  # no subscription: it says nothing after connecting
        frames: list[str | bytes] = []
        got = asyncio.Event()
        client.on_message(lambda frame: (frames.append(frame), got.set()))
        async with client:
            await client.wait_open(timeout=5)
            await server.wait_until(lambda: server.waiting == 1)
            assert server.frames_sent == 0 and frames == []
            await client.send(TRADES)
            await asyncio.wait_for(got.wait(), 5)
            await server.wait_played(1)
        assert frames[0] == recording.frames[0]


async def test_the_recorded_ends_are_reproduced(tmp_path: Path, backend: str) -> None:
    """A dead link is replayed as a drop, binary frames as binary, a venue's code as that code."""
    path = tmp_path / "ends.jsonl"
    with RecordingWriter(path, "wss://venue.example/ws?token=s3cret") as writer:
        writer.connected(1)
        writer.frame(b"\x00\x01binary")
        writer.disconnected(1, None, "", "link declared dead: no pong for 10.000s")
        writer.connected(2)
        writer.frame("text")
        writer.disconnected(2, 4501, "banned", "connection closed with code 4501 (banned)")
    recording = load(path)
    assert "s3cret" not in path.read_text() and recording.url.startswith("wss://venue.example/ws?token=")

    def centrifuge(failure: Failure) -> Decision | None:
        code = failure.close_code
        return Decision.fatal("told not to reconnect") if code and 4500 <= code < 5000 else None

    async with ReplayServer(recording, speed="max") as server:
        events: list[ClientEvent] = []
        frames: list[str | bytes] = []
        config = ClientConfig(reconnect=Reconnect(initial_delay=0.01, max_delay=0.02, classify=centrifuge))
        client = Client(server.url, config=config)
        client.on_message(frames.append)
        client.on_event(events.append)
        async with client:
            with pytest.raises(GaveUpError, match="told not to reconnect"):
                async with asyncio.timeout(10):
                    await client.wait_closed()
            assert client.state is ConnectionState.FAILED
    assert frames == [b"\x00\x01binary", "text"]
    drops = [(e.code, e.will_retry) for e in events if isinstance(e, Disconnected)]
    assert drops == [(1006, True), (4501, False)]


@pytest.mark.usefixtures("backend")
async def test_at_end_close_and_a_played_session(tmp_path: Path) -> None:
    path = tmp_path / "short.jsonl.gz"
    with RecordingWriter(path, "ws://127.0.0.1:1/") as writer:
        writer.frame("only")
    async with ReplayServer(path, speed="max", at_end="close") as server:
        events: list[ClientEvent] = []
        client = Client(server.url, config=ClientConfig(reconnect=Reconnect(initial_delay=5.0)))
        client.on_event(events.append)
        async with client:
            await server.wait_played(1)
            await server.wait_until(lambda: server.open_connections == 0)
        assert [(e.code, e.reason) for e in events if isinstance(e, Disconnected)] == [
            (1000, "connection closed with code 1000 (end of recording)")
        ]
        assert server.sessions == 1 and server.frames_sent == 1


async def test_stop_ends_held_connections_and_frees_the_port(session: Path) -> None:
    server = ReplayServer(session, speed="max", disconnects=False)
    await server.start()
    try:
        run = await bot(server.url, len(load(session).frames))
        assert run.drops == []
        client = Client(server.url)
        async with client:
            await client.wait_open(timeout=5)
            await server.wait_played(2)
            await server.stop()
            await client.wait_state(lambda state: state is not ConnectionState.OPEN, timeout=5)
    finally:
        await server.stop()
    assert not server.running and server.open_connections == 0
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", server.port)


# ------------------------------------------------------------------------------------- socket-free


def test_frames_round_trip_text_and_binary_gzip_or_not(tmp_path: Path) -> None:
    frames: list[str | bytes] = ['{"a":1}', "line\nbreak é", b"\x00\xff" * 10, ""]
    for name in ("plain.jsonl", "packed.jsonl.gz"):
        with RecordingWriter(tmp_path / name, "ws://127.0.0.1:9/x") as writer:
            writer.connected(1)
            for frame in frames:
                writer.frame(frame)
        writer.frame("after the end")  # a frame read while the client closes: not recorded
        writer.disconnected(1, 1000)
        assert (writer.frames, writer.connections, writer.disconnects) == (4, 1, 0)
        recording = load(tmp_path / name)
        assert recording.frames == frames and recording.complete
        assert [e.kind for e in recording.entries] == ["connected", "text", "text", "binary", "text", "end"]
    assert (tmp_path / "packed.jsonl.gz").read_bytes()[:2] == b"\x1f\x8b"  # gzip magic
    assert (tmp_path / "plain.jsonl").read_text().startswith('{"format":"wsclient-recording"')


def test_a_recording_cut_short_reads_up_to_its_last_line(tmp_path: Path) -> None:
    path = tmp_path / "cut.jsonl.gz"
    writer = RecordingWriter(path, "ws://127.0.0.1:9/")
    for n in range(2000):
        writer.frame(f"frame {n}")
    writer.close()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a killed recorder: a gzip stream without its end
    recording = load(path)
    assert not recording.complete
    assert 0 < len(recording.frames) < 2000
    assert recording.frames == [f"frame {n}" for n in range(len(recording.frames))]
    plain = tmp_path / "cut.jsonl"
    plain.write_text(
        '{"format":"wsclient-recording","version":1}\n{"t":0,"wall":0,"kind":"text","data":"x"}\n{"t":'
    )
    assert load(plain).frames == ["x"] and not load(plain).complete


HEADER = '{"format":"wsclient-recording","version":1}\n'


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "empty file, not a wsclient recording"),
        ('{"hello": 1}\n', 'not a wsclient recording (its first line has no "format"'),
        ('{"format":"wsclient-recording","version":2}\n', "format version 2, this wsclient reads version 1"),
        ("not json\n", ":1: not a JSON line"),
        (HEADER + '{"t":0,"wall":0,"kind":"text"}\n', ":2: malformed entry (missing 'data')"),
        (HEADER + '{"t":0,"wall":0,"kind":"what"}\n', "unknown kind 'what'"),
        (HEADER + '{"t":0,"wall":0,"kind":"binary","data":"!!"}\n', ":2: malformed entry"),
        (HEADER + '{"wall":0,"kind":"text","data":""}\n', "missing 't'"),
    ],
)
def test_a_bad_file_is_refused_naming_the_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(RecordingError) as info:
        load(path)
    assert message in str(info.value) and str(path) in str(info.value)


def test_a_file_that_is_not_gzip_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "fake.jsonl.gz"
    path.write_text('{"format":"wsclient-recording","version":1}\n')
    with pytest.raises(RecordingError, match="cannot be read as a recording"):
        load(path)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"speed": 0}, "speed must be a positive factor"),
        ({"speed": "fast"}, "speed must be a positive factor"),
        ({"speed": float("inf")}, "speed must be a positive factor"),
        ({"speed": True}, "speed must be a positive factor"),
        ({"start": "subscribe"}, 'start must be "connect" or "message"'),
        ({"at_end": "loop"}, 'at_end must be "hold" or "close"'),
        ({"close_timeout": 0}, "close_timeout must be a positive"),
    ],
)
def test_bad_replay_options_are_refused_at_construction(
    tmp_path: Path, options: dict[str, object], message: str
) -> None:
    path = tmp_path / "r.jsonl"
    RecordingWriter(path, "ws://127.0.0.1:9/").close()
    with pytest.raises(ValueError, match=message):
        ReplayServer(path, **options)  # type: ignore[arg-type]


def test_an_existing_recording_is_kept_unless_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "keep.jsonl"
    RecordingWriter(path, "ws://127.0.0.1:9/").close()
    before = path.read_text()
    with pytest.raises(FileExistsError):
        RecordingWriter(path, "ws://127.0.0.1:9/other", overwrite=False)
    assert path.read_text() == before
