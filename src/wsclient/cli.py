"""The ``wsclient`` command line: ``demo``, ``listen``, ``record``, ``serve``, ``feed`` and ``tail``.

* ``wsclient demo`` runs wsclient's main job on this machine, with no network: an embedded fake feed
  (:class:`~wsclient.testing.FeedServer`) behind a fault-injecting proxy
  (:class:`~wsclient.testing.ChaosProxy`), a fault schedule (a proxy idle cut-off shorter than the
  feed's quiet periods, a server restart, a black hole, a 1012 close) and a :class:`~wsclient.Client`
  with typed models that rides through all of it, shown live, then accounted for message by message.
  ``wsclient demo --pool`` is the pool scene: a :class:`~wsclient.Pool` spreading many streams over
  the connections of an embedded :class:`~wsclient.testing.VenueServer` that enforces its limits
  (shards, rotations, duplicates dropped, a muted stream, a restart, streams removed and added back),
  then accounted for trade id by trade id.
* ``wsclient listen URL`` prints the frames of any WebSocket endpoint, reconnecting as a bot would.
* ``wsclient record URL --out FILE`` writes what ``listen`` would print, with arrival times and the
  connections' ends, to a recording (:mod:`wsclient.recording`).
* ``wsclient serve`` runs the fake feed (and optionally the proxy) for trying other clients;
  ``serve --replay FILE`` plays a recording instead (:class:`~wsclient.testing.ReplayServer`).
* ``wsclient feed CONFIG.toml`` runs a feeder from a configuration file (:mod:`wsclient.feeder`): a
  venue's streams through a :class:`~wsclient.Pool` into a message bus (NATS JetStream), exactly once,
  shown live, then accounted for (received = stored + duplicates + abandoned).
* ``wsclient tail SUBJECT --nats URL`` prints what a JetStream subject holds and receives, one line a
  message, for a person checking what flows.

Errors end with one line on stderr and an exit code (see :data:`EXIT_CODES`), never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import itertools
import json
import math
import os
import random
import shutil
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Generic, Literal, NoReturn, Protocol, TextIO, TypeVar

from pydantic import ValidationError

from . import __version__
from .client import Client, Connection
from .config import ClientConfig, Heartbeat, Reconnect, VenueLimits
from .errors import (
    ClientClosedError,
    ConfigError,
    ConnectionLostError,
    GaveUpError,
    HandshakeRejected,
    RequestTimeout,
)
from .events import (
    ClientEvent,
    Connected,
    ConnectFailed,
    Disconnected,
    HeartbeatMissed,
)
from .feeder import Feeder, FeedError, describe_config, load_feed_config
from .policy import describe
from .pool import Pool, PoolStats, ShardInfo, StreamStale
from .recording import RecordingError, RecordingWriter
from .routing import Message, SequenceGap
from .state import ConnectionState
from .testing.feed import CHANNELS, DEFAULT_SYMBOLS, FeedServer
from .testing.proxy import ChaosProxy
from .testing.replay import ReplayServer
from .testing.venue import VenueRules, VenueServer, VenueTrade

__all__ = ["EXIT_CODES", "main"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_CONNECT = 3
EXIT_REJECTED = 4
EXIT_ABANDONED = 5
EXIT_INTERRUPTED = 130

EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success (also after Ctrl-C or SIGTERM, once the connection is closed cleanly)",
    EXIT_ERROR: "another error (e.g. a port already in use; the demo's accounting did not add up)",
    EXIT_USAGE: "bad arguments or configuration",
    EXIT_CONNECT: "could not connect, or gave up reconnecting (retries exhausted, fatal close code)",
    EXIT_REJECTED: "the server rejected the handshake (HTTP 401, 403 or 404)",
    EXIT_ABANDONED: "feed: messages were abandoned (not acknowledged by the bus when the sink closed: "
    "maybe lost)",
    EXIT_INTERRUPTED: "interrupted a second time while closing (no clean close)",
}
"""Exit codes of the ``wsclient`` command, documented in ``wsclient --help``."""

_EPILOG = "exit codes:\n" + "\n".join(f"  {code:<4} {text}" for code, text in EXIT_CODES.items())


class CliError(Exception):
    """A failure to report as one line on stderr, with an exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line, no usage dump: the usage is one `--help` away.
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


# ---------------------------------------------------------------------------------------- arguments


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text!r}")
    return value


def _port(text: str) -> int:
    value = _count(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a TCP port (0-65535), got {text!r}")
    return value


def _json_message(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"invalid JSON ({exc}): {text!r}") from None


def _header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip() or any(c.isspace() for c in name.strip()):
        raise argparse.ArgumentTypeError(f"expected 'Name: value', got {text!r}")
    return name.strip(), value.strip()


def _stream_count(text: str) -> int:
    value = _count(text)
    if not 1 <= value <= _MAX_POOL_STREAMS:
        raise argparse.ArgumentTypeError(f"must be between 1 and {_MAX_POOL_STREAMS}, got {text!r}")
    return value


def _speed(text: str) -> float | Literal["max"]:
    if text == "max":
        return "max"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a factor such as 1 or 10, or max, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive factor (1: real time) or max, got {text!r}")
    return value


def _symbols(text: str) -> tuple[str, ...]:
    symbols = tuple(s.strip() for s in text.split(",") if s.strip())
    if not symbols:
        raise argparse.ArgumentTypeError("expected a comma-separated list such as BTC-USD,ETH-USD")
    return symbols


def _add_client_args(parser: argparse.ArgumentParser) -> None:
    """The connection's options, shared by ``listen`` and ``record``."""
    parser.add_argument(
        "--subscribe",
        type=_json_message,
        action="append",
        default=[],
        metavar="JSON",
        help="a message to send on every (re)connect, e.g. "
        '\'{"op": "subscribe", "channel": "trades", "symbol": "BTC-USD"}\' (repeatable)',
    )
    parser.add_argument(
        "--header",
        type=_header,
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="an HTTP header for the handshake (repeatable; values never appear in logs)",
    )
    parser.add_argument(
        "--ping-interval", type=_positive, default=15.0, metavar="S", help="seconds between pings (15)"
    )
    parser.add_argument(
        "--ping-timeout", type=_positive, default=10.0, metavar="S", help="seconds to wait for a pong (10)"
    )
    parser.add_argument(
        "--idle-timeout",
        type=_positive,
        default=None,
        metavar="S",
        help="the server's or proxy's idle cut-off; the ping interval must be below it",
    )
    parser.add_argument(
        "--receive-timeout",
        type=_positive,
        default=None,
        metavar="S",
        help="declare the link dead after S seconds without a frame",
    )
    parser.add_argument(
        "--heartbeat-mode",
        choices=("protocol", "message", "off"),
        default="protocol",
        help="protocol: RFC 6455 pings; message: send --ping-message and treat a pong frame as the "
        "reply; off: no pings (default: protocol)",
    )
    parser.add_argument(
        "--ping-message",
        default='{"op": "ping"}',
        metavar="TEXT",
        help="the application ping of --heartbeat-mode message (default: %(default)s); the reply is "
        'the text "pong" or a JSON object whose op, type or event is "pong"',
    )
    parser.add_argument(
        "--max-retries",
        type=_count,
        default=3,
        metavar="N",
        help="give up after N consecutive failed attempts (default: 3; 0: never give up)",
    )
    parser.add_argument(
        "--max-delay", type=_positive, default=30.0, metavar="S", help="cap on one backoff delay (30)"
    )


def _build_parser() -> _Parser:
    parser = _Parser(
        prog="wsclient",
        description="A resilient WebSocket client for market-data feeders and trading bots.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"wsclient {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = commands.add_parser(
        "demo",
        help="watch wsclient ride through a fault schedule on an embedded feed (no network)",
        description="Run an embedded fake feed behind a fault-injecting proxy and a Client with typed "
        "models through it; show the connection live, then account for every message.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument("--duration", type=_positive, default=30.0, help="seconds to run (default: 30)")
    demo.add_argument(
        "--symbols",
        type=_symbols,
        default=None,
        help=f"comma-separated symbols (default: {','.join(DEFAULT_SYMBOLS)})",
    )
    demo.add_argument("--rate", type=_positive, default=10.0, help="messages/s per stream (default: 10)")
    demo.add_argument("--seed", type=int, default=1, help="seed of the feed's content and the jitter")
    demo.add_argument("--plain", action="store_true", help="plain lines, even on a terminal")
    demo.add_argument(
        "--pool",
        action="store_true",
        help="the pool scene instead: a Pool spreads many streams over several connections of a fake "
        "venue that enforces its limits (shards, rotations, duplicates dropped, staleness, repacking)",
    )
    demo.add_argument(
        "--streams",
        type=_stream_count,
        default=None,
        metavar="N",
        help=f"streams of the pool scene (default: {_POOL_STREAMS}; needs --pool)",
    )

    listen = commands.add_parser(
        "listen",
        help="print the frames of a WebSocket endpoint, reconnecting as needed",
        description="Connect to URL, send the --subscribe messages (again after every reconnect) and "
        "print every inbound frame on stdout; connection events go to stderr. Ctrl-C or SIGTERM "
        "closes the connection with a close frame and exits 0.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    listen.add_argument("url", metavar="URL", help="ws:// or wss:// URL")
    _add_client_args(listen)
    listen.add_argument(
        "--output", choices=("pretty", "json"), default="pretty", help="pretty lines or JSON lines"
    )
    listen.add_argument("--count", type=_count, default=0, metavar="N", help="exit 0 after N frames")

    record = commands.add_parser(
        "record",
        help="record a WebSocket endpoint's frames and disconnects to a file, for replaying",
        description="Connect to URL as listen does (the --subscribe messages sent again after every "
        "reconnect) and write every inbound frame with its arrival time, and every connect and "
        "disconnect (close code and reason), as JSON lines to --out (gzip when the name ends in .gz). "
        "Play it back with `wsclient serve --replay FILE` or wsclient.testing.ReplayServer. Ctrl-C or "
        "SIGTERM closes the connection and finishes the file; it is readable at any point.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    record.add_argument("url", metavar="URL", help="ws:// or wss:// URL")
    record.add_argument(
        "--out", required=True, metavar="FILE", help="the recording, e.g. feed.jsonl.gz (.gz: compressed)"
    )
    record.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    until = record.add_mutually_exclusive_group()
    until.add_argument("--duration", type=_positive, default=None, metavar="S", help="stop after S seconds")
    until.add_argument("--count", type=_count, default=0, metavar="N", help="stop after N frames")
    _add_client_args(record)

    serve = commands.add_parser(
        "serve",
        help="run the embedded fake feed (and optionally the fault proxy) for other clients",
        description="Run wsclient's fake market feed on HOST:PORT until Ctrl-C or SIGTERM. With "
        "--proxy-port, also a ChaosProxy in front of it that cuts links idle for --idle-cutoff "
        'seconds. Subscribe with {"op": "subscribe", "channel": "trades", "symbol": "BTC-USD"}; '
        f"channels: {', '.join(CHANNELS)}.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--host", default="127.0.0.1", help="interface to listen on (127.0.0.1)")
    serve.add_argument("--port", type=_port, default=8765, help="feed port (8765; 0: any free port)")
    serve.add_argument("--rate", type=_positive, default=None, help="messages/s per stream (20)")
    serve.add_argument(
        "--symbols",
        type=_symbols,
        default=None,
        help=f"comma-separated symbols ({','.join(DEFAULT_SYMBOLS)})",
    )
    serve.add_argument("--seed", type=int, default=None, help="seed of the feed's content (1)")
    serve.add_argument(
        "--replay",
        default=None,
        metavar="FILE",
        help="serve a recording made by `wsclient record` instead of the fake feed: every client gets "
        "the recorded frames with their recorded spacing, and the recorded disconnects",
    )
    serve.add_argument(
        "--speed",
        type=_speed,
        default=None,
        help="replay pace: a factor of the recorded one (1: real time, 10) or max (as fast as the "
        "client reads); default 1 (needs --replay)",
    )
    serve.add_argument(
        "--no-disconnects",
        action="store_true",
        help="replay every frame on every connection, without the recorded disconnects (needs --replay)",
    )
    serve.add_argument(
        "--start",
        choices=("connect", "message"),
        default=None,
        help="begin a connection's replay at its handshake (connect, the default) or at the client's "
        "first message (message; needs --replay)",
    )
    serve.add_argument("--proxy-port", type=_port, default=None, help="also run a ChaosProxy on this port")
    serve.add_argument(
        "--idle-cutoff",
        type=_positive,
        default=None,
        metavar="S",
        help="the proxy closes links whose server side was silent for S seconds (needs --proxy-port)",
    )
    _add_feed_parsers(commands)
    return parser


# ---------------------------------------------------------------------------------------- running


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``wsclient`` command with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        if args.idle_cutoff is not None and args.proxy_port is None:
            parser.error("--idle-cutoff needs --proxy-port (it is the proxy's idle cut-off)")
        if args.replay is None:
            for given, flag in (
                (args.speed, "--speed"),
                (args.no_disconnects, "--no-disconnects"),
                (args.start, "--start"),
            ):
                if given:
                    parser.error(f"{flag} needs --replay (it sets how a recording is played)")
        else:
            for given, flag in ((args.rate, "--rate"), (args.symbols, "--symbols"), (args.seed, "--seed")):
                if given is not None:
                    parser.error(f"{flag} is for the fake feed; --replay plays the recording as it is")
    if args.command == "demo":
        if args.pool and args.symbols is not None:
            parser.error("--symbols is for the feed scene; the pool scene takes --streams")
        if not args.pool and args.streams is not None:
            parser.error("--streams needs --pool (it sets the streams of the pool scene)")
        least = _POOL_MIN_DURATION if args.pool else 4
        if args.duration < least:
            parser.error(f"--duration must be at least {least:g} seconds (the fault schedule needs room)")
    run: Callable[[argparse.Namespace, asyncio.Event], Awaitable[int]] = {
        "demo": _demo,
        "listen": _listen,
        "record": _record,
        "serve": _serve,
        "feed": _feed,
        "tail": _tail,
    }[args.command]
    try:
        return asyncio.run(_with_signals(run, args))
    except CliError as exc:
        _fail_line(str(exc))
        return exc.code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


def _fail_line(message: str) -> None:
    sys.stdout.flush()
    sys.stderr.write(f"wsclient: error: {message}\n")
    sys.stderr.flush()


async def _with_signals(
    run: Callable[[argparse.Namespace, asyncio.Event], Awaitable[int]], args: argparse.Namespace
) -> int:
    """Run a command with SIGINT/SIGTERM setting its stop event; a second signal cancels it."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    main_task = asyncio.current_task()
    assert main_task is not None
    interrupted = False

    def on_signal() -> None:
        nonlocal interrupted
        if stop.is_set():
            interrupted = True
            main_task.cancel()
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        return await run(args, stop)
    except asyncio.CancelledError:
        if interrupted:
            return EXIT_INTERRUPTED
        raise
    except (ConfigError, ValidationError) as exc:
        raise CliError(_config_message(exc), EXIT_USAGE) from None
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _config_message(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        message = str(first["msg"]).removeprefix("Value error, ")
        where = ".".join(str(part) for part in first["loc"])
        return f"{where}: {message}" if where else message
    return str(exc)


def _os_error(exc: OSError) -> str:
    # asyncio wraps bind errors in a long sentence; the errno's own text is the useful part.
    return os.strerror(exc.errno).lower() if exc.errno else str(exc)


def _gave_up(client: Client, exc: GaveUpError) -> CliError:
    cause = exc.cause
    if isinstance(cause, HandshakeRejected) and exc.fatal:
        return CliError(
            f"{client.url}: the server rejected the connection with HTTP {cause.status}", EXIT_REJECTED
        )
    why = describe(cause)
    tail = "fatal, not retried" if exc.fatal else f"gave up after {exc.attempts} attempts"
    if client.stats.connects == 0:
        return CliError(f"cannot connect to {client.url}: {why} ({tail})", EXIT_CONNECT)
    return CliError(f"connection to {client.url} lost: {why} ({tail})", EXIT_CONNECT)


# ---------------------------------------------------------------------------------------- listen


def _is_pong(frame: str | bytes) -> bool:
    if isinstance(frame, bytes):
        return False
    if frame.strip().lower() == "pong":
        return True
    if '"pong"' not in frame and "'pong'" not in frame:
        return False  # cheap pre-check: most frames are data
    try:
        obj = json.loads(frame)
    except ValueError:
        return False
    return isinstance(obj, dict) and any(obj.get(k) == "pong" for k in ("op", "type", "event"))


def _listen_config(args: argparse.Namespace) -> ClientConfig:
    message: Any = None
    if args.heartbeat_mode == "message":
        try:
            message = json.loads(args.ping_message)
        except ValueError:
            message = args.ping_message
        if not isinstance(message, dict | str):
            message = args.ping_message
    heartbeat = Heartbeat(
        mode=args.heartbeat_mode,
        interval=args.ping_interval,
        timeout=args.ping_timeout,
        server_idle_timeout=args.idle_timeout,
        receive_timeout=args.receive_timeout,
        message=message,
        is_pong=_is_pong if args.heartbeat_mode == "message" else None,
    )
    reconnect = Reconnect(
        max_attempts=args.max_retries or None,
        max_delay=args.max_delay,
        initial_delay=min(0.5, args.max_delay),
    )
    return ClientConfig(heartbeat=heartbeat, reconnect=reconnect)


class _FramePrinter:
    """Writes inbound frames to stdout, one line each; stops counting at ``limit``."""

    def __init__(self, out: TextIO, output: str, limit: int, done: asyncio.Event) -> None:
        self._out = out
        self._json = output == "json"
        self._limit = limit
        self._done = done
        self.printed = 0

    def __call__(self, frame: str | bytes) -> None:
        if self._done.is_set():
            return
        now = time.time()
        if self._json:
            record: dict[str, Any] = {"ts": round(now, 6)}
            if isinstance(frame, bytes):
                record["frame"] = base64.b64encode(frame).decode("ascii")
                record["encoding"] = "base64"
            else:
                try:
                    record["frame"] = json.loads(frame)
                except ValueError:
                    record["frame"] = frame
            line = json.dumps(record, separators=(",", ":"), ensure_ascii=False)
        else:
            stamp = time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"
            if isinstance(frame, bytes):
                text = f"<binary {len(frame)} bytes> {frame[:32].hex()}{'…' if len(frame) > 32 else ''}"
            else:
                text = frame.replace("\r", "\\r").replace("\n", "\\n")
            line = f"{stamp}  {text}"
        try:
            self._out.write(line + "\n")
            self._out.flush()
        except BrokenPipeError:
            # `wsclient listen … | head`: the reader left; stop as if interrupted.
            self._done.set()
            return
        self.printed += 1
        if self._limit and self.printed >= self._limit:
            self._done.set()


def _event_line(event: ClientEvent) -> str | None:
    match event:
        case Connected(connection_id=cid, url=url, reconnect=again):
            return f"{'reconnected' if again else 'connected'} to {url} (connection {cid})"
        case Disconnected(code=code, reason=reason, will_retry=True, delay=delay):
            return f"disconnected ({reason}); reconnecting in {delay:.2f}s" + (
                "" if code is None else f" [code {code}]"
            )
        case Disconnected(reason=reason):
            return f"disconnected ({reason}); not retrying"
        case ConnectFailed(attempt=attempt, reason=reason, will_retry=True, delay=delay):
            return f"connect attempt {attempt} failed ({reason}); retrying in {delay:.2f}s"
        case HeartbeatMissed(kind=kind, waited=waited, fatal=True):
            what = "no pong" if kind == "pong" else "no frame"
            return f"heartbeat: {what} for {waited:.2f}s, link declared dead"
    return None


async def _listen(args: argparse.Namespace, stop: asyncio.Event) -> int:
    config = _listen_config(args)
    client = Client(args.url, config=config, headers=dict(args.header))
    for message in args.subscribe:
        client.subscribe(message)
    printer = _FramePrinter(sys.stdout, args.output, args.count, stop)
    client.on_message(printer)

    @client.on_event
    def report(event: ClientEvent) -> None:
        line = _event_line(event)
        if line is not None:
            sys.stderr.write(f"wsclient: {line}\n")
            sys.stderr.flush()

    await client.start()
    closed = asyncio.ensure_future(client.wait_closed())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({closed, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not closed.done():
            await client.close()  # 1000 with a close frame, bounded by close_timeout
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(closed, return_exceptions=True)
    exc = closed.exception() if not closed.cancelled() else None
    if isinstance(exc, GaveUpError):
        raise _gave_up(client, exc)
    return EXIT_OK


# ---------------------------------------------------------------------------------------- record


async def _record(args: argparse.Namespace, stop: asyncio.Event) -> int:
    path = Path(args.out)
    # Built before the file is created: a bad URL or option leaves nothing behind.
    client = Client(args.url, config=_listen_config(args), headers=dict(args.header))
    for message in args.subscribe:
        client.subscribe(message)
    try:
        writer = RecordingWriter(path, args.url, overwrite=args.force)
    except FileExistsError:
        raise CliError(
            f"{path} exists: choose another --out, or pass --force to overwrite it", EXIT_USAGE
        ) from None
    except OSError as exc:
        raise CliError(f"cannot write {path}: {_os_error(exc)}", EXIT_ERROR) from None
    loop = asyncio.get_running_loop()
    started = loop.time()
    timer = loop.call_later(args.duration, stop.set) if args.duration is not None else None
    limit = args.count

    def on_frame(frame: str | bytes) -> None:
        if limit and writer.frames >= limit:
            return  # frames read while the client closes are past the count
        writer.frame(frame)
        if limit and writer.frames >= limit:
            stop.set()

    client.on_message(on_frame)
    client.on_event(writer.on_event)

    @client.on_event
    def report(event: ClientEvent) -> None:
        line = _event_line(event)
        if line is not None:
            sys.stderr.write(f"wsclient: {line}\n")
            sys.stderr.flush()

    failure: BaseException | None = None
    try:
        await client.start()
        closed = asyncio.ensure_future(client.wait_closed())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({closed, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not closed.done():
                await client.close()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(closed, return_exceptions=True)
        failure = closed.exception() if not closed.cancelled() else None
    finally:
        # Also on a second Ctrl-C: whatever was recorded stays readable, with its end line.
        if timer is not None:
            timer.cancel()
        writer.close()
    print(
        f"recorded {writer.frames} frame{'s' if writer.frames != 1 else ''}, {writer.connections} "
        f"connection{'s' if writer.connections != 1 else ''}, {writer.disconnects} "
        f"disconnect{'s' if writer.disconnects != 1 else ''} in {loop.time() - started:.1f}s to {path}",
        flush=True,
    )
    if isinstance(failure, GaveUpError):
        raise _gave_up(client, failure)
    return EXIT_OK


# ---------------------------------------------------------------------------------------- serve


async def _serve(args: argparse.Namespace, stop: asyncio.Event) -> int:
    if args.replay is not None:
        return await _serve_replay(args, stop)
    feed = FeedServer(
        args.host,
        args.port,
        rate=args.rate if args.rate is not None else 20.0,
        symbols=args.symbols if args.symbols is not None else DEFAULT_SYMBOLS,
        seed=args.seed if args.seed is not None else 1,
    )
    try:
        await feed.start()
    except OSError as exc:
        raise CliError(f"cannot listen on {args.host}:{args.port}: {_os_error(exc)}", EXIT_ERROR) from None
    proxy: ChaosProxy | None = None
    try:
        print(f"feed   {feed.url}", flush=True)
        proxy = await _serve_proxy(args, feed.host, feed.port, feed.path)
        symbol = feed.symbols[0]
        print(
            f'subscribe with {{"op": "subscribe", "channel": "trades", "symbol": "{symbol}"}} '
            f"(channels: {', '.join(CHANNELS)}; symbols: {', '.join(feed.symbols)}); Ctrl-C stops",
            flush=True,
        )
        await stop.wait()
    finally:
        if proxy is not None:
            await proxy.stop()
        await feed.stop()
    return EXIT_OK


async def _serve_proxy(args: argparse.Namespace, host: str, port: int, path: str) -> ChaosProxy | None:
    """The ``--proxy-port`` ChaosProxy in front of ``host:port``, started and announced; or None."""
    if args.proxy_port is None:
        return None
    proxy = ChaosProxy(host, port, host=args.host, port=args.proxy_port)
    try:
        await proxy.start()
    except OSError as exc:
        raise CliError(
            f"cannot listen on {args.host}:{args.proxy_port}: {_os_error(exc)}", EXIT_ERROR
        ) from None
    proxy.idle_timeout = args.idle_cutoff
    cut = f" (closes links idle for {args.idle_cutoff:g}s)" if args.idle_cutoff else ""
    print(f"proxy  {proxy.url(path)}{cut}", flush=True)
    return proxy


async def _serve_replay(args: argparse.Namespace, stop: asyncio.Event) -> int:
    try:
        server = ReplayServer(
            args.replay,
            args.host,
            args.port,
            speed=args.speed if args.speed is not None else 1.0,
            disconnects=not args.no_disconnects,
            start=args.start or "connect",
        )
    except FileNotFoundError:
        raise CliError(f"--replay {args.replay}: no such file", EXIT_USAGE) from None
    except (RecordingError, OSError) as exc:
        raise CliError(f"--replay {args.replay}: {exc}", EXIT_USAGE) from None
    try:
        await server.start()
    except OSError as exc:
        raise CliError(f"cannot listen on {args.host}:{args.port}: {_os_error(exc)}", EXIT_ERROR) from None
    proxy: ChaosProxy | None = None
    try:
        recording = server.recording
        frames = len(recording.frames)
        segments = recording.segments
        drops = sum(1 for s in segments if s.end is not None)
        speed = "max" if server.speed == "max" else f"{server.speed:g}x"
        how = (
            f"{len(segments)} connection{'s' if len(segments) != 1 else ''}, {drops} "
            f"disconnect{'s' if drops != 1 else ''} reproduced"
            if server.disconnects
            else "all on every connection, no disconnects"
        )
        print(f"replay {server.url}", flush=True)
        proxy = await _serve_proxy(args, server.host, server.port, "/")
        cut = "" if recording.complete else "; the recording was cut short"
        print(
            f"{frames} frame{'s' if frames != 1 else ''} recorded from {recording.url} at "
            f"{recording.started} ({how}; speed {speed}{cut}); Ctrl-C stops",
            flush=True,
        )
        await stop.wait()
    finally:
        if proxy is not None:
            await proxy.stop()
        await server.stop()
    return EXIT_OK


# ---------------------------------------------------------------------------------------- demo


class Trade(Message):
    """A trade of the demo feed."""

    type: Literal["trade"]
    symbol: str
    price: Decimal
    qty: Decimal
    side: Literal["buy", "sell"]
    seq: int


class Book(Message):
    """A top-of-book snapshot of the demo feed: five ``[price, qty]`` levels a side."""

    type: Literal["book"]
    symbol: str
    bids: list[tuple[Decimal, Decimal]]
    asks: list[tuple[Decimal, Decimal]]
    seq: int


class Ticker(Message):
    """A ticker of the demo feed."""

    type: Literal["ticker"]
    symbol: str
    bid: Decimal
    ask: Decimal
    last: Decimal
    seq: int


_DEMO_KEY = "wsclient-demo"  # X-Client-Id: the feed counts what it sent to this client under it


@dataclass
class _Plan:
    """The demo's timings, scaled to its duration (the figures below are for 30 s)."""

    duration: float
    idle_cutoff: float  # the proxy closes links whose server side was silent this long (3 s)
    ping: float  # heartbeat interval and timeout: a quarter of the idle cut-off
    quiet_at: float
    quiet_for: float  # longer than the idle cut-off: only the heartbeat keeps the link open
    down_at: float
    down_for: float
    blackhole_at: float
    blackhole_for: float
    close_at: float
    open_timeout: float

    @classmethod
    def scaled(cls, duration: float) -> _Plan:
        s = duration / 30.0
        return cls(
            duration=duration,
            idle_cutoff=3.0 * s,
            ping=0.75 * s,
            quiet_at=0.12 * duration,
            quiet_for=0.15 * duration,
            down_at=0.35 * duration,
            down_for=0.05 * duration,
            blackhole_at=0.55 * duration,
            blackhole_for=0.12 * duration,
            close_at=0.80 * duration,
            open_timeout=max(0.5, 1.5 * s),
        )


@dataclass
class _Account:
    """What the feed wrote on one connection and what the client handled from it."""

    connection_id: int
    sent: int | None = None
    received: int | None = None
    ended_by: str = ""
    ended_at: float | None = None
    clean: bool | None = None  # ended with a close frame: nothing may be lost in flight

    @property
    def lost(self) -> int | None:
        if self.sent is None or self.received is None:
            return None
        return self.sent - self.received


@dataclass
class _SymbolStats:
    last: Decimal | None = None
    bid: Decimal | None = None
    ask: Decimal | None = None
    messages: int = 0
    gaps: int = 0
    samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=16))

    def rate(self, now: float) -> float:
        samples = self.samples
        samples.append((now, self.messages))
        while len(samples) > 2 and now - samples[1][0] >= 1.0:
            samples.popleft()
        t0, n0 = samples[0]
        return (self.messages - n0) / (now - t0) if now - t0 > 0.2 else 0.0


class _View(Protocol):
    def start(self) -> None: ...
    def event(self, at: float, text: str, style: str = "") -> None: ...
    def refresh(self, demo: _Demo) -> None: ...
    def stop(self, demo: _Demo) -> None: ...


class _Demo:
    """The demo: feed, proxy, client, fault schedule, live statistics and the ledger."""

    def __init__(self, args: argparse.Namespace, stop: asyncio.Event) -> None:
        self.plan = _Plan.scaled(args.duration)
        self.symbols: tuple[str, ...] = args.symbols or DEFAULT_SYMBOLS
        self.stop_event = stop
        self.feed = FeedServer(rate=args.rate, symbols=self.symbols, seed=args.seed)
        self.proxy: ChaosProxy | None = None
        self.client: Client | None = None
        self.t0 = 0.0
        self.stats = {symbol: _SymbolStats() for symbol in self.symbols}
        self.by_type: Counter[str] = Counter()
        self.received = 0
        self.gaps: list[tuple[float, SequenceGap]] = []
        self._pending_gaps: list[SequenceGap] = []
        self.accounts: list[_Account] = []
        self._sent_mark = 0
        self._received_mark = 0
        self._hooks = 0
        self.accounting_complete = False
        self.down_since: float | None = None
        self.down_total = 0.0
        self.connect_failures = 0
        self.next_fault = ""
        self._quiet_cuts_start: int | None = None
        self.quiet_cuts: int | None = None
        self.view: _View = _PlainView(sys.stdout)

    def now(self) -> float:
        return time.monotonic() - self.t0

    # -- client callbacks -------------------------------------------------------------------

    def on_trade(self, trade: Trade) -> None:
        stats = self.stats[trade.symbol]
        stats.last = trade.price
        self._count(stats, "trade")

    def on_book(self, book: Book) -> None:
        self._count(self.stats[book.symbol], "book")

    def on_ticker(self, ticker: Ticker) -> None:
        stats = self.stats[ticker.symbol]
        stats.bid, stats.ask = ticker.bid, ticker.ask
        if stats.last is None:
            stats.last = ticker.last
        self._count(stats, "ticker")

    def _count(self, stats: _SymbolStats, kind: str) -> None:
        stats.messages += 1
        self.by_type[kind] += 1
        self.received += 1

    def on_gap(self, gap: SequenceGap) -> None:
        self.gaps.append((self.now(), gap))
        assert isinstance(gap.stream, tuple)
        self.stats[gap.stream[1]].gaps += 1
        self._pending_gaps.append(gap)

    def on_event(self, event: ClientEvent) -> None:
        at = self.now()
        match event:
            case Connected(connection_id=cid, reconnect=again):
                if again and self.down_since is not None:
                    down = at - self.down_since
                    self.down_total += down
                    self.view.event(at, f"reconnected (connection {cid}) after {down:.2f}s down", "green")
                else:
                    self.view.event(at, f"connected (connection {cid})", "green")
                self.down_since = None
            case Disconnected(code=code, reason=reason, delay=delay):
                self.down_since = at
                self._ended(reason, code is not None and code != 1006, at)
                retry = f"retry in {delay:.2f}s" if delay is not None else "not retrying"
                self.view.event(at, f"disconnected: {reason} → {retry}", "red")
            case ConnectFailed(attempt=attempt, reason=reason, delay=delay):
                self.connect_failures += 1
                self._ended(reason, False, at)
                retry = f"retry in {delay:.2f}s" if delay is not None else "not retrying"
                self.view.event(at, f"connect attempt {attempt} failed: {reason} → {retry}", "yellow")
            case HeartbeatMissed(kind=kind, waited=waited, fatal=True):
                what = "no pong" if kind == "pong" else "no frame"
                self.view.event(at, f"heartbeat: {what} for {waited:.2f}s → link declared dead", "red")

    def _ended(self, reason: str, clean: bool, at: float) -> None:
        # The connection whose account is open ended (a connect failure after its hook ran too).
        if self.accounts and not self.accounts[-1].ended_by:
            account = self.accounts[-1]
            account.ended_by, account.clean, account.ended_at = reason, clean, at

    async def on_connect(self, conn: Connection) -> None:
        """Close the previous connection's account before this one subscribes.

        Exact because the feed writes data only after a subscription: once the feed holds no other
        connection of ours, and a reply on this connection has gone through our dispatcher (which
        handles frames in arrival order, so every frame of the earlier connections went first), the
        previous connection's "sent" and "received" can change no more.
        """
        self._hooks += 1
        hooks = self._hooks
        feed = self.feed
        bound = self.plan.open_timeout * 0.4  # the client bounds hooks by open_timeout
        await feed.wait_until(
            lambda: (
                feed.current_connections(_DEMO_KEY) == 1 and feed.connections_by_client[_DEMO_KEY] >= hooks
            ),
            timeout=bound,
        )
        await conn.request({"op": "time"}, timeout=bound)  # the barrier; a bot would sync its clock here
        self._settle()
        self.accounts.append(_Account(conn.id))

    def _settle(self) -> _Account | None:
        if not self.accounts:
            return None
        account = self.accounts[-1]
        sent = self.feed.messages_sent(_DEMO_KEY)
        account.sent, account.received = sent - self._sent_mark, self.received - self._received_mark
        self._sent_mark, self._received_mark = sent, self.received
        if account.lost:
            why = "swallowed by the dead link" if not account.clean else "UNEXPECTED after a close frame"
            text = f"connection {account.connection_id}: {account.lost} messages lost in flight ({why})"
        else:
            text = f"connection {account.connection_id}: nothing lost in flight"
        self.view.event(self.now(), f"{text}; feed sent {account.sent}, received {account.received}", "dim")
        return account

    def flush_gaps(self) -> None:
        if not self._pending_gaps:
            return
        gaps, self._pending_gaps = self._pending_gaps, []
        for across in (True, False):
            group = [g for g in gaps if g.across_reconnect is across]
            if not group:
                continue
            missing = sum(g.missing for g in group)
            where = "at a reconnect" if across else "within a connection"
            self.view.event(
                self.now(),
                f"sequence gaps {where}: {len(group)} stream(s), {missing} message(s) missed",
                "yellow",
            )

    # -- the run ------------------------------------------------------------------------------

    async def run(self) -> int:
        plan = self.plan
        random.seed(self.feed.seed)  # the backoff jitter, for repeatable runs
        await self.feed.start()
        try:
            self.proxy = proxy = ChaosProxy(self.feed.host, self.feed.port)
            await proxy.start()
            try:
                return await self._run_client(proxy, plan)
            finally:
                await proxy.stop()
        finally:
            await self.feed.stop()

    async def _run_client(self, proxy: ChaosProxy, plan: _Plan) -> int:
        proxy.idle_timeout = plan.idle_cutoff
        s = plan.duration / 30.0
        config = ClientConfig(
            heartbeat=Heartbeat(interval=plan.ping, timeout=plan.ping, server_idle_timeout=plan.idle_cutoff),
            reconnect=Reconnect(initial_delay=0.2 * s, max_delay=2.0 * s, jitter=0.25, reset_after=2.0 * s),
            open_timeout=plan.open_timeout,
            close_timeout=max(0.5, s),
        )
        self.client = client = Client(
            proxy.url(self.feed.path), config=config, headers={"X-Client-Id": _DEMO_KEY}
        )

        def seq_key(m: Trade | Book | Ticker) -> tuple[Hashable, int]:
            return (m.type, m.symbol), m.seq

        client.on(Trade, self.on_trade, seq_key=seq_key)
        client.on(Book, self.on_book, seq_key=seq_key)
        client.on(Ticker, self.on_ticker, seq_key=seq_key)
        client.on_gap(self.on_gap)
        client.on_event(self.on_event)
        client.on_connect(self.on_connect)
        for symbol in self.symbols:
            for channel in CHANNELS:
                client.subscribe({"op": "subscribe", "channel": channel, "symbol": symbol})

        self.t0 = time.monotonic()
        self.view.start()
        self.view.event(
            0.0,
            f"feed {self.feed.url}, proxy {proxy.url(self.feed.path)} (cuts links idle for "
            f"{plan.idle_cutoff:.2f}s); heartbeat every {plan.ping:.2f}s",
        )
        schedule = asyncio.ensure_future(self._schedule(proxy))
        ticker = asyncio.ensure_future(self._refresh())
        try:
            async with client:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(plan.duration):
                        await self.stop_event.wait()
                if self.stop_event.is_set():
                    self.view.event(self.now(), "interrupted: finishing cleanly", "yellow")
                schedule.cancel()
                await asyncio.gather(schedule, return_exceptions=True)
                await self._finish(proxy)
        finally:
            schedule.cancel()
            ticker.cancel()
            await asyncio.gather(schedule, ticker, return_exceptions=True)
            if self.down_since is not None:
                self.down_total += self.now() - self.down_since
                self.down_since = None
            self.flush_gaps()
            self.view.stop(self)
        return _print_summary(self, sys.stdout)

    async def _refresh(self) -> None:
        while True:
            self.flush_gaps()
            self.view.refresh(self)
            await asyncio.sleep(0.25)

    def _quiet(self, on: bool) -> None:
        # Idle cut-offs are counted over the quiet period only: the proxy also cuts the abandoned
        # upstream side of a black-holed connection, which says nothing about the heartbeat.
        assert self.proxy is not None
        self.feed.silent = on
        if on:
            self._quiet_cuts_start = self.proxy.idle_cuts
        elif self._quiet_cuts_start is not None:
            self.quiet_cuts = self.proxy.idle_cuts - self._quiet_cuts_start
            self._quiet_cuts_start = None

    async def _schedule(self, proxy: ChaosProxy) -> None:
        plan, feed = self.plan, self.feed
        steps: list[tuple[float, str, Callable[[], Awaitable[None] | None]]] = [
            (
                plan.quiet_at,
                f"fault: the feed goes quiet for {plan.quiet_for:.2f}s, longer than the proxy's "
                f"{plan.idle_cutoff:.2f}s idle cut-off (the heartbeat's pongs keep the link open)",
                lambda: self._quiet(True),
            ),
            (plan.quiet_at + plan.quiet_for, "the feed speaks again", lambda: self._quiet(False)),
            (
                plan.down_at,
                f"fault: the feed goes down for {plan.down_for:.2f}s (close 1001 going away)",
                lambda: feed.stop(1001, "going away"),
            ),
            (plan.down_at + plan.down_for, "the feed is back up", feed.start),
            (
                plan.blackhole_at,
                f"fault: black hole for {plan.blackhole_for:.2f}s (no FIN, no RST: only the heartbeat "
                "can tell)",
                lambda: proxy.blackhole(True),
            ),
            (
                plan.blackhole_at + plan.blackhole_for,
                "the black hole is lifted",
                lambda: proxy.blackhole(False),
            ),
            (
                plan.close_at,
                "fault: the feed closes every connection with 1012 (service restart)",
                lambda: feed.close_all(1012, "service restart"),
            ),
        ]
        for at, text, action in steps:
            self.next_fault = f"{text.removeprefix('fault: ')} at {at:.1f}s"
            delay = at - self.now()
            if delay > 0:
                await asyncio.sleep(delay)
            self.view.event(self.now(), text, "bold magenta" if text.startswith("fault") else "cyan")
            result = action()
            if result is not None:
                await result
        self.next_fault = "none: the schedule is over"

    async def _finish(self, proxy: ChaosProxy) -> None:
        """Undo any fault still on, unsubscribe on an open connection and close its account."""
        client, feed = self.client, self.feed
        assert client is not None
        self.next_fault = "none: finishing"
        proxy.blackhole(False)
        self._quiet(False)
        if not feed.running:
            await feed.start()
        try:
            await client.wait_open(timeout=3 * self.plan.open_timeout + 2.0 * self.plan.duration / 30)
            subscriptions = client.subscriptions
            for subscription in subscriptions:
                await subscription.cancel()  # no reconnect may resubscribe from here on
            # The feed acknowledges an unsubscribe at the exact end of that stream's messages, and
            # request() returns once the ack was dispatched: every data message is handled by then.
            await asyncio.gather(
                *(client.request({**sub.message, "op": "unsubscribe"}, timeout=2.0) for sub in subscriptions)
            )
        except (TimeoutError, RequestTimeout, ConnectionLostError, ClientClosedError, GaveUpError) as exc:
            self.view.event(self.now(), f"could not finish the accounting: {describe(exc)}", "red")
            return
        account = self._settle()
        if account is not None:
            account.ended_by, account.clean, account.ended_at = (
                "end of the demo (unsubscribed)",
                True,
                self.now(),
            )
        self.accounting_complete = True


def _fmt(value: Decimal | None) -> str:
    return "-" if value is None else format(value, "f")


def _status_line(demo: _Demo) -> str:
    client = demo.client
    assert client is not None
    stats = client.stats
    rtt = f"{stats.last_rtt * 1000:.1f}ms" if stats.last_rtt is not None else "-"
    now = time.monotonic()
    parts = [f"{s} {_fmt(st.last)} {st.rate(now):.0f}/s" for s, st in demo.stats.items()]
    return f"{client.state.value.upper():<12} rtt {rtt:<8} " + " | ".join(parts)


class _Timed(Protocol):
    """What a view needs of a demo: its plan (with its ``duration``) and its clock."""

    plan: Any

    def now(self) -> float: ...


_D = TypeVar("_D", bound=_Timed)


class _Lines(Generic[_D]):
    """Plain lines: every event as it happens, and a status line every tenth of the run (at least
    every second)."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._last_status = 0.0

    def start(self) -> None:
        self._last_status = time.monotonic()

    def event(self, at: float, text: str, style: str = "") -> None:
        self._out.write(f"[{at:6.2f}s] {text}\n")
        self._out.flush()

    def refresh(self, demo: _D) -> None:
        period = max(1.0, demo.plan.duration / 10)
        if time.monotonic() - self._last_status < period:
            return
        line = self._status(demo)
        if line is not None:
            self._last_status = time.monotonic()
            self.event(demo.now(), line)

    def _status(self, demo: _D) -> str | None:
        raise NotImplementedError

    def stop(self, demo: _D) -> None:
        pass


class _PlainView(_Lines["_Demo"]):
    """The client's state, round-trip time and per-symbol prices and rates."""

    def _status(self, demo: _Demo) -> str | None:
        return _status_line(demo) if demo.client is not None else None


_STATE_STYLE = {
    ConnectionState.OPEN: "bold green",
    ConnectionState.CONNECTING: "bold yellow",
    ConnectionState.RECONNECTING: "bold yellow",
    ConnectionState.FAILED: "bold red",
}


class _LiveView(Generic[_D]):
    """A live table (rich ``Live``) redrawn from a demo's state, with the latest events."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.live import Live

        self._console = Console()
        self._live = Live(console=self._console, refresh_per_second=4, transient=False)
        self._events: deque[tuple[float, str, str]] = deque(maxlen=12)

    def start(self) -> None:
        self._live.start()

    def event(self, at: float, text: str, style: str = "") -> None:
        self._events.append((at, text, style))

    def refresh(self, demo: _D) -> None:
        self._live.update(self._render(demo))

    def stop(self, demo: _D) -> None:
        self._live.update(self._render(demo))
        self._live.stop()

    def _render(self, demo: _D) -> Any:
        raise NotImplementedError

    def _frame(
        self,
        title: str,
        next_fault: str | None,
        *parts: Any,
        subtitle: str = "Ctrl-C ends it early with the summary",
    ) -> Any:
        """``parts``, then the next fault (if any) and the latest events, in a titled panel."""
        from rich.console import Group
        from rich.panel import Panel
        from rich.text import Text

        events = Text(no_wrap=True, overflow="ellipsis")
        for i, (at, text, style) in enumerate(self._events):
            events.append(f"{at:6.2f}s  " if i == 0 else f"\n{at:6.2f}s  ", style="dim")
            events.append(text, style=style)
        lines = [Text(f"next: {next_fault}", style="magenta")] if next_fault is not None else []
        body = Group(*parts, *lines, Panel(events, title="events", title_align="left"))
        return Panel(body, title=title, title_align="left", subtitle=subtitle)


class _RichView(_LiveView["_Demo"]):
    """State, round-trip time, per-symbol prices and rates, events."""

    def _render(self, demo: _Demo) -> Any:
        from rich.table import Table
        from rich.text import Text

        client = demo.client
        assert client is not None
        stats = client.stats
        now = time.monotonic()
        state = client.state
        header = Text()
        header.append(f"{state.value.upper()}", style=_STATE_STYLE.get(state, "bold"))
        rtt = f"{stats.last_rtt * 1000:.1f} ms" if stats.last_rtt is not None else "-"
        down = demo.down_total + (demo.now() - demo.down_since if demo.down_since is not None else 0.0)
        lost = sum(a.lost or 0 for a in demo.accounts)
        header.append(
            f"   rtt {rtt}   connections {stats.connects}   reconnects {stats.reconnects}   "
            f"down {down:.1f}s   gaps {len(demo.gaps)}   lost in flight {lost}   "
            f"t {min(demo.now(), demo.plan.duration):.1f}/{demo.plan.duration:g}s"
        )
        table = Table(expand=True, pad_edge=False)
        table.add_column("symbol")
        for column in ("last", "bid", "ask", "msgs/s", "messages", "gaps"):
            table.add_column(column, justify="right")
        for symbol, st in demo.stats.items():
            table.add_row(
                symbol,
                _fmt(st.last),
                _fmt(st.bid),
                _fmt(st.ask),
                f"{st.rate(now):.0f}",
                str(st.messages),
                str(st.gaps),
            )
        return self._frame(
            f"wsclient demo: {client.url} (ChaosProxy) → fake feed", demo.next_fault, header, table
        )


def _print_summary(demo: _Demo, out: TextIO) -> int:
    client = demo.client
    assert client is not None
    stats = client.stats
    sent = demo.feed.messages_sent(_DEMO_KEY)
    settled = [a for a in demo.accounts if a.lost is not None]
    lost = sum(a.lost or 0 for a in settled)
    lost_clean = sum(a.lost or 0 for a in settled if a.clean)
    across = [g for _, g in demo.gaps if g.across_reconnect]
    within = [g for _, g in demo.gaps if not g.across_reconnect]
    kinds = ", ".join(f"{demo.by_type[k]} {k}s" for k in ("trade", "book", "ticker"))
    lines = [
        "",
        f"Summary after {demo.now():.1f}s",
        f"  messages received:   {demo.received} ({kinds})",
        f"  sent by feed:        {sent}",
        f"  lost in flight:      {lost} (at dead links; {lost_clean} at closes with a close frame)",
    ]
    ok = demo.accounting_complete and demo.received + lost == sent and lost_clean == 0
    if demo.accounting_complete:
        verdict = "OK" if ok else "MISMATCH"
        lines.append(f"  accounting:          received + lost in flight = sent by feed: {verdict}")
    else:
        lines.append("  accounting:          incomplete (the client was not connected at the end)")
    lines += [
        f"  connections:         {stats.connects} ({stats.reconnects} reconnects, "
        f"{demo.connect_failures} failed attempts)",
        f"  time disconnected:   {demo.down_total:.2f}s",
        f"  sequence gaps:       {len(demo.gaps)} ({len(across)} at a reconnect, {len(within)} within a "
        f"connection: the feed's quiet period)",
        f"  idle cut-offs:       {'-' if demo.quiet_cuts is None else demo.quiet_cuts} while the feed was "
        f"quiet ({demo.plan.quiet_for:.2f}s; the proxy cuts after {demo.plan.idle_cutoff:.2f}s, the "
        f"heartbeat pings every {demo.plan.ping:.2f}s)",
        "  connections, one by one:",
    ]
    for account in demo.accounts:
        when = f"{account.ended_at:6.2f}s" if account.ended_at is not None else "      "
        figures = (
            f"sent {account.sent}, received {account.received}, lost in flight {account.lost}"
            if account.lost is not None
            else "not accounted"
        )
        lines.append(f"    #{account.connection_id:<3} {when} {account.ended_by or 'open'}: {figures}")
    out.write("\n".join(lines) + "\n")
    out.flush()
    if demo.accounting_complete and not ok:
        raise CliError("the demo's accounting does not add up: see the summary", EXIT_ERROR)
    return EXIT_OK


# ---------------------------------------------------------------------------------------- demo --pool

_POOL_STREAMS = 120
_MAX_POOL_STREAMS = 1000  # what the fake venue holds
_POOL_MIN_DURATION = 8.0
_PER_CONNECTION = 40  # 120 streams: three shards
_VENUE_MPS = 5  # messages per second per connection, pings and pongs counted (Binance's rule)
_VENUE_CONNECTS = 10  # connection attempts per _VENUE_CONNECT_WINDOW, per client
_VENUE_CONNECT_WINDOW = 2.0


@dataclass
class _PoolPlan:
    """The pool scene's limits and timings, scaled to its duration (the figures below are for 30 s)."""

    duration: float
    max_age: float  # the venue cuts connections at this age (6 s): every shard rotates a few times
    age_jitter: float
    overlap: float  # bound on a rotation's overlap: room for a replay paced by the message budget
    stale_after: float  # a stream silent this long is resubscribed; twice as long, its connection replaced
    mute_at: float
    restart_at: float
    down_for: float
    remove_at: float
    add_at: float

    @classmethod
    def scaled(cls, duration: float, rate: float) -> _PoolPlan:
        max_age = max(5.0, 0.2 * duration)
        return cls(
            duration=duration,
            max_age=max_age,
            age_jitter=0.1,
            overlap=0.4 * max_age,
            stale_after=max(max_age / 8, 4.0 / rate),
            mute_at=0.05 * duration,
            restart_at=0.4 * duration,
            down_for=max(0.3, 0.05 * duration),
            remove_at=0.6 * duration,
            add_at=0.78 * duration,
        )

    def rules(self) -> VenueRules:
        return VenueRules(
            streams_per_connection=_PER_CONNECTION,
            messages_per_second=_VENUE_MPS,
            count_control_frames=True,
            connects_per_window=_VENUE_CONNECTS,
            connect_window=_VENUE_CONNECT_WINDOW,
            max_connection_age=self.max_age,
        )

    def limits(self) -> VenueLimits:
        return VenueLimits(
            streams_per_connection=_PER_CONNECTION,
            subscribe_batch=10,
            messages_per_second=_VENUE_MPS,
            count_control_frames=True,
            heartbeat_reserve=1,
            connects_per_window=_VENUE_CONNECTS,
            connect_window=_VENUE_CONNECT_WINDOW,
            max_connection_age=self.max_age,
            age_jitter=self.age_jitter,
            rotation_overlap=self.overlap,
        )


@dataclass
class _StreamLedger:
    """What the handlers saw of one stream: every trade id once, in order, or why not."""

    first: int | None = None
    last: int | None = None
    delivered: int = 0
    repeated: int = 0  # ids at or below the last one delivered: a copy, or out of order
    gaps: int = 0  # jumps reported by on_gap just before
    gap_ids: int = 0
    unreported: int = 0  # jumps nobody reported
    unreported_ids: int = 0
    removed_ids: int = 0  # ids sent while the application had removed the stream
    removed_reported: int = 0  # of those jumps, reported by on_gap too
    reported: tuple[int, int] | None = None  # (expected, received) of the gap on_gap just reported
    rejoined: bool = False  # added back after a removal: the next jump is the removal's

    def take(self, t: int) -> None:
        self.delivered += 1
        last = self.last
        if last is None:
            self.first = self.last = t
        elif t == last + 1:
            self.last = t
        elif t <= last:
            self.repeated += 1
        else:
            missing = t - last - 1
            if self.rejoined:
                self.removed_ids += missing
                self.removed_reported += self.reported == (last + 1, t)
            elif self.reported == (last + 1, t):
                self.gaps += 1
                self.gap_ids += missing
            else:
                self.unreported += 1
                self.unreported_ids += missing
            self.last = t
        self.reported = None
        self.rejoined = False

    @property
    def ok(self) -> bool:
        if self.first is None or self.last is None:
            return False
        span = self.last - self.first + 1
        return (
            self.repeated == 0
            and self.unreported == 0
            and self.delivered + self.gap_ids + self.removed_ids == span
        )


@dataclass
class _Rate:
    samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=16))

    def __call__(self, now: float, count: int) -> float:
        samples = self.samples
        samples.append((now, count))
        while len(samples) > 2 and now - samples[1][0] >= 1.0:
            samples.popleft()
        t0, n0 = samples[0]
        return (count - n0) / (now - t0) if now - t0 > 0.2 else 0.0


class _PoolView(Protocol):
    def start(self) -> None: ...
    def event(self, at: float, text: str, style: str = "") -> None: ...
    def refresh(self, demo: _PoolDemo) -> None: ...
    def stop(self, demo: _PoolDemo) -> None: ...


class _PoolDemo:
    """The pool scene: venue, pool, fault schedule, live figures and the per-stream ledger."""

    def __init__(self, args: argparse.Namespace, stop: asyncio.Event) -> None:
        self.plan = _PoolPlan.scaled(args.duration, args.rate)
        self.stop_event = stop
        self.seed: int = args.seed
        count = args.streams if args.streams is not None else _POOL_STREAMS
        self.names = [f"s{i:03d}@trade" for i in range(count)]
        self.venue = VenueServer(self.plan.rules(), rate=args.rate, seed=args.seed)
        self.pool: Pool | None = None
        self.t0 = 0.0
        self.ledger = {name: _StreamLedger() for name in self.names}
        self.delivered = 0
        self._delivered_rate = _Rate()
        self.trades_per_s = 0.0
        self._shard_rates: dict[int, _Rate] = {}
        self.shard_per_s: dict[int, float] = {}
        self._pending_gaps: list[tuple[SequenceGap, bool]] = []  # and whether the stream was added back
        self.gaps: list[SequenceGap] = []
        self.stale: list[StreamStale] = []
        self._pending_stale: list[StreamStale] = []
        self.connect_failures = 0
        self.muted: str | None = None
        self.removed: list[str] = []
        self.removed_at: float | None = None
        self.added_back_at: float | None = None
        self._shards: dict[int, ShardInfo] = {}
        self.closed_shards: list[int] = []
        self.final_shards: tuple[ShardInfo, ...] = ()
        self.venue_connections = 0
        self.final_stats: PoolStats | None = None
        self.next_fault = ""
        self.view: _PoolView = _PoolPlainView(sys.stdout)

    def now(self) -> float:
        return time.monotonic() - self.t0

    # -- pool callbacks ---------------------------------------------------------------------------

    def on_trade(self, trade: VenueTrade) -> None:
        self.delivered += 1
        entry = self.ledger.get(trade.s)
        if entry is not None:
            entry.take(trade.t)

    def on_gap(self, gap: SequenceGap) -> None:
        # Called just before the handlers get the message after the gap: the ledger pairs them.
        entry = self.ledger.get(str(gap.stream))
        if entry is not None:
            entry.reported = (gap.expected, gap.received)
        self.gaps.append(gap)
        self._pending_gaps.append((gap, entry is not None and entry.rejoined))

    def on_event(self, event: Any) -> None:
        at = self.now()
        match event:
            case StreamStale():
                self.stale.append(event)
                self._pending_stale.append(event)
            case Disconnected(reason=reason, delay=delay):
                retry = f"retry in {delay:.2f}s" if delay is not None else "not retrying"
                self.view.event(at, f"a shard's connection was lost: {reason} → {retry}", "red")
            case ConnectFailed(attempt=attempt, reason=reason, delay=delay):
                self.connect_failures += 1
                retry = f"retry in {delay:.2f}s" if delay is not None else "not retrying"
                self.view.event(
                    at, f"a shard's connect attempt {attempt} failed: {reason} → {retry}", "yellow"
                )

    def watch_shards(self) -> None:
        """Say what changed in the shards since the last look: rotations, reconnects, openings."""
        pool = self.pool
        assert pool is not None
        at = self.now()
        shards = {info.index: info for info in pool.shards}
        for index, info in shards.items():
            before = self._shards.get(index)
            if before is None:
                self.view.event(at, f"shard {index} opens with {info.streams} streams", "green")
                continue
            rotated = info.rotations - before.rotations
            reconnected = info.connects - before.connects - rotated
            if rotated:
                self.view.event(
                    at,
                    f"shard {index}: connection replaced make-before-break (rotation {info.rotations})",
                    "cyan",
                )
            if reconnected > 0:
                again = "reconnected" if before.connects else "connected"
                self.view.event(at, f"shard {index}: {again} ({info.streams} streams)", "green")
            if info.streams != before.streams:
                self.view.event(at, f"shard {index} now carries {info.streams} streams", "cyan")
        for index in self._shards.keys() - shards.keys():
            self.closed_shards.append(index)
            self.view.event(at, f"shard {index} closed: the others carry its streams", "cyan")
        self._shards = shards

    def flush_stale(self) -> None:
        """One line per shard and action for the staleness watch's steps since the last look."""
        if not self._pending_stale:
            return
        events, self._pending_stale = self._pending_stale, []
        groups: dict[tuple[int, str], list[StreamStale]] = {}
        for event in events:
            groups.setdefault((event.shard, event.action), []).append(event)
        for (shard, action), group in groups.items():
            low, high = min(e.silent_for for e in group), max(e.silent_for for e in group)
            silent = f"{low:.2f}s" if high - low < 0.01 else f"{low:.2f}-{high:.2f}s"
            what = group[0].stream if len(group) == 1 else f"{len(group)} streams"
            if action == "resubscribed":
                then = "resubscribed on the connection"
            else:
                then = "the connection is replaced, make-before-break"
            text = f"stale: {what} silent for {silent} on shard {shard} → {then}"
            self.view.event(self.now(), text, "yellow")

    def flush_gaps(self) -> None:
        if not self._pending_gaps:
            return
        gaps, self._pending_gaps = self._pending_gaps, []
        back = [g for g, rejoined in gaps if rejoined]
        if back:
            self.view.event(
                self.now(),
                f"gaps reported on streams added back: {len(back)} stream(s), "
                f"{sum(g.missing for g in back)} trade id(s) sent while they were removed",
                "dim",
            )
        for across in (True, False):
            group = [g for g, rejoined in gaps if g.across_reconnect is across and not rejoined]
            if group:
                missing = sum(g.missing for g in group)
                where = "at a reconnect" if across else "within a connection"
                self.view.event(
                    self.now(),
                    f"gaps reported {where}: {len(group)} stream(s), {missing} trade id(s) never received",
                    "yellow",
                )

    # -- the run -----------------------------------------------------------------------------------

    def _make_pool(self) -> Pool:
        ids = itertools.count(1)
        config = ClientConfig(
            discriminator="e",
            heartbeat=Heartbeat(interval=1.5, timeout=1.0),
            reconnect=Reconnect(initial_delay=0.2, max_delay=1.0),
        )
        pool = Pool(
            self.venue.url,
            subscribe=lambda streams: {"method": "SUBSCRIBE", "params": list(streams), "id": next(ids)},
            unsubscribe=lambda streams: {"method": "UNSUBSCRIBE", "params": list(streams), "id": next(ids)},
            config=config,
            limits=self.plan.limits(),
            dedup_key=lambda m: (m.s, m.t),
            stale_after=self.plan.stale_after,
        )
        pool.on(VenueTrade, self.on_trade)
        pool.on_gap(self.on_gap)
        pool.on_event(self.on_event)
        pool.on_unknown(lambda frame: None)  # the venue's acknowledgements
        return pool

    async def run(self) -> int:
        random.seed(self.seed)  # the backoff and age jitter, for repeatable runs
        await self.venue.start()
        try:
            await self._run_pool()
        finally:
            await self.venue.stop()
        return _print_pool_summary(self, sys.stdout)

    async def _run_pool(self) -> None:
        plan, venue = self.plan, self.venue
        self.pool = pool = self._make_pool()
        pool.add_streams(self.names)
        self.t0 = time.monotonic()
        self.view.start()
        self.view.event(
            0.0,
            f"venue {venue.url}: at most {_PER_CONNECTION} streams and {_VENUE_MPS} messages/s per "
            f"connection (pings and pongs count), {_VENUE_CONNECTS} connects per {_VENUE_CONNECT_WINDOW:g}s, "
            f"connections cut at {plan.max_age:.1f}s",
        )
        self.view.event(
            0.0,
            f"the pool packs {len(self.names)} streams into {len(pool.shards)} shard(s); "
            f"streams silent for {plan.stale_after:.2f}s are resubscribed",
        )
        schedule = asyncio.ensure_future(self._schedule())
        ticker = asyncio.ensure_future(self._refresh())
        try:
            async with pool:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(plan.duration):
                        await self.stop_event.wait()
                if self.stop_event.is_set():
                    self.view.event(self.now(), "interrupted: finishing cleanly", "yellow")
                schedule.cancel()
                await asyncio.gather(schedule, return_exceptions=True)
                self.watch_shards()
                self.final_shards = pool.shards
        finally:
            schedule.cancel()
            ticker.cancel()
            await asyncio.gather(schedule, ticker, return_exceptions=True)
            self.final_stats = pool.stats
            self.flush_stale()
            self.flush_gaps()
            self.view.stop(self)

    async def _refresh(self) -> None:
        while True:
            self.watch_shards()
            self.flush_stale()
            self.flush_gaps()
            now = time.monotonic()
            self.trades_per_s = self._delivered_rate(now, self.delivered)
            self.shard_per_s = {
                i.index: self._shard_rates.setdefault(i.index, _Rate())(now, i.messages_in)
                for i in self._shards.values()
            }
            self.venue_connections = len(self.venue.connections)
            self.view.refresh(self)
            await asyncio.sleep(0.25)

    async def _schedule(self) -> None:
        plan = self.plan
        steps: list[tuple[float, str, Callable[[], Awaitable[None]]]] = [
            (plan.mute_at, "the venue silently drops one stream on one connection", self._mute),
            (plan.restart_at, f"the venue restarts, down for {plan.down_for:.2f}s", self._restart),
            (plan.remove_at, "the application removes a batch of streams", self._remove),
            (plan.add_at, "the application adds them back", self._add_back),
        ]
        for at, text, action in steps:
            self.next_fault = f"{text} at {at:.1f}s"
            delay = at - self.now()
            if delay > 0:
                await asyncio.sleep(delay)
            await action()
        self.next_fault = "none: the schedule is over"

    async def _mute(self) -> None:
        # On a connection young enough for the staleness watch to resubscribe, then replace it,
        # before its age rotation would bring the stream back anyway; and not on either side of a
        # rotation under way (its streams on two connections), whose switch would wait for it.
        plan, venue = self.plan, self.venue
        loop = asyncio.get_running_loop()
        needed = 2.25 * plan.stale_after + 0.3  # two limits, a check period, the replacement's start
        # At the latest when the watch can still act before the restart (the schedule keeps its times).
        deadline = loop.time() + max(0.0, plan.restart_at - needed - self.now())
        while True:
            carried = Counter(s for c in venue.connections.values() for s in c.streams)
            live = [
                c for c in venue.connections.values() if c.streams and all(carried[s] == 1 for s in c.streams)
            ]
            young = max(live, key=lambda c: c.opened_at) if live else None
            rotation_at = (
                young.opened_at + plan.max_age * (1 - plan.age_jitter) - plan.overlap if young else 0.0
            )
            if young is not None and (rotation_at - loop.time() >= needed or loop.time() >= deadline):
                break
            await asyncio.sleep(0.02)
        stream = young.streams[0]
        venue.mute(stream, connection=young.id)
        self.muted = stream
        shard = self.pool.shard_of(stream) if self.pool is not None else None
        self.view.event(
            self.now(),
            f"fault: the venue silently stops sending {stream} on connection #{young.id} (shard {shard}); "
            "it stays subscribed there",
            "bold magenta",
        )

    async def _restart(self) -> None:
        self.view.event(
            self.now(),
            f"fault: the venue restarts: every connection reset, down for {self.plan.down_for:.2f}s "
            "(its trades go on)",
            "bold magenta",
        )
        await self.venue.restart(down_for=self.plan.down_for)
        self.view.event(self.now(), "the venue is back up", "cyan")

    async def _remove(self) -> None:
        pool = self.pool
        assert pool is not None
        by_shard: dict[int | None, list[str]] = {}
        for name in pool.streams:
            if name != self.muted:
                by_shard.setdefault(pool.shard_of(name), []).append(name)
        total, shards = len(pool.streams), len(by_shard)
        # Enough, taken evenly from every shard, for the rest to fit in one connection fewer.
        count = max(1, total // 4)
        if shards > 1:
            count = max(count, total - (shards - 1) * _PER_CONNECTION + _PER_CONNECTION // 8)
        count = min(count, total - 1)
        chosen: list[str] = []
        queues = list(by_shard.values())
        while len(chosen) < count and any(queues):
            for queue in queues:
                if queue and len(chosen) < count:
                    chosen.append(queue.pop())
        if not chosen:
            return
        pool.remove_streams(chosen)
        self.removed = chosen
        self.removed_at = self.now()
        left = total - len(chosen)
        fits = math.ceil(left / _PER_CONNECTION)
        then = (
            f"{left} left fit in {fits} connection(s) → the pool moves the emptiest shard's streams "
            "onto the others, make-before-break"
            if fits < shards
            else f"{left} left"
        )
        self.view.event(
            self.now(),
            f"change: the application removes {len(chosen)} streams from {shards} shard(s): {then}",
            "bold blue",
        )

    async def _add_back(self) -> None:
        pool = self.pool
        if pool is None or not self.removed:
            return
        pool.add_streams(self.removed)
        for name in self.removed:
            self.ledger[name].rejoined = True
        self.added_back_at = self.now()
        self.view.event(
            self.now(),
            f"change: the application adds the {len(self.removed)} streams back → packed first-fit, "
            "a new shard where none has room",
            "bold blue",
        )


def _totals_line(demo: _PoolDemo, stats: PoolStats) -> str:
    stale = f"{stats.stale_resubscribes} resubscribed, {stats.stale_replacements} replaced"
    return (
        f"{demo.trades_per_s:.0f} trades/s, "
        f"{stats.duplicates_dropped} duplicates dropped, {stats.held} held, {len(demo.gaps)} gaps reported, "
        f"stale {stale}, {stats.moves} moved, {demo.venue.total_violations} violations"
    )


class _PoolPlainView(_Lines["_PoolDemo"]):
    """The shards and the pool's totals."""

    def _status(self, demo: _PoolDemo) -> str | None:
        if demo.pool is None:
            return None
        shards = " | ".join(
            f"shard {i.index} {i.state.value.upper()} {i.streams} streams {i.connects} connects "
            f"{i.rotations} rotations"
            for i in demo.pool.shards
        )
        return f"{shards}; {_totals_line(demo, demo.pool.stats)}"


class _PoolRichView(_LiveView["_PoolDemo"]):
    """One row per shard, the pool's totals, the events."""

    def _render(self, demo: _PoolDemo) -> Any:
        from rich.table import Table
        from rich.text import Text

        pool = demo.pool
        assert pool is not None
        stats = pool.stats
        venue = demo.venue
        shards = demo.final_shards or pool.shards  # at the end: as they were before the pool closed
        header = Text()
        header.append(f"{demo.trades_per_s:.0f} trades/s", style="bold")
        header.append(
            f"   streams {stats.streams}   shards {len(shards)}   venue connections "
            f"{demo.venue_connections}   t {min(demo.now(), demo.plan.duration):.1f}/{demo.plan.duration:g}s"
        )
        table = Table(expand=True, pad_edge=False)
        table.add_column("shard")
        table.add_column("state")
        for column in ("streams", "connects", "rotations", "msgs/s", "messages"):
            table.add_column(column, justify="right")
        for info in shards:
            rate = demo.shard_per_s.get(info.index, 0.0)
            table.add_row(
                f"shard {info.index}",
                Text(info.state.value.upper(), style=_STATE_STYLE.get(info.state, "bold")),
                str(info.streams),
                str(info.connects),
                str(info.rotations),
                f"{rate:.0f}",
                str(info.messages_in),
            )
        violations = venue.total_violations
        totals = Text()
        totals.append(
            f"duplicates dropped {stats.duplicates_dropped}   held {stats.held}   "
            f"gaps reported {len(demo.gaps)}   stale {stats.stale_resubscribes} resubscribed / "
            f"{stats.stale_replacements} replaced   moves {stats.moves}   rotations {stats.rotations}\n"
            f"budget waits {stats.budget_waits}   connect waits {stats.connect_waits}   "
            f"venue age cuts {venue.age_cuts}   "
        )
        totals.append(f"venue violations {violations}", style="bold green" if not violations else "bold red")
        return self._frame(
            f"wsclient demo --pool: {len(demo.names)} streams over a Pool → fake venue {venue.url}",
            demo.next_fault,
            header,
            table,
            totals,
        )


def _print_pool_summary(demo: _PoolDemo, out: TextIO) -> int:
    stats = demo.final_stats
    assert stats is not None
    venue = demo.venue
    ledgers = demo.ledger
    broken = [name for name, entry in ledgers.items() if not entry.ok]
    gaps = sum(e.gaps for e in ledgers.values())
    gap_ids = sum(e.gap_ids for e in ledgers.values())
    gap_streams = sum(1 for e in ledgers.values() if e.gaps)
    unreported = sum(e.unreported for e in ledgers.values())
    repeated = sum(e.repeated for e in ledgers.values())
    removed_ids = sum(e.removed_ids for e in ledgers.values())
    removed_reported = sum(e.removed_reported for e in ledgers.values())
    removed_for = ""
    if demo.removed_at is not None:
        if demo.added_back_at is not None:
            removed_for = f" for {demo.added_back_at - demo.removed_at:.1f}s"
        else:
            removed_for = " (not added back: the run ended first)"
    muted = [e for e in demo.stale if e.stream == demo.muted]
    muted_steps = (
        f"{demo.muted}, muted on purpose: {' then '.join(e.action for e in muted) or 'not seen'}; "
        f"{len(demo.stale) - len(muted)} step(s) for other streams"
        if demo.muted
        else "no stream was muted"
    )
    violations = venue.total_violations
    kinds = ", ".join(f"{kind} {venue.violations[kind]}" for kind in ("streams", "rate", "connects"))
    closed = f"; closed during the run: {', '.join(f'shard {i}' for i in demo.closed_shards)}"
    lines = [
        "",
        f"Summary after {demo.now():.1f}s (pool scene)",
        f"  streams:             {len(demo.names)}, at most {_PER_CONNECTION} per connection",
        f"  shards:              {len(demo.final_shards)} at the end{closed if demo.closed_shards else ''}",
    ]
    for info in demo.final_shards:
        lines.append(
            f"    shard {info.index:<3} {info.state.value.upper():<12} {info.streams} streams, "
            f"{info.connects} connects, {info.rotations} rotations, {info.messages_in} messages"
        )
    lines += [
        f"  trades delivered:    {demo.delivered} (frames received: {stats.messages_in})",
        f"  rotations:           {stats.rotations} (venue age cuts: {venue.age_cuts})",
        f"  duplicates dropped:  {stats.duplicates_dropped} (the overlaps of rotations and moves); "
        f"{stats.held} held, then delivered in order",
        f"  moves:               {stats.moves} streams moved between shards",
        f"  stale streams:       {stats.stale_resubscribes} resubscribed, {stats.stale_replacements} "
        f"connection(s) replaced ({muted_steps})",
        f"  gaps reported:       {gaps} on {gap_streams} streams: {gap_ids} trade ids the venue sent while "
        "no connection could receive them, each gap reported to on_gap",
        f"  removed on purpose:  {len(demo.removed)} streams{removed_for}: {removed_ids} trade ids not "
        f"subscribed to ({removed_reported} of these jumps reported to on_gap too)",
        f"  copies delivered:    {repeated} (or out of order); unreported gaps: {unreported}",
        f"  budget:              {stats.budget_waits} messages waited for the message budget, "
        f"{stats.connect_waits} connects for the connect quota ({demo.connect_failures} failed attempts)",
        f"  venue violations:    {violations} ({kinds})",
    ]
    ok = not broken and violations == 0
    if ok:
        lines.append(
            f"  accounting:          every trade id reached the handlers exactly once, in order, "
            f"except the {gap_ids} ids of {gaps} reported gaps and the {removed_ids} of removed streams: OK"
        )
    else:
        lines.append(
            f"  accounting:          MISMATCH: {len(broken)} stream(s) broken ({repeated} copies or out of "
            f"order, {unreported} unreported gaps), {violations} violations"
        )
    lines.append("  streams, one by one:")
    for name, entry in ledgers.items():
        if entry.first is None:
            lines.append(f"    {name:<12} nothing delivered: MISMATCH")
            continue
        parts = [f"ids {entry.first}-{entry.last}: {entry.delivered} delivered"]
        if entry.gaps:
            parts.append(f"{entry.gaps} reported gap(s) of {entry.gap_ids} ids")
        if entry.removed_ids:
            parts.append(f"{entry.removed_ids} ids while removed")
        if entry.repeated:
            parts.append(f"{entry.repeated} copies or out of order")
        if entry.unreported:
            parts.append(f"{entry.unreported} UNREPORTED gap(s) of {entry.unreported_ids} ids")
        verdict = "exactly once, in order: OK" if entry.ok else "MISMATCH"
        lines.append(f"    {name:<12} {', '.join(parts)}; {verdict}")
    out.write("\n".join(lines) + "\n")
    out.flush()
    if not ok:
        raise CliError("the pool scene's accounting does not add up: see the summary", EXIT_ERROR)
    return EXIT_OK


def _rich_wanted(args: argparse.Namespace) -> bool:
    if args.plain or not sys.stdout.isatty():
        return False
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


async def _demo(args: argparse.Namespace, stop: asyncio.Event) -> int:
    if args.pool:
        scene = _PoolDemo(args, stop)
        if _rich_wanted(args):
            scene.view = _PoolRichView()
        return await scene.run()
    demo = _Demo(args, stop)
    if _rich_wanted(args):
        demo.view = _RichView()
    return await demo.run()


# ---------------------------------------------------------------------------------------- feed and tail

_FEED_HELP = """\
CONFIG is a TOML file (validated at start; a mistake exits 2 naming the field and the fix):

  [venue]     url; streams = [...]; subscribe / unsubscribe: message templates where "{streams}"
              is the list of streams and "{id}" a request id, e.g.
                subscribe = { method = "SUBSCRIBE", params = "{streams}", id = "{id}" }
              (a one-element list mentioning "{stream}" is repeated per stream); discriminator
              (the tag field of typed messages, e.g. "e"); profile (a VenueLimits profile:
              binance_spot, okx, bybit, bitfinex) and/or [venue.limits]; optional [venue.heartbeat],
              [venue.reconnect], stale_after, headers.
  [messages]  typed: model = "package.module:Class" (a pydantic model) and dedup_key = ["s", "t"]
              (stream field(s), then the sequence: exactly once through rotations, gaps reported);
              or raw pass-through: raw = true, optionally match = { e = "trade" }.
  [sink]      kind = "nats" (or "redis" where this build has it); servers; subject and id:
              templates of the message's fields (raw: its keys), e.g. subject = "md.trades.{s}",
              id = "{s}:{t}" (a field a message lacks is counted as an error, not a crash);
              payload = "raw" | "json"; stream = { name = "MD", subjects = ["md.>"],
              duplicate_window = 120 } (created or updated on connect); max_pending; close_timeout.
  [fleet]     optional (wsclient.fleet): name, member, redundancy, lease, servers: feeders sharing
              the streams; each carries its share.

String values may read the environment: "${NATS_URL}" or "${NATS_URL:-nats://127.0.0.1:4222}".
Runs until Ctrl-C or SIGTERM (or --duration), then closes the pool, waits for the bus's last
acknowledgements and prints a summary; exits 5 when messages were abandoned.
"""


def _add_feed_parsers(commands: Any) -> None:
    feed = commands.add_parser(
        "feed",
        help="run a feeder from a TOML file: a venue's streams through a Pool into NATS JetStream",
        description="Subscribe to a venue's streams with a Pool (within the venue's limits) and publish "
        "every message into a message bus, exactly once, with a live view; on exit, a summary.\n\n"
        + _FEED_HELP,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    feed.add_argument("config", metavar="CONFIG", help="the feed's TOML file")
    feed.add_argument(
        "--duration", type=_positive, default=None, metavar="S", help="stop after S seconds (default: run)"
    )
    feed.add_argument(
        "--every",
        type=_positive,
        default=None,
        metavar="S",
        help="seconds between status lines of the plain view (default: 10, or a tenth of --duration)",
    )
    feed.add_argument("--plain", action="store_true", help="plain lines, even on a terminal")
    feed.add_argument("--check", action="store_true", help="validate CONFIG, say what it would do, exit")

    tail = commands.add_parser(
        "tail",
        help="print the messages of a JetStream subject, one line each",
        description="Read SUBJECT (wildcards allowed) from its JetStream stream with an ephemeral "
        "ordered consumer and print one line per message: stream sequence, subject, Nats-Msg-Id and "
        "a preview of the payload. Starts with the last 10 messages (--last N, --all, --new), then "
        "follows; ends after --count messages or on Ctrl-C (exit 0).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tail.add_argument("subject", metavar="SUBJECT", help="e.g. md.trades.> or md.trades.btc@trade")
    tail.add_argument("--nats", default="nats://127.0.0.1:4222", metavar="URL", help="the NATS server")
    tail.add_argument("--stream", default=None, metavar="NAME", help="the stream (default: found by subject)")
    start = tail.add_mutually_exclusive_group()
    start.add_argument("--last", type=_count, default=None, metavar="N", help="start with the last N (10)")
    start.add_argument("--all", action="store_true", help="start with the first message stored")
    start.add_argument("--new", action="store_true", help="only messages published from now on")
    tail.add_argument("--count", type=_count, default=0, metavar="N", help="exit 0 after N messages")
    tail.add_argument("--raw", action="store_true", help="print only each payload, as stored")


class _FeedRun:
    """A running ``wsclient feed``: the feeder, its view, and what the view says about it."""

    def __init__(self, args: argparse.Namespace, feeder: Feeder, stop: asyncio.Event) -> None:
        self.feeder = feeder
        self.stop_event = stop
        self.duration: float | None = args.duration
        self.plan = args  # what the shared views read (their plain status period is overridden here)
        self.every: float = args.every or (max(1.0, args.duration / 10) if args.duration else 10.0)
        self.t0 = time.monotonic()
        self.started = False
        self.interrupted = False
        self.timed_out = False
        self._rate = _Rate()
        self.per_s = 0.0
        self._shard_rates: dict[int, _Rate] = {}
        self.shard_per_s: dict[int, float] = {}
        self._shards: dict[int, ShardInfo] = {}
        self.final_shards: tuple[ShardInfo, ...] = ()
        self.final_stats: PoolStats | None = None
        self._connected: bool | None = None
        self._errors = 0
        self._gaps = 0
        self._members: tuple[str, ...] | None = None
        self.view: _FeedView = _FeedPlainView(sys.stdout)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def on_event(self, event: Any) -> None:
        at = self.now()
        match event:
            case StreamStale(stream=stream, shard=shard, silent_for=silent, action=action):
                self.view.event(at, f"stale: {stream} silent for {silent:.1f}s on shard {shard} → {action}")
            case Disconnected(reason=reason, delay=delay):
                retry = f"retry in {delay:.2f}s" if delay is not None else "not retrying"
                self.view.event(at, f"a shard's connection was lost: {reason} → {retry}", "red")
            case ConnectFailed(attempt=attempt, reason=reason, delay=delay):
                retry = f"retry in {delay:.2f}s" if delay is not None else "not retrying"
                self.view.event(
                    at, f"a shard's connect attempt {attempt} failed: {reason} → {retry}", "yellow"
                )

    def watch(self) -> None:
        """Say what changed since the last look: shards, the sink's connection, errors, gaps, fleet."""
        feeder, at = self.feeder, self.now()
        connected = feeder.sink.stats.connected
        # Once stopping, the sink's disconnection is its close, not news.
        if connected != self._connected and not self.stop_event.is_set():
            if connected:
                self.view.event(at, f"sink connected to {', '.join(feeder.config.sink.servers)}", "green")
            elif self._connected is not None:
                self.view.event(at, "sink disconnected: reconnecting (the window is kept)", "red")
            self._connected = connected
        if self.started:
            shards = {info.index: info for info in feeder.pool.shards}
            for index, info in shards.items():
                before = self._shards.get(index)
                if before is None:
                    self.view.event(at, f"shard {index} opens with {info.streams} streams", "green")
                    continue
                if info.rotations > before.rotations:
                    self.view.event(at, f"shard {index}: connection replaced make-before-break", "cyan")
                if info.connects - before.connects > info.rotations - before.rotations:
                    self.view.event(at, f"shard {index}: connected ({info.streams} streams)", "green")
                if info.streams != before.streams:
                    self.view.event(at, f"shard {index} now carries {info.streams} streams", "cyan")
            for index in self._shards.keys() - shards.keys():
                self.view.event(at, f"shard {index} closed", "cyan")
            self._shards = shards
        figures = feeder.figures
        if figures.handler_errors > self._errors:
            new = figures.handler_errors - self._errors
            self.view.event(at, f"{new} message(s) not published: {figures.last_error}", "yellow")
            self._errors = figures.handler_errors
        if figures.gaps > self._gaps:
            self.view.event(
                at, f"gaps reported: {figures.gaps} so far ({figures.gap_messages} messages missed)", "yellow"
            )
            self._gaps = figures.gaps
        fleet = feeder.fleet_figures()
        if fleet is not None and fleet[0] != self._members:
            self._members = fleet[0]
            self.view.event(
                at,
                f"fleet: members {', '.join(fleet[0]) or '-'}; {fleet[2]} (me) carries {fleet[1]} streams",
                "cyan",
            )

    async def refresh(self) -> None:
        while True:
            self.watch()
            now = time.monotonic()
            self.per_s = self._rate(now, self.feeder.figures.received)
            self.shard_per_s = {
                i.index: self._shard_rates.setdefault(i.index, _Rate())(now, i.messages_in)
                for i in self._shards.values()
            }
            self.view.refresh(self)
            await asyncio.sleep(0.25)

    async def run(self) -> int:
        feeder = self.feeder
        feeder.pool.on_event(self.on_event)
        self.view.start()
        self.view.event(0.0, describe_config(feeder.config))
        self.view.event(0.0, f"connecting to the bus at {', '.join(feeder.config.sink.servers)}")

        def on_started() -> None:
            self.started = True
            fleet = feeder.config.fleet
            if fleet is None:
                self.view.event(self.now(), f"subscribing to {len(feeder.config.venue.streams)} stream(s)")
            else:
                self.view.event(self.now(), f"joining fleet {fleet.name!r} (redundancy {fleet.redundancy})")

        timer = None
        if self.duration is not None:
            timer = asyncio.get_running_loop().call_later(self.duration, self._time_up)
        ticker = asyncio.ensure_future(self.refresh())
        try:
            await feeder.run(self.stop_event, on_started=on_started, on_stopping=self._stopping)
        except FeedError as exc:
            raise CliError(str(exc), EXIT_CONNECT) from None
        finally:
            if timer is not None:
                timer.cancel()
            ticker.cancel()
            await asyncio.gather(ticker, return_exceptions=True)
            self.final_stats = feeder.pool.stats  # after the close: every shard's figures included
            self.watch()
            self.view.stop(self)
        return _print_feed_summary(self, sys.stdout)

    def _time_up(self) -> None:
        self.timed_out = True
        self.view.event(self.now(), f"--duration {self.duration:g}s reached: finishing")
        self.stop_event.set()

    def _stopping(self) -> None:
        """Before the pool closes: its shards as they were, for the view and the summary."""
        if not self.timed_out:
            self.interrupted = True
            self.view.event(self.now(), "interrupted: closing the pool, then waiting for the bus", "yellow")
        self.watch()
        self.final_shards = self.feeder.pool.shards


class _FeedView(Protocol):
    def start(self) -> None: ...
    def event(self, at: float, text: str, style: str = "") -> None: ...
    def refresh(self, run: _FeedRun) -> None: ...
    def stop(self, run: _FeedRun) -> None: ...


def _sink_line(stats: Any) -> str:
    return (
        f"stored {stats.stored}, duplicates {stats.duplicates}, pending {stats.pending}, "
        f"retries {stats.retries}, waits {stats.waits}, {'connected' if stats.connected else 'NOT CONNECTED'}"
    )


class _FeedPlainView(_Lines["_FeedRun"]):
    """Events as they happen; every ``--every`` seconds the shards, the sink and the fleet."""

    def refresh(self, demo: _FeedRun) -> None:
        if time.monotonic() - self._last_status < demo.every:
            return
        self._last_status = time.monotonic()
        self.event(demo.now(), self._status_of(demo))

    def _status_of(self, run: _FeedRun) -> str:
        feeder = run.feeder
        shards = " | ".join(
            f"shard {i.index} {i.state.value.upper()} {i.streams} streams {i.messages_in} msgs"
            for i in feeder.pool.shards
        )
        parts = [
            shards or "no shard",
            f"{run.per_s:.0f} msgs/s, received {feeder.figures.received}",
            f"sink {_sink_line(feeder.sink.stats)}",
        ]
        fleet = feeder.fleet_figures()
        if fleet is not None:
            parts.append(f"fleet {len(fleet[0])} members, mine {fleet[1]} streams")
        return "; ".join(parts)


class _FeedRichView(_LiveView["_FeedRun"]):
    """One row per shard; the sink; the fleet; the events."""

    def _render(self, demo: _FeedRun) -> Any:
        from rich.table import Table
        from rich.text import Text

        feeder = demo.feeder
        config = feeder.config
        figures = feeder.figures
        sink = feeder.sink.stats
        shards = demo.final_shards or feeder.pool.shards
        limit = f"/{demo.duration:g}s" if demo.duration is not None else ""
        header = Text()
        header.append(f"{demo.per_s:.0f} msgs/s", style="bold")
        header.append(
            f"   received {figures.received}   streams {len(config.venue.streams)}   shards {len(shards)}   "
            f"errors {figures.handler_errors}   gaps {figures.gaps}   t {demo.now():.1f}{limit}s"
        )
        table = Table(expand=True, pad_edge=False)
        table.add_column("shard")
        table.add_column("state")
        for column in ("streams", "connects", "rotations", "msgs/s", "messages"):
            table.add_column(column, justify="right")
        for info in shards:
            table.add_row(
                f"shard {info.index}",
                Text(info.state.value.upper(), style=_STATE_STYLE.get(info.state, "bold")),
                str(info.streams),
                str(info.connects),
                str(info.rotations),
                f"{demo.shard_per_s.get(info.index, 0.0):.0f}",
                str(info.messages_in),
            )
        bus = Text()
        bus.append(f"sink {config.sink.kind} {', '.join(config.sink.servers)}   ")
        bus.append(
            "connected" if sink.connected else "NOT CONNECTED",
            style="bold green" if sink.connected else "bold red",
        )
        bus.append(
            f"\nstored {sink.stored}   duplicates {sink.duplicates}   pending {sink.pending}   "
            f"retries {sink.retries}   waits {sink.waits}   reconnects {sink.reconnects}"
        )
        parts: list[Any] = [header, table, bus]
        fleet = feeder.fleet_figures()
        if fleet is not None:
            members, mine, me = fleet
            parts.append(
                Text(
                    f"fleet {config.fleet.name if config.fleet else ''}: {len(members)} members "
                    f"({', '.join(members)})   {me} (me) carries {mine} streams"
                )
            )
        return self._frame(
            f"wsclient feed: {config.venue.url} → {config.sink.kind}",
            None,
            *parts,
            subtitle="Ctrl-C or SIGTERM: finish cleanly with the summary",
        )


def _print_feed_summary(run: _FeedRun, out: TextIO) -> int:
    feeder = run.feeder
    figures = feeder.figures
    sink = feeder.final_sink_stats or feeder.sink.stats
    stats = run.final_stats or feeder.pool.stats
    lost = sink.abandoned
    adds_up = figures.received == sink.stored + sink.duplicates + lost + sink.pending
    lines = [
        "",
        f"Summary after {run.now():.1f}s (wsclient feed{', interrupted' if run.interrupted else ''})",
        f"  messages received:   {figures.received} (handed to the sink; frames read: {stats.messages_in})",
        f"  stored:              {sink.stored} (new in the bus)",
        f"  duplicates:          {sink.duplicates} (copies the bus already had: dropped by message id)",
        f"  abandoned:           {lost} (unacknowledged when the sink closed: maybe lost)",
        f"  not published:       {figures.handler_errors}"
        + (f" (last: {figures.last_error})" if figures.last_error else ""),
        f"  gaps reported:       {figures.gaps} ({figures.gap_messages} messages the venue sent while no "
        "connection received them)",
        f"  pool:                {len(run.final_shards)} shard(s), {stats.connects} connects, "
        f"{stats.rotations} rotations, {stats.duplicates_dropped} duplicates dropped",
        f"  sink:                {sink.retries} retries, {sink.waits} waits (back-pressure), "
        f"{sink.reconnects} reconnects, {sink.errors} refused",
    ]
    if figures.skipped:
        lines.append(f"  skipped:             {figures.skipped} frames (not JSON objects, or not matching)")
    fleet = feeder.fleet_figures()
    if fleet is not None:
        lines.append(
            f"  fleet:               {len(fleet[0])} members ({', '.join(fleet[0])}); {fleet[2]} (me) "
            f"carried {fleet[1]} streams at the end"
        )
    verdict = "OK" if adds_up else "MISMATCH"
    lines.append(f"  accounting:          received = stored + duplicates + abandoned: {verdict}")
    out.write("\n".join(lines) + "\n")
    out.flush()
    if lost:
        raise CliError(f"{lost} message(s) abandoned: not acknowledged by the bus in time", EXIT_ABANDONED)
    return EXIT_OK


async def _feed(args: argparse.Namespace, stop: asyncio.Event) -> int:
    try:
        config = load_feed_config(args.config)
    except (ConfigError, ValidationError) as exc:
        raise CliError(f"{args.config}: {_config_message(exc)}", EXIT_USAGE) from None
    if args.check:
        print(f"{args.config}: OK: {describe_config(config)}", flush=True)
        return EXIT_OK
    try:
        feeder = Feeder(config)
    except (ConfigError, ValidationError, ValueError) as exc:
        raise CliError(f"{args.config}: {_config_message(exc)}", EXIT_USAGE) from None
    run = _FeedRun(args, feeder, stop)
    if _rich_wanted(args):
        run.view = _FeedRichView()
    return await run.run()


def _preview(data: bytes, width: int) -> str:
    text = data.decode("utf-8", errors="replace").replace("\r", "\\r").replace("\n", "\\n")
    return text if len(text) <= width else text[: width - 1] + "…"


async def _tail(args: argparse.Namespace, stop: asyncio.Event) -> int:
    try:
        import nats
        from nats.errors import Error as NatsError
        from nats.js.errors import NotFoundError, ServiceUnavailableError
    except ImportError:
        raise CliError("tail needs nats-py: pip install 'wsclient[nats]'", EXIT_USAGE) from None
    errors: list[BaseException] = []

    async def on_error(exc: Exception) -> None:
        # nats-py's default logs a traceback per failed attempt; one line at the end says it all.
        errors.append(exc)

    try:
        nc = await nats.connect(
            args.nats,
            connect_timeout=2.0,
            allow_reconnect=False,
            max_reconnect_attempts=1,
            error_cb=on_error,
            name="wsclient tail",
        )
    except (OSError, TimeoutError, NatsError) as exc:
        why = describe(errors[-1]) if errors else str(exc)
        raise CliError(f"cannot connect to {args.nats}: {why}", EXIT_CONNECT) from None
    try:
        return await _tail_on(nc, args, stop)
    except NotFoundError:
        raise CliError(
            f"no JetStream stream stores {args.subject!r}: check it, or give --stream", EXIT_ERROR
        ) from None
    except ServiceUnavailableError:
        raise CliError(
            f"{args.nats}: JetStream does not answer (not enabled on this server?)", EXIT_ERROR
        ) from None
    except NatsError as exc:  # a stream that went away, a refused consumer, ...
        raise CliError(f"{args.nats}: {exc}", EXIT_ERROR) from None
    finally:
        with contextlib.suppress(Exception):
            await nc.close()


async def _tail_on(nc: Any, args: argparse.Namespace, stop: asyncio.Event) -> int:
    from nats.js.api import DeliverPolicy

    out = sys.stdout
    # On a terminal a line fits its width; piped, previews are longer (a reader can cut them).
    width = max(40, shutil.get_terminal_size().columns - 40) if out.isatty() else 400
    printed = 0
    done = asyncio.Event()
    js = nc.jetstream()
    stream = args.stream or await js.find_stream_name_by_subject(args.subject)
    last = 10 if args.last is None and not args.all and not args.new else args.last
    policy = DeliverPolicy.NEW if args.new else DeliverPolicy.ALL
    skip_while = -1  # with --last: print a message once fewer than `last` matching ones follow it
    if last is not None:
        state = (await js.stream_info(stream, subjects_filter=args.subject)).state
        matching = sum(state.subjects.values()) if state.subjects else state.messages
        if last == 0:
            policy = DeliverPolicy.NEW
        elif matching > last:
            skip_while = last

    async def on_message(msg: Any) -> None:
        nonlocal printed
        if done.is_set():
            return
        meta = msg.metadata
        if skip_while >= 0 and meta.num_pending >= skip_while:
            return
        if args.raw:
            line = msg.data.decode("utf-8", errors="replace")
        else:
            msg_id = (msg.headers or {}).get("Nats-Msg-Id", "-")
            line = f"{meta.sequence.stream:>8}  {msg.subject}  {msg_id}  {_preview(msg.data, width)}"
        try:
            out.write(line + "\n")
            out.flush()
        except BrokenPipeError:
            done.set()  # `wsclient tail … | head`: the reader left
            return
        printed += 1
        if args.count and printed >= args.count:
            done.set()

    sub = await js.subscribe(
        args.subject, stream=stream, cb=on_message, ordered_consumer=True, deliver_policy=policy
    )
    stopping = asyncio.ensure_future(stop.wait())
    finished = asyncio.ensure_future(done.wait())
    try:
        await asyncio.wait({stopping, finished}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        finished.cancel()
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return EXIT_OK
