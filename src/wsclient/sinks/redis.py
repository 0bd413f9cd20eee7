"""Append typed messages to Redis Streams, at least once, in order, with back-pressure.

A :class:`RedisStreamSink` is a handler: ``client.on(Trade, sink)`` (or ``pool.on``). For each
message it computes the stream key and the message id from functions of the message, and appends
one entry to the stream::

    XADD <key> MAXLEN ~ <maxlen> * id <msg_id> data <payload>

``data`` is the raw frame as received (or the model's JSON); ``id`` is the application's message id,
kept in the entry so that consumers can recognise copies.

**The guarantee is at least once, not exactly once.** Redis Streams (Redis 7) have no server-side
de-duplication: an ``XADD`` of an id the stream already holds appends a second entry. When a
connection breaks while a pipeline is in flight, the sink cannot know which of its commands Redis
applied, so it sends them all again: every message handed to the sink is stored at least once, and
a retried pipeline can append copies. Consumers drop them with :class:`SeenIds` (or
:func:`read_stream`, which uses it). ``stats.retries`` counts the entries sent again, an upper
bound on the copies; ``stats.duplicates`` stays 0 (Redis does not say).

How it writes:

* **Pipelined, bounded.** Up to ``batch`` due entries go in one pipeline (not a transaction), one
  pipeline at a time on one connection, so Redis applies them in the handlers' order. The sink
  packs the ``XADD`` commands itself and writes them on a connection of redis-py's asyncio client:
  redis-py's ``Pipeline`` packs each command argument by argument in Python, which made it three
  to five times slower than the sink (a second pipeline in flight gained nothing measurable). Up to
  ``max_pending`` entries are unacknowledged at a time; when the window is full, the handler returns
  an awaitable: the client's dispatcher waits on it, its inbound queue fills, and under the default
  lossless ``"block"`` policy the WebSocket reader pauses. Memory stays bounded; nothing is dropped.
* **Order survives a lost connection.** A pipeline that fails or whose replies do not come within
  ``ack_timeout`` drops the connection; the sink reconnects (tenacity's exponential backoff with
  jitter; redis-py's own retries are off, so that nothing is resent behind the sink's back) and
  sends every unacknowledged entry again, oldest first ("go back N"). The first appearance of each
  id in a stream is therefore in the handlers' order; copies only ever follow their original.
* **Refusals are retried in place.** An entry Redis refuses (``OOM``, ``WRONGTYPE``, ...) is
  counted in ``stats.errors``, logged, and sent again after a pause that grows to
  ``reconnect_max``; the entries after it in the same pipeline were applied and are counted in
  ``stats.reordered`` when the retried one lands after them.

What "acknowledged" means depends on the server: with ``appendonly yes`` and ``appendfsync always``
Redis answers an ``XADD`` only once it is on disk, so an acknowledged entry survives a crash of the
server; with other persistence settings it may not. A clean ``close()`` waits for every
acknowledgement (up to ``timeout``); what a killed process had in its window (at most
``max_pending`` messages) is lost unless a second feeder writes the same ids.

``MAXLEN ~`` trims each stream approximately (whole macro-nodes, cheap), so a stream holds at least
``maxlen`` entries and a little more; ``maxlen=None`` never trims.

Requires the ``redis`` extra: ``pip install 'wsclient[redis]'``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from typing import Any, cast
from urllib.parse import urlsplit

from ..codec import Data
from ..redact import redact_url
from .base import Entry, Payload, WindowSink

try:
    from redis.asyncio import Redis
    from redis.asyncio.connection import AbstractConnection
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ResponseError
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("wsclient.sinks.redis needs redis-py: pip install 'wsclient[redis]'") from exc

__all__ = ["RedisStreamSink", "SeenIds", "read_stream"]

_log = logging.getLogger("wsclient.sinks")

_SCHEMES = ("redis", "rediss", "unix")
_PING = b"*1\r\n$4\r\nPING\r\n"


class RedisStreamSink(WindowSink[AbstractConnection]):
    """A handler that appends each message to a Redis stream, at least once (see the module).

    ::

        sink = RedisStreamSink(
            "redis://127.0.0.1:6379/0",
            stream=lambda m: f"md:trades:{m.s}",
            msg_id=lambda m: f"{m.s}:{m.t}",
        )
        client.on(Trade, sink)
        async with sink, client:
            ...

    Leave the ``async with`` of the sink after the client's (or call :meth:`close` after the
    client's): the client stops delivering, then the sink waits for the acknowledgements of what it
    was given.

    Args:
        url: A ``redis://``, ``rediss://`` or ``unix://`` URL (database number included).
        stream: The stream key of a message (a function of the message, or of the raw frame when
            the sink is registered with ``client.on_message``).
        msg_id: Its id, stored in the entry's ``id`` field: the same message must get the same id
            in every feeder, so that consumers can drop copies.
        payload: ``"raw"`` (the frame as received, the default), ``"json"`` (the model's JSON) or
            a function of the message returning bytes; stored in the ``data`` field.
        maxlen: Approximate length each stream is trimmed to (``MAXLEN ~``); ``None`` never trims.
        max_pending: The window: entries unacknowledged at a time before handlers wait.
        batch: Most entries in one pipeline.
        ack_timeout: Seconds a pipeline's replies may take before the connection is dropped and the
            window sent again.
        reconnect_initial: The first backoff delay (seconds) between connection attempts, and of the
            pause before an entry Redis refused is sent again.
        reconnect_max: The longest such delay (seconds).
        connect_timeout: Seconds one connection attempt (connect and ``PING``) may take.
        ping_interval: Seconds of idleness after which the sink pings Redis, so that a lost server
            is noticed (``stats.connected``) before the next message.
        name: The connection's name (``CLIENT SETNAME``), as ``CLIENT LIST`` shows it.
    """

    _bus = "Redis"

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        stream: Callable[[Any], str],
        msg_id: Callable[[Any], str],
        payload: Payload = "raw",
        maxlen: int | None = 100_000,
        max_pending: int = 4096,
        batch: int = 256,
        ack_timeout: float = 5.0,
        reconnect_initial: float = 0.05,
        reconnect_max: float = 2.0,
        connect_timeout: float = 2.0,
        ping_interval: float = 5.0,
        name: str | None = None,
    ) -> None:
        if not callable(stream):
            raise TypeError("stream must be a function of the message returning the stream key")
        if not isinstance(url, str) or urlsplit(url).scheme not in _SCHEMES:
            raise ValueError(
                f"url must be a redis://, rediss:// or unix:// URL, got {redact_url(str(url))!r}"
            )
        super().__init__(
            msg_id=msg_id,
            payload=payload,
            max_pending=max_pending,
            ack_timeout=ack_timeout,
            reconnect_initial=reconnect_initial,
            reconnect_max=reconnect_max,
            connect_timeout=connect_timeout,
            ping_interval=ping_interval,
        )
        for field, count in (("batch", batch), ("maxlen", maxlen)):
            if field == "maxlen" and count is None:
                continue
            if isinstance(count, bool) or not isinstance(count, int) or count < 1:
                raise ValueError(f"{field} must be a positive int, got {count!r}")
        self.url = url
        self._stream = stream
        # The constant parts of every XADD, packed once: the command (10 or 7 arguments), then,
        # after the key, the trimming, the server-made entry id and the first field's name.
        if maxlen is None:
            self._head = b"*7\r\n$4\r\nXADD\r\n"
            self._middle = b"$1\r\n*\r\n$2\r\nid\r\n"
        else:
            n = b"%d" % maxlen
            self._head = b"*10\r\n$4\r\nXADD\r\n"
            self._middle = b"$6\r\nMAXLEN\r\n$1\r\n~\r\n$%d\r\n%s\r\n$1\r\n*\r\n$2\r\nid\r\n" % (len(n), n)
        self.maxlen = maxlen
        self.batch = batch
        if name is not None and (not name or any(c.isspace() for c in name)):
            raise ValueError(
                f"name must be a non-empty client name without spaces (CLIENT SETNAME), got {name!r}"
            )
        self.name = name
        self._redis: Redis | None = None

    # -- the handler ------------------------------------------------------------------------------

    def __call__(self, msg: Any, frame: Data | None = None) -> Awaitable[None] | None:
        """Append ``msg``; returns an awaitable only when the window is full (back-pressure)."""
        self._check_open()
        key, msg_id, payload = self._stream(msg), self._msg_id(msg), self._payload(msg, frame)
        # Checked here, where the error reaches the client's error hook with the message, rather
        # than when the pipeline is packed, where it would look like a broken connection.
        if not (isinstance(key, str) and isinstance(msg_id, str) and isinstance(payload, bytes)):
            raise TypeError(_wrong_types(key, msg_id, payload))
        return self._accept(Entry(key, msg_id, payload))

    def _where(self) -> str:
        return redact_url(self.url)

    # -- the I/O loop -----------------------------------------------------------------------------

    async def _run(self) -> None:
        """Connect, send what is due, a pipeline at a time; reconnect on loss."""
        while True:
            conn = await self._connect()
            self._window.rewind()  # everything unacknowledged goes again, in order
            try:
                await self._pump(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._note("connection", "Redis connection lost (%s): reconnecting", _describe(exc))
            await self._drop_connection()

    def _take(self) -> tuple[list[int], bytes]:
        """Up to ``batch`` due entries: their tokens and their XADD commands, packed."""
        window, head, middle = self._window, self._head, self._middle
        tokens: list[int] = []
        packed: list[bytes] = []
        while len(tokens) < self.batch:
            item = window.next_to_send()
            if item is None:
                break
            token, entry = item
            key, msg_id, payload = entry.key.encode(), entry.msg_id.encode(), entry.payload
            packed.append(
                b"%s$%d\r\n%s\r\n%s$%d\r\n%s\r\n$4\r\ndata\r\n$%d\r\n%s\r\n"
                % (head, len(key), key, middle, len(msg_id), msg_id, len(payload), payload)
            )
            tokens.append(token)
        return tokens, b"".join(packed)

    async def _pump(self, conn: AbstractConnection) -> None:
        window, wake, ack_timeout = self._window, self._wake, self.ack_timeout
        refusals = 0
        while True:
            tokens, data = self._take()
            if tokens:
                refused: BaseException | None = None
                try:
                    async with asyncio.timeout(ack_timeout):
                        await conn.send_packed_command(data, check_health=False)
                        for token in tokens:
                            try:
                                await conn.read_response()
                            except ResponseError as exc:
                                if window.failed(token):
                                    refused = exc
                            else:
                                window.acked(token)
                except TimeoutError:
                    window.timeouts += 1
                    raise TimeoutError(f"no reply to a pipeline within {ack_timeout} s") from None
                if refused is None:
                    refusals = 0
                    continue
                # Sent again from the oldest refused entry on, after a pause, on the same connection.
                initial, maximum = self._reconnect
                pause = min(initial * 2**refusals, maximum)
                refusals += 1
                self._note("refused", "Redis refused an XADD (%s): sending again", _describe(refused))
                await asyncio.sleep(pause)
                window.rewind()
                continue
            wake.clear()
            if window.has_due:
                continue
            try:
                async with asyncio.timeout(self._ping_interval):
                    await wake.wait()
            except TimeoutError:
                async with asyncio.timeout(ack_timeout):
                    await conn.send_packed_command(_PING, check_health=False)
                    await conn.read_response()

    async def _open(self) -> AbstractConnection:
        redis = Redis.from_url(
            self.url,
            socket_connect_timeout=self._connect_timeout,
            # The sink bounds each pipeline with ack_timeout itself.
            socket_timeout=None,
            # The sink reconnects and resends itself: a retry inside redis-py would resend
            # commands behind its back.
            retry=Retry(NoBackoff(), 0),
            client_name=self.name,
        )
        try:
            async with asyncio.timeout(self._connect_timeout):
                # The pool connects it (handshake, CLIENT SETNAME) and the PING proves it serves.
                conn: AbstractConnection = await redis.connection_pool.get_connection()  # type: ignore[no-untyped-call]
                await conn.send_packed_command(_PING, check_health=False)
                await conn.read_response()
        except BaseException:
            with contextlib.suppress(Exception):
                await redis.aclose()
            raise
        self._redis = redis
        self._connects += 1
        self._connected.set()
        if self._connects > 1:
            _log.info("Redis sink reconnected to %s", redact_url(self.url))
        return conn

    async def _drop_connection(self) -> None:
        self._connected.clear()
        redis, self._redis = self._redis, None
        if redis is not None:
            # Closing a broken connection (the pool's, in use or not): nothing more to learn from it.
            with contextlib.suppress(Exception):
                await redis.connection_pool.disconnect()
            with contextlib.suppress(Exception):
                await redis.aclose()


def _wrong_types(key: object, msg_id: object, payload: object) -> str:
    for name, value, kind in (("stream", key, str), ("msg_id", msg_id, str), ("payload", payload, bytes)):
        if not isinstance(value, kind):
            return f"{name} must give {kind.__name__}, got {type(value).__name__}: {value!r:.80}"
    raise AssertionError("unreachable: called only when a value has the wrong type")  # pragma: no cover


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class SeenIds:
    """The message ids a consumer has seen lately, to drop the copies an at-least-once sink writes.

    Memory is bounded: the last ``capacity`` distinct ids are kept, in the order they were first
    seen, and the oldest is forgotten when a new one comes. A copy is recognised as long as fewer
    than ``capacity`` other ids were seen between it and its original; a retried pipeline's copies
    follow their originals by at most the sink's ``max_pending`` entries (per stream, less), so a
    capacity well above that (the default is 100,000) recognises them all.

    ::

        seen = SeenIds()
        for entry_id, fields in entries:
            if seen.seen(fields[b"id"]):
                continue  # a copy
            handle(fields[b"data"])
    """

    __slots__ = ("_ids", "capacity", "dropped")

    def __init__(self, capacity: int = 100_000) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"capacity must be a positive int, got {capacity!r}")
        self.capacity = capacity
        self._ids: OrderedDict[Hashable, None] = OrderedDict()
        self.dropped = 0
        """Ids answered ``True`` (copies) so far."""

    def seen(self, msg_id: Hashable) -> bool:
        """Whether ``msg_id`` was seen already (a copy); records it when not."""
        ids = self._ids
        if msg_id in ids:
            self.dropped += 1
            return True
        ids[msg_id] = None
        if len(ids) > self.capacity:
            ids.popitem(last=False)
        return False

    def __contains__(self, msg_id: object) -> bool:
        return msg_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        return f"<SeenIds {len(self._ids)}/{self.capacity}, {self.dropped} copies dropped>"


async def read_stream(
    redis: Redis,
    key: str,
    *,
    after: str = "-",
    count: int = 1000,
    seen: SeenIds | None = None,
) -> AsyncIterator[tuple[bytes, bytes, bytes]]:
    """Yield ``(entry_id, msg_id, payload)`` for the entries of stream ``key`` after entry id
    ``after`` ("-": from the start), up to the end of the stream as it is when each page is read,
    skipping copies of ids already in ``seen`` (a fresh :class:`SeenIds` when ``None``).

    Reads with ``XRANGE`` in pages of ``count``; ``redis`` is a ``redis.asyncio.Redis`` without
    ``decode_responses``. To follow a stream as it grows, call it again with ``after`` set to the
    last ``entry_id`` it yielded, and the same ``seen``. Entries without an ``id`` or ``data`` field
    (not written by :class:`RedisStreamSink`) are skipped.
    """
    if seen is None:
        seen = SeenIds()
    start = after if after == "-" else f"({after}"
    while True:
        # Without decode_responses, ids and fields are bytes (redis-py's annotation is wider).
        page = cast(
            "list[tuple[bytes, dict[bytes, bytes]]]",
            await redis.xrange(key, min=start, max="+", count=count),
        )
        for entry_id, fields in page:
            msg_id, data = fields.get(b"id"), fields.get(b"data")
            if msg_id is None or data is None or seen.seen(msg_id):
                continue
            yield entry_id, msg_id, data
        if len(page) < count:
            return
        start = "(" + page[-1][0].decode()
