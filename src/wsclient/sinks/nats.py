"""Publish typed messages into NATS JetStream, exactly once, in order, with back-pressure.

A :class:`NatsJetStreamSink` is a handler: ``client.on(Trade, sink)`` (or ``pool.on``). For each
message it computes the subject and the message id from functions of the message, and publishes
the raw frame (or the model's JSON) with the id in the ``Nats-Msg-Id`` header. JetStream's
duplicate window drops a second copy of an id, which is what makes retries, and feeders running
side by side, exactly once.

How it publishes, and why not with ``js.publish_async``:

* **Pipelined, bounded.** Up to ``max_pending`` publishes are unacknowledged at a time. When the
  window is full, the handler returns an awaitable: the client's dispatcher waits on it, its inbound
  queue fills, and under the default lossless ``"block"`` policy the WebSocket reader pauses. Memory
  stays bounded; nothing is dropped.
* **Acknowledgements time out.** nats-py's ``publish_async`` futures never do, so a lost
  acknowledgement would hold its slot forever. Here an entry unanswered for ``ack_timeout`` seconds
  rewinds the window.
* **Order survives a crash of the server.** nats-py's own reconnect sends the publishes left in its
  buffer before any retry of those the crash lost, so later messages land before earlier ones. The
  sink runs the NATS connection without nats-py's reconnect and reconnects itself (tenacity's
  exponential backoff with jitter), then sends every unacknowledged entry again, oldest first;
  JetStream drops the copies of what it had stored.

A clean ``close()`` waits for every acknowledgement (up to ``timeout``) before closing the
connection, so nothing that reached the handler is lost. A process killed outright loses what was in
its window (at most ``max_pending`` messages, counted in ``stats.pending`` while it runs) and what
its client had read but not yet handed over; a second feeder publishing the same ids covers both.

Requires the ``nats`` extra: ``pip install 'wsclient[nats]'``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..codec import Data
from ..redact import redact_url
from .base import Entry, Payload, WindowSink

try:
    import nats
    from nats.aio.client import Client as NatsClient
    from nats.aio.msg import Msg
    from nats.js.errors import BadRequestError
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError("wsclient.sinks.nats needs nats-py: pip install 'wsclient[nats]'") from exc

__all__ = ["JetStreamSpec", "NatsJetStreamSink"]

_log = logging.getLogger("wsclient.sinks")

_MSG_ID = "Nats-Msg-Id"
# A JetStream publish acknowledgement: {"stream":"MD","seq":17} or {..., "duplicate":true}; a
# refusal: {"error":{"code":503,...}}. Only these two facts are read, without a JSON parse.
_DUPLICATE = b'"duplicate"'  # present only when true
# A subject to publish to: dot-separated tokens, no whitespace, no wildcard, valid UTF-8.
_SUBJECT = re.compile(r"[^\s.*>\ud800-\udfff]+(?:\.[^\s.*>\ud800-\udfff]+)*\Z", re.ASCII).match
_MSG_ID_OK = re.compile(r"[^\r\n\ud800-\udfff]+\Z").match
_ERROR = b'"error"'


class JetStreamSpec(BaseModel):
    """A stream the sink makes sure exists (created, or updated to this) when it connects."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[^\s.*>/\\]+$")
    """The stream's name (no spaces, dots, ``*``, ``>``, slashes)."""
    subjects: tuple[str, ...] = Field(min_length=1)
    """The subjects it stores, wildcards allowed (``"md.>"``)."""
    duplicate_window: float = Field(120.0, gt=0)
    """Seconds during which a second message with the same ``Nats-Msg-Id`` is dropped. It must
    cover a retry after a reconnect, and the lag between redundant feeders."""
    storage: Literal["file", "memory"] = "file"
    max_age: float | None = Field(None, gt=0)
    """Seconds a message is kept; ``None`` keeps them until other limits apply."""
    max_msgs: int | None = Field(None, gt=0)
    replicas: int = Field(1, ge=1, le=5)

    @field_validator("subjects")
    @classmethod
    def _subjects(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for subject in value:
            if not subject or any(not token for token in subject.split(".")) or " " in subject:
                raise ValueError(f"{subject!r} is not a NATS subject (tokens separated by dots)")
        return value


class NatsJetStreamSink(WindowSink["NatsClient"]):
    """A handler that publishes each message into JetStream, exactly once (see the module).

    ::

        sink = NatsJetStreamSink(
            "nats://127.0.0.1:4222",
            subject=lambda m: f"md.trades.{m.s}",
            msg_id=lambda m: f"{m.s}:{m.t}",
            stream=JetStreamSpec(name="MD", subjects=("md.>",)),
        )
        client.on(Trade, sink)
        async with sink, client:
            ...

    Leave the ``async with`` of the sink after the client's (or call :meth:`close` after the
    client's): the client stops delivering, then the sink waits for the acknowledgements of what it
    was given.

    Args:
        servers: NATS URL(s).
        subject: The subject of a message (a function of the message, or of the raw frame when the
            sink is registered with ``client.on_message``).
        msg_id: Its ``Nats-Msg-Id``: the same message must get the same id in every feeder.
        payload: ``"raw"`` (the frame as received, the default), ``"json"`` (the model's JSON) or
            a function of the message returning bytes.
        stream: A stream to create (or update) on connect; ``None`` expects it to exist.
        max_pending: The window: publishes unacknowledged at a time before handlers wait.
        ack_timeout: Seconds an acknowledgement may take before the window is sent again.
        reconnect_initial: The first backoff delay (seconds) between connection attempts.
        reconnect_max: The longest backoff delay (seconds) between connection attempts.
        connect_timeout: Seconds one connection attempt may take.
        ping_interval: Seconds between NATS pings, which notice a silent server (two missed end
            the connection).
        name: The connection's name, as the NATS server shows it.
    """

    _bus = "NATS"

    def __init__(
        self,
        servers: str | Sequence[str] = "nats://127.0.0.1:4222",
        *,
        subject: Callable[[Any], str],
        msg_id: Callable[[Any], str],
        payload: Payload = "raw",
        stream: JetStreamSpec | None = None,
        max_pending: int = 4096,
        ack_timeout: float = 5.0,
        reconnect_initial: float = 0.05,
        reconnect_max: float = 2.0,
        connect_timeout: float = 2.0,
        ping_interval: float = 5.0,
        name: str | None = None,
    ) -> None:
        if not callable(subject):
            raise TypeError("subject must be a function of the message returning the subject")
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
        self.servers = [servers] if isinstance(servers, str) else list(servers)
        if not self.servers:
            raise ValueError("servers must name at least one NATS URL")
        self._subject = subject
        self.stream = stream
        self.name = name
        self._nc: NatsClient | None = None
        self._inbox = ""
        self._rewinding = False

    # -- the handler ------------------------------------------------------------------------------

    def __call__(self, msg: Any, frame: Data | None = None) -> Awaitable[None] | None:
        """Publish ``msg``; returns an awaitable only when the window is full (back-pressure)."""
        self._check_open()
        subject, msg_id = self._subject(msg), self._msg_id(msg)
        # Checked here, where a bad one is this message's handler error: written later, nats-py
        # would refuse it in the I/O loop, which can only take it for a broken connection.
        if subject.__class__ is not str or not _SUBJECT(subject):
            raise ValueError(f"not a NATS subject to publish to: {subject!r:.80}")
        if msg_id.__class__ is not str or not _MSG_ID_OK(msg_id):
            raise ValueError(f"not a message id for the Nats-Msg-Id header: {msg_id!r:.80}")
        return self._accept(Entry(subject, msg_id, self._payload(msg, frame)))

    def _where(self) -> str:
        return ", ".join(redact_url(server) for server in self.servers)

    # -- the I/O loop -----------------------------------------------------------------------------

    async def _run(self) -> None:
        """Connect, send what is due, watch the acknowledgements' deadlines; reconnect on loss."""
        window = self._window
        while True:
            nc = await self._connect()
            window.rewind()  # everything unacknowledged goes again, in order, on the new connection
            try:
                await self._pump(nc)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._note("connection", "NATS connection lost (%s): reconnecting", exc)
            await self._drop_connection()

    async def _pump(self, nc: NatsClient) -> None:
        window, wake, inbox = self._window, self._wake, self._inbox
        publish = nc.publish
        while True:
            if nc.is_closed or not nc.is_connected:
                raise ConnectionError("the NATS connection closed")
            item = window.next_to_send()
            if item is not None:
                token, entry = item
                await publish(entry.key, entry.payload, inbox + str(token), {_MSG_ID: entry.msg_id})
                continue
            if window.entries:
                if window.overdue(self.ack_timeout) is not None:
                    window.timeouts += 1
                    self._note("timeout", "NATS acknowledgement overdue: sending the window again")
                    window.rewind()
                    continue
                sent_at = window.oldest_sent_at()
                delay = self.ack_timeout if sent_at is None else sent_at + self.ack_timeout - _now()
                delay = min(max(delay, 0.001), self._ping_interval)
            else:
                delay = self._ping_interval
            wake.clear()
            if window.has_due:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), delay)

    async def _open(self) -> NatsClient:
        nc = await nats.connect(
            self.servers,
            name=self.name,
            allow_reconnect=False,
            connect_timeout=self._connect_timeout,
            ping_interval=self._ping_interval,
            max_outstanding_pings=2,
            # One attempt per server and call, no wait of nats-py's own: the backoff is the sink's.
            max_reconnect_attempts=1,
            reconnect_time_wait=0,
            error_cb=self._on_nats_error,
            disconnected_cb=self._on_disconnect,
            closed_cb=self._on_disconnect,
        )
        try:
            if self.stream is not None:
                await _ensure_stream(nc, self.stream)
            self._inbox = nc.new_inbox() + "."
            await nc.subscribe(self._inbox + "*", cb=self._on_ack)
        except BaseException:
            await nc.close()
            raise
        self._nc = nc
        self._connects += 1
        self._connected.set()
        if self._connects > 1:
            _log.info("NATS sink reconnected to %s", nc.connected_url.netloc if nc.connected_url else "?")
        return nc

    async def _drop_connection(self) -> None:
        self._connected.clear()
        nc, self._nc = self._nc, None
        if nc is not None and not nc.is_closed:
            # Closing a broken connection: nothing more to learn from it.
            with contextlib.suppress(Exception):
                await nc.close()

    async def _on_ack(self, msg: Msg) -> None:
        subject = msg.subject
        try:
            token = int(subject[subject.rindex(".") + 1 :])
        except ValueError:
            return
        data = msg.data
        window = self._window
        if data and _ERROR not in data:
            window.acked(token, duplicate=_DUPLICATE in data)
            return
        # A refusal ({"error": ...}) or a status without payload (503: no stream listens yet).
        if window.failed(token):
            detail = data[:200].decode(errors="replace") if data else (msg.headers or {}).get("Status", "")
            self._note("refused", "JetStream refused a publish (%s): sending again", detail)
            if not self._rewinding:
                self._rewinding = True
                asyncio.get_running_loop().call_later(self._reconnect[0], self._rewind)

    def _rewind(self) -> None:
        self._rewinding = False
        self._window.rewind()
        self._wake.set()

    async def _on_nats_error(self, exc: Exception) -> None:
        self._note("nats-error", "NATS client error: %s", exc)

    async def _on_disconnect(self) -> None:
        self._connected.clear()
        self._wake.set()


_now = time.monotonic


async def _ensure_stream(nc: NatsClient, spec: JetStreamSpec) -> None:
    """Create the stream, or bring an existing one to ``spec``."""
    from nats.js.api import StorageType, StreamConfig

    config = StreamConfig(
        name=spec.name,
        subjects=list(spec.subjects),
        duplicate_window=spec.duplicate_window,
        storage=StorageType.FILE if spec.storage == "file" else StorageType.MEMORY,
        max_age=spec.max_age,
        max_msgs=spec.max_msgs,
        num_replicas=spec.replicas,
    )
    js = nc.jetstream()
    try:
        await js.add_stream(config)
    except BadRequestError:  # exists with another configuration
        await js.update_stream(config)
