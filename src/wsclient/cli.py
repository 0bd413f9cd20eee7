"""The ``wsclient`` command line: ``demo``, ``listen`` and ``serve``.

* ``wsclient demo`` runs wsclient's main job on this machine, with no network: an embedded fake feed
  (:class:`~wsclient.testing.FeedServer`) behind a fault-injecting proxy
  (:class:`~wsclient.testing.ChaosProxy`), a fault schedule (a proxy idle cut-off shorter than the
  feed's quiet periods, a server restart, a black hole, a 1012 close) and a :class:`~wsclient.Client`
  with typed models that rides through all of it, shown live, then accounted for message by message.
* ``wsclient listen URL`` prints the frames of any WebSocket endpoint, reconnecting as a bot would.
* ``wsclient serve`` runs the fake feed (and optionally the proxy) for trying other clients.

Errors end with one line on stderr and an exit code (see :data:`EXIT_CODES`), never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import signal
import sys
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal, NoReturn, Protocol, TextIO

from pydantic import ValidationError

from . import __version__
from .client import Client, Connection
from .config import ClientConfig, Heartbeat, Reconnect
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
from .policy import describe
from .routing import Message, SequenceGap
from .state import ConnectionState
from .testing.feed import CHANNELS, DEFAULT_SYMBOLS, FeedServer
from .testing.proxy import ChaosProxy

__all__ = ["EXIT_CODES", "main"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_CONNECT = 3
EXIT_REJECTED = 4
EXIT_INTERRUPTED = 130

EXIT_CODES: dict[int, str] = {
    EXIT_OK: "success (also after Ctrl-C or SIGTERM, once the connection is closed cleanly)",
    EXIT_ERROR: "another error (e.g. a port already in use; the demo's accounting did not add up)",
    EXIT_USAGE: "bad arguments or configuration",
    EXIT_CONNECT: "could not connect, or gave up reconnecting (retries exhausted, fatal close code)",
    EXIT_REJECTED: "the server rejected the handshake (HTTP 401, 403 or 404)",
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


def _symbols(text: str) -> tuple[str, ...]:
    symbols = tuple(s.strip() for s in text.split(",") if s.strip())
    if not symbols:
        raise argparse.ArgumentTypeError("expected a comma-separated list such as BTC-USD,ETH-USD")
    return symbols


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
        default=DEFAULT_SYMBOLS,
        help="comma-separated symbols (default: %(default)s)",
    )
    demo.add_argument("--rate", type=_positive, default=10.0, help="messages/s per stream (default: 10)")
    demo.add_argument("--seed", type=int, default=1, help="seed of the feed's content and the jitter")
    demo.add_argument("--plain", action="store_true", help="plain lines, even on a terminal")

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
    listen.add_argument(
        "--subscribe",
        type=_json_message,
        action="append",
        default=[],
        metavar="JSON",
        help="a message to send on every (re)connect, e.g. "
        '\'{"op": "subscribe", "channel": "trades", "symbol": "BTC-USD"}\' (repeatable)',
    )
    listen.add_argument(
        "--header",
        type=_header,
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="an HTTP header for the handshake (repeatable; values never appear in logs)",
    )
    listen.add_argument(
        "--ping-interval", type=_positive, default=15.0, metavar="S", help="seconds between pings (15)"
    )
    listen.add_argument(
        "--ping-timeout", type=_positive, default=10.0, metavar="S", help="seconds to wait for a pong (10)"
    )
    listen.add_argument(
        "--idle-timeout",
        type=_positive,
        default=None,
        metavar="S",
        help="the server's or proxy's idle cut-off; the ping interval must be below it",
    )
    listen.add_argument(
        "--receive-timeout",
        type=_positive,
        default=None,
        metavar="S",
        help="declare the link dead after S seconds without a frame",
    )
    listen.add_argument(
        "--heartbeat-mode",
        choices=("protocol", "message", "off"),
        default="protocol",
        help="protocol: RFC 6455 pings; message: send --ping-message and treat a pong frame as the "
        "reply; off: no pings (default: protocol)",
    )
    listen.add_argument(
        "--ping-message",
        default='{"op": "ping"}',
        metavar="TEXT",
        help="the application ping of --heartbeat-mode message (default: %(default)s); the reply is "
        'the text "pong" or a JSON object whose op, type or event is "pong"',
    )
    listen.add_argument(
        "--max-retries",
        type=_count,
        default=3,
        metavar="N",
        help="give up after N consecutive failed attempts (default: 3; 0: never give up)",
    )
    listen.add_argument(
        "--max-delay", type=_positive, default=30.0, metavar="S", help="cap on one backoff delay (30)"
    )
    listen.add_argument(
        "--output", choices=("pretty", "json"), default="pretty", help="pretty lines or JSON lines"
    )
    listen.add_argument("--count", type=_count, default=0, metavar="N", help="exit 0 after N frames")

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
    serve.add_argument("--rate", type=_positive, default=20.0, help="messages/s per stream (20)")
    serve.add_argument("--symbols", type=_symbols, default=DEFAULT_SYMBOLS, help="comma-separated symbols")
    serve.add_argument("--seed", type=int, default=1, help="seed of the feed's content")
    serve.add_argument("--proxy-port", type=_port, default=None, help="also run a ChaosProxy on this port")
    serve.add_argument(
        "--idle-cutoff",
        type=_positive,
        default=None,
        metavar="S",
        help="the proxy closes links whose server side was silent for S seconds (needs --proxy-port)",
    )
    return parser


# ---------------------------------------------------------------------------------------- running


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``wsclient`` command with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve" and args.idle_cutoff is not None and args.proxy_port is None:
        parser.error("--idle-cutoff needs --proxy-port (it is the proxy's idle cut-off)")
    if args.command == "demo" and args.duration < 4:
        parser.error("--duration must be at least 4 seconds (the fault schedule needs room)")
    run: Callable[[argparse.Namespace, asyncio.Event], Awaitable[int]] = {
        "demo": _demo,
        "listen": _listen,
        "serve": _serve,
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


# ---------------------------------------------------------------------------------------- serve


async def _serve(args: argparse.Namespace, stop: asyncio.Event) -> int:
    feed = FeedServer(args.host, args.port, rate=args.rate, symbols=args.symbols, seed=args.seed)
    try:
        await feed.start()
    except OSError as exc:
        raise CliError(f"cannot listen on {args.host}:{args.port}: {_os_error(exc)}", EXIT_ERROR) from None
    proxy: ChaosProxy | None = None
    try:
        print(f"feed   {feed.url}", flush=True)
        if args.proxy_port is not None:
            proxy = ChaosProxy(feed.host, feed.port, host=args.host, port=args.proxy_port)
            try:
                await proxy.start()
            except OSError as exc:
                raise CliError(
                    f"cannot listen on {args.host}:{args.proxy_port}: {_os_error(exc)}", EXIT_ERROR
                ) from None
            proxy.idle_timeout = args.idle_cutoff
            cut = f" (closes links idle for {args.idle_cutoff:g}s)" if args.idle_cutoff else ""
            print(f"proxy  {proxy.url(feed.path)}{cut}", flush=True)
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
        self.symbols: tuple[str, ...] = args.symbols
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


class _PlainView:
    """Plain lines: every event as it happens, and a status line every few seconds."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._last_status = 0.0

    def start(self) -> None:
        self._last_status = time.monotonic()

    def event(self, at: float, text: str, style: str = "") -> None:
        self._out.write(f"[{at:6.2f}s] {text}\n")
        self._out.flush()

    def refresh(self, demo: _Demo) -> None:
        period = max(1.0, demo.plan.duration / 10)
        if time.monotonic() - self._last_status >= period and demo.client is not None:
            self._last_status = time.monotonic()
            self.event(demo.now(), _status_line(demo))

    def stop(self, demo: _Demo) -> None:
        pass


_STATE_STYLE = {
    ConnectionState.OPEN: "bold green",
    ConnectionState.CONNECTING: "bold yellow",
    ConnectionState.RECONNECTING: "bold yellow",
    ConnectionState.FAILED: "bold red",
}


class _RichView:
    """A live table (rich ``Live``): state, round-trip time, per-symbol prices and rates, events."""

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

    def refresh(self, demo: _Demo) -> None:
        self._live.update(self._render(demo))

    def stop(self, demo: _Demo) -> None:
        self._live.update(self._render(demo))
        self._live.stop()

    def _render(self, demo: _Demo) -> Any:
        from rich.console import Group
        from rich.panel import Panel
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
        events = Text(no_wrap=True, overflow="ellipsis")
        for i, (at, text, style) in enumerate(self._events):
            events.append(f"{at:6.2f}s  " if i == 0 else f"\n{at:6.2f}s  ", style="dim")
            events.append(text, style=style)
        next_fault = Text(f"next: {demo.next_fault}", style="magenta")
        body = Group(header, table, next_fault, Panel(events, title="events", title_align="left"))
        return Panel(
            body,
            title=f"wsclient demo: {client.url} (ChaosProxy) → fake feed",
            title_align="left",
            subtitle="Ctrl-C ends it early with the summary",
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


def _rich_wanted(args: argparse.Namespace) -> bool:
    if args.plain or not sys.stdout.isatty():
        return False
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


async def _demo(args: argparse.Namespace, stop: asyncio.Event) -> int:
    demo = _Demo(args, stop)
    if _rich_wanted(args):
        demo.view = _RichView()
    return await demo.run()
