"""``wsclient feed`` and ``wsclient tail``: a real VenueServer and a real nats-server in the test
process, the command as a subprocess, JetStream read back with nats-py."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from wsclient.cli import EXIT_USAGE, main
from wsclient.testing.nats import NatsServer, find_nats_server
from wsclient.testing.venue import VenueServer

from .test_cli import run_on_a_tty

nats = pytest.importorskip("nats")
pytestmark = pytest.mark.skipif(find_nats_server() is None, reason="no nats-server binary")

WSCLIENT = [sys.executable, "-m", "wsclient"]
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "feed.toml"
STREAMS = ["btc@trade", "eth@trade", "sol@trade"]

TYPED = """
[venue]
url = "{url}"
discriminator = "e"
streams = {streams}
subscribe = {{ method = "SUBSCRIBE", params = "{{streams}}", id = "{{id}}" }}
unsubscribe = '{{"method": "UNSUBSCRIBE", "params": "{{streams}}", "id": "{{id}}"}}'

[messages]
model = "wsclient.testing.venue:VenueTrade"
dedup_key = ["s", "t"]

[sink]
servers = "{nats}"
subject = "md.trades.{{s}}"
id = "{{s}}:{{t}}"
stream = {{ name = "MD", subjects = ["md.>"], duplicate_window = 60, storage = "memory" }}
"""

RAW = """
[venue]
url = "{url}"
streams = {streams}
subscribe = {{ method = "SUBSCRIBE", params = "{{streams}}", id = "{{id}}" }}

[messages]
raw = true

[sink]
servers = ["{nats}"]
subject = "raw.{{s}}"
id = "{{s}}:{{t}}"
stream = {{ name = "RAW", subjects = ["raw.>"], storage = "memory" }}
"""


@pytest.fixture
async def bus() -> AsyncIterator[NatsServer]:
    async with NatsServer() as server:
        yield server


@pytest.fixture
async def venue() -> AsyncIterator[VenueServer]:
    async with VenueServer(rate=100) as server:
        yield server


def write(tmp_path: Path, text: str, **values: Any) -> Path:
    path = tmp_path / "feed.toml"
    path.write_text(text.format(streams=json.dumps(STREAMS), **values))
    return path


async def spawn(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *WSCLIENT, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )


async def finish(proc: asyncio.subprocess.Process, timeout: float = 20) -> tuple[int, str, str]:
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def figure(name: str, text: str) -> int:
    match = re.search(rf"^\s+{name}:\s+(\d+)", text, re.MULTILINE)
    assert match, (name, text)
    return int(match.group(1))


async def stored(url: str, stream: str) -> list[tuple[int, str, str, bytes]]:
    """Every message of ``stream``: (sequence, subject, Nats-Msg-Id, payload)."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        state = (await js.stream_info(stream)).state
        out = []
        for seq in range(state.first_seq, state.last_seq + 1):
            msg = await js.get_msg(stream, seq)
            out.append((seq, msg.subject, (msg.headers or {}).get("Nats-Msg-Id", ""), msg.data))
        return out
    finally:
        await nc.close()


def check_exactly_once(messages: list[tuple[int, str, str, bytes]], prefix: str) -> dict[str, int]:
    """Per subject: trade ids 1, 2, 3, ... each once and in order; the id header matches."""
    ids: dict[str, list[int]] = defaultdict(list)
    for _, subject, msg_id, data in messages:
        trade = json.loads(data)
        assert subject == f"{prefix}.{trade['s']}"
        assert msg_id == f"{trade['s']}:{trade['t']}"
        ids[trade["s"]].append(trade["t"])
    assert sorted(ids) == sorted(STREAMS)
    for stream, seen in ids.items():
        assert seen == list(range(1, len(seen) + 1)), stream
    return {s: len(v) for s, v in ids.items()}


async def test_typed_feed_stores_every_trade_once_in_order_and_tail_reads_it(
    tmp_path: Path, bus: NatsServer, venue: VenueServer
) -> None:
    config = write(tmp_path, TYPED, url=venue.url, nats=bus.url)
    code, out, err = await finish(await spawn("feed", str(config), "--duration", "1.5", "--plain"))
    assert code == 0, (out, err)
    assert "Traceback" not in err
    assert "shard 0 opens with 3 streams" in out
    assert "received = stored + duplicates + abandoned: OK" in out
    messages = await stored(bus.url, "MD")
    counts = check_exactly_once(messages, "md.trades")
    assert figure("stored", out) == figure("messages received", out) == len(messages)
    assert figure("abandoned", out) == 0 and figure("not published", out) == 0
    assert min(counts.values()) > 20

    # tail: what feed wrote, one line each, from the first message stored of that subject.
    btc = [m for m in messages if m[1] == "md.trades.btc@trade"]
    proc = await spawn("tail", "md.trades.btc@trade", "--nats", bus.url, "--all", "--count", str(len(btc)))
    code, out, err = await finish(proc)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == len(btc)
    for line, (seq, subject, msg_id, data) in zip(lines, btc, strict=True):
        assert line.split()[:3] == [str(seq), subject, msg_id]
        assert data.decode()[:40] in line
    # --last: only the last ones; --raw: the payloads as stored.
    code, out, _ = await finish(
        await spawn("tail", "md.>", "--nats", bus.url, "--last", "3", "--count", "3", "--raw")
    )
    assert code == 0
    assert [json.loads(line) for line in out.splitlines()] == [json.loads(m[3]) for m in messages[-3:]]


async def test_raw_pass_through_counts_frames_the_templates_do_not_fit(
    tmp_path: Path, bus: NatsServer, venue: VenueServer
) -> None:
    config = write(tmp_path, RAW, url=venue.url, nats=bus.url)
    code, out, err = await finish(await spawn("feed", str(config), "--duration", "1", "--plain"))
    assert code == 0, (out, err)
    messages = await stored(bus.url, "RAW")
    check_exactly_once(messages, "raw")
    # The subscriptions' acknowledgements ({"result": null, "id": 1}, one per stream with the default
    # batch of 1) have no "s": errors counted and shown, and the feed goes on.
    assert figure("not published", out) == len(STREAMS)
    assert "message(s) not published: FieldMissing: subject 'raw.{s}': the message has no 's'" in out
    assert figure("stored", out) == len(messages)
    assert figure("messages received", out) == len(messages)  # handed to the sink, not failed


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ('dedup_key = ["s", "t"]', 'dedup_key = ["s", "seq"]'),
            "messages: dedup_key: seq not field(s) of VenueTrade",
        ),
        (('id = "{s}:{t}"', 'id = "trade"'), "sink.id: id 'trade' names no field"),
        (("md.trades.{s}", "md.trades.{symbol}"), "sink.subject 'md.trades.{symbol}': symbol not field(s)"),
        (
            ('discriminator = "e"', 'discriminator = "e"\nprofile = "kraken"'),
            "venue.profile: no venue profile",
        ),
        (("raw = true", 'raw = true\nmodel = "x:Y"'), "messages: choose one: model"),
        (
            ("raw = true", "raw = true\n[fleet]"),
            "[fleet] moves streams between feeders: give venue.unsubscribe",
        ),
        (("[sink]", "[fleet]\nname = 'md.feeders'\n[sink]"), "fleet.name: String should match pattern"),
        (("ws://", "http://"), "venue.url: url scheme must be ws or wss"),
        (("[sink]", "[sink]\nmax_pending = 0"), "sink.max_pending: Input should be greater than 0"),
    ],
)
def test_a_bad_config_fails_at_once_naming_the_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: tuple[str, str], message: str
) -> None:
    old, new = change
    config = write(
        tmp_path, RAW if old == "raw = true" else TYPED, url="ws://127.0.0.1:9/ws", nats="nats://127.0.0.1:9"
    )
    text = config.read_text()
    assert old in text
    config.write_text(text.replace(old, new))
    assert main(["feed", str(config), "--duration", "1"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith(f"wsclient: error: {config}: "), err
    assert message in err, err
    assert err.count("\n") == 1


async def test_sigint_ends_feed_cleanly_with_its_summary(
    tmp_path: Path, bus: NatsServer, venue: VenueServer
) -> None:
    config = write(tmp_path, TYPED, url=venue.url, nats=bus.url)
    watcher = await nats.connect(bus.url)
    flowing = asyncio.get_running_loop().create_future()
    subjects: set[str] = set()

    async def seen(msg: Any) -> None:
        subjects.add(msg.subject)
        if len(subjects) == len(STREAMS) and not flowing.done():
            flowing.set_result(None)

    proc = await spawn("feed", str(config), "--plain")
    try:
        await watcher.subscribe("md.>", cb=seen)
        await asyncio.wait_for(flowing, 10)  # trades of every stream flow into the bus
        proc.send_signal(signal.SIGINT)
        code, out, err = await finish(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await watcher.close()
    assert code == 0, (out, err)
    assert "interrupted: closing the pool, then waiting for the bus" in out
    assert "(wsclient feed, interrupted)" in out
    assert "received = stored + duplicates + abandoned: OK" in out
    messages = await stored(bus.url, "MD")
    check_exactly_once(messages, "md.trades")
    assert figure("stored", out) == len(messages)


async def test_the_example_config_runs_with_the_live_view(
    bus: NatsServer, venue: VenueServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WSCLIENT_VENUE_URL", venue.url)
    monkeypatch.setenv("NATS_URL", bus.url)
    code, out = await asyncio.to_thread(
        run_on_a_tty, [*WSCLIENT, "feed", str(EXAMPLE), "--duration", "1.5"], 30
    )
    assert code == 0, out
    assert "wsclient feed:" in out and "shard 0" in out and "stored" in out and "╭" in out
    assert "received = stored + duplicates + abandoned: OK" in out
    streams = {m[1] for m in await stored(bus.url, "MD")}
    assert streams == {"md.trades.btcusdt@trade", "md.trades.ethusdt@trade", "md.trades.solusdt@trade"}


FLEET = """
[fleet]
name = "feeders"
member = "{member}"
redundancy = 1
lease = 1.0
"""


async def test_two_feeders_in_a_fleet_share_the_streams(
    tmp_path: Path, bus: NatsServer, venue: VenueServer
) -> None:
    configs = []
    for member in ("a", "b"):
        (tmp_path / member).mkdir()
        path = write(
            tmp_path / member,
            TYPED,
            url=venue.url,
            nats=bus.url,
        )
        path.write_text(path.read_text() + FLEET.format(member=member))
        configs.append(path)
    procs = [
        await spawn("feed", str(path), "--duration", "4", "--plain", "--every", "0.5") for path in configs
    ]
    try:
        results = [await finish(proc) for proc in procs]
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    for member, (code, out, err) in zip("ab", results, strict=True):
        assert code == 0, (out, err)
        assert "fleet: members a, b;" in out, out
        # At the end the other may have left already: its lease is gone at the next renewal.
        assert re.search(rf"fleet: +[12] members \([ab, ]+\); {member} \(me\) carried \d streams", out), out
    # Together, every trade once: a stream handed over is carried by both for the handoff, and the
    # bus keeps one copy of each trade id.
    ids: dict[str, list[int]] = defaultdict(list)
    for _, _, _, data in await stored(bus.url, "MD"):
        trade = json.loads(data)
        ids[trade["s"]].append(trade["t"])
    assert sorted(ids) == sorted(STREAMS)
    for stream, seen in ids.items():
        assert sorted(seen) == list(range(1, len(seen) + 1)), stream
    for _, out, _ in results:
        assert "received = stored + duplicates + abandoned: OK" in out
    # What both stored covers the stream; the copies of the handoff are counted as duplicates once
    # the sink reads JetStream's acknowledgement right (see the test below).
    assert sum(figure("stored", out) for _, out, _ in results) >= sum(len(v) for v in ids.values())


async def test_a_copy_is_counted_as_a_duplicate_not_stored(bus: NatsServer) -> None:
    from wsclient.sinks.nats import JetStreamSpec, NatsJetStreamSink

    sink = NatsJetStreamSink(
        bus.url,
        subject=lambda m: "dup.x",
        msg_id=lambda m: "same",
        stream=JetStreamSpec(name="DUP", subjects=("dup.>",), storage="memory"),
    )
    async with sink:
        sink(b"one")
        sink(b"two")  # the same id: JetStream keeps the first
        assert await sink.flush(5)
    assert (sink.stats.stored, sink.stats.duplicates) == (1, 1)


REDIS = """
[venue]
url = "{url}"
discriminator = "e"
streams = {streams}
subscribe = {{ method = "SUBSCRIBE", params = "{{streams}}", id = "{{id}}" }}

[messages]
model = "wsclient.testing.venue:VenueTrade"
dedup_key = ["s", "t"]

[sink]
kind = "redis"
servers = "{redis}"
subject = "md:trades:{{s}}"
id = "{{s}}:{{t}}"
"""


async def test_a_redis_feed_appends_every_trade_once_in_order(tmp_path: Path, venue: VenueServer) -> None:
    from tests.peers import require_binary
    from wsclient.testing.redis import RedisServer

    require_binary("redis-server", why="make peers installs it (apt-get install redis-server)")
    import redis.asyncio as aioredis

    async with RedisServer() as server:
        config = write(tmp_path, REDIS, url=venue.url, redis=server.url)
        code, out, err = await finish(await spawn("feed", str(config), "--duration", "1.5", "--plain"))
        assert code == 0, (out, err)
        assert "received = stored + duplicates + abandoned: OK" in out
        r = aioredis.from_url(server.url)
        try:
            total = 0
            for stream in STREAMS:
                entries = await r.xrange(f"md:trades:{stream}")
                ids = [json.loads(fields[b"data"])["t"] for _, fields in entries]
                assert ids == list(range(1, len(ids) + 1)), stream
                assert [fields[b"id"].decode() for _, fields in entries] == [f"{stream}:{t}" for t in ids]
                total += len(ids)
        finally:
            await r.aclose()
        assert figure("stored", out) == total > 60
