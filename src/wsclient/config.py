"""Configuration models.

All three models are frozen pydantic models: every constraint is checked when the object is built, and
a bad value fails there with a message naming the field and what to change, never later on a live
connection.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import ssl
from collections.abc import Callable, Generator, Hashable
from typing import Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from .codec import Codec
from .errors import ConfigError
from .policy import Decision, Failure
from .redact import redact_url
from .transport.proxy import check_proxy_setting

__all__ = [
    "VENUE_PROFILES",
    "ClientConfig",
    "Heartbeat",
    "PingReply",
    "Reconnect",
    "VenueLimits",
    "validate_url",
]

Data = str | bytes

DEFAULT_FATAL_CLOSE_CODES: frozenset[int] = frozenset({1002, 1003, 1007, 1008, 1010})
DEFAULT_FATAL_STATUSES: frozenset[int] = frozenset({401, 403, 404})

_FROZEN = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)


class Heartbeat(BaseModel):
    """How the client proves the link is alive, and how fast it notices that it is not.

    * ``mode="protocol"`` sends RFC 6455 pings with a random payload and waits for the matching pong.
    * ``mode="message"`` sends ``message`` (an application ping such as ``{"op": "ping"}`` or the text
      ``"ping"``) and recognises the reply with ``is_pong``; matched replies are not dispatched.
    * ``mode="off"`` sends nothing (``receive_timeout`` still applies).

    A ping unanswered within ``timeout`` declares the link dead, unless inbound frames arrived or the
    outbound buffer drained meanwhile (the link is visibly working, only slowly) or the client's own
    inbound queue is full (the client is the bottleneck, not the link).
    """

    model_config = _FROZEN

    mode: Literal["protocol", "message", "off"] = "protocol"
    interval: float = Field(15.0, gt=0, description="Seconds between pings.")
    timeout: float = Field(10.0, gt=0, description="Seconds to wait for the pong.")
    server_idle_timeout: float | None = Field(
        None,
        gt=0,
        description="Idle timeout of the server or proxy (nginx proxy_read_timeout: 60 s); "
        "the interval must stay below it.",
    )
    receive_timeout: float | None = Field(
        None, gt=0, description="A feed silent for this long is dead, even if pongs still arrive."
    )
    when: Literal["always", "idle"] = Field(
        "always",
        description='"always": ping every interval; "idle": only after interval seconds '
        "without an inbound frame (inbound traffic counts as liveness).",
    )
    message: str | bytes | dict[str, Any] | None = Field(
        None, description='Application ping payload for mode="message".'
    )
    is_pong: Callable[[Data], bool] | None = Field(
        None, description='Predicate recognising the application pong for mode="message".'
    )

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.server_idle_timeout is not None and self.interval >= self.server_idle_timeout:
            raise ValueError(
                f"heartbeat.interval ({self.interval}s) must be below server_idle_timeout "
                f"({self.server_idle_timeout}s), or the server/proxy cuts the idle link before the "
                f"first ping: lower interval (e.g. to {self.server_idle_timeout / 2:g})"
            )
        if self.mode == "message" and (self.message is None or self.is_pong is None):
            raise ValueError(
                'heartbeat mode="message" needs both message= (the ping payload) and is_pong= '
                "(a predicate recognising the reply)"
            )
        return self


class Reconnect(BaseModel):
    """Reconnect policy: exponential backoff with jitter, bounded in attempts and/or time.

    The delay before retry *n* is drawn from ``[d·(1 - jitter), d]`` with
    ``d = min(max_delay, initial_delay · multiplier**(n-1))``: the jitter is taken *after* the cap, so
    a fleet that lost its server for a long time keeps retrying spread out rather than in lock-step.
    ``jitter=0.5`` (the default) is "equal jitter", ``1`` "full jitter", ``0`` none. A server's
    ``Retry-After`` (429/503) raises the delay, up to ``max_retry_after`` (by default 10 × ``max_delay``,
    at least 60 s); a longer request is cut to it and reported in ``ConnectFailed.retry_after``.

    The count of consecutive failed attempts only resets after a connection stayed open
    ``reset_after`` seconds, so a server that accepts and drops at once sees growing delays, never a
    tight loop.

    ``classify`` is for venues with their own close codes: a function of a
    :class:`~wsclient.policy.Failure` (close code and reason, HTTP status and headers, the exception)
    that returns a :class:`~wsclient.policy.Decision` (``Decision.retry()``,
    ``Decision.retry(after=seconds)``, ``Decision.fatal(reason)``), or ``None`` for the default rules
    (``fatal_close_codes``, ``fatal_statuses``…). It runs before them, so it may also retry what they
    call fatal. A classifier that raises is logged and the default rules apply::

        def centrifuge(failure: Failure) -> Decision | None:
            code = failure.close_code
            if failure.by_peer and code is not None and (3500 <= code < 4000 or 4500 <= code < 5000):
                return Decision.fatal(f"the server said not to reconnect ({code})")
            return None

        Reconnect(classify=centrifuge)
    """

    model_config = _FROZEN

    initial_delay: float = Field(0.5, gt=0, description="First backoff delay in seconds.")
    max_delay: float = Field(30.0, gt=0, description="Cap on a backoff delay in seconds.")
    multiplier: float = Field(2.0, ge=1, description="Growth factor between delays.")
    jitter: float = Field(
        0.5,
        ge=0,
        description="Random share of each (capped) delay: the wait is drawn from [d·(1-jitter), d]; "
        "0.5 is equal jitter, 1 full jitter, 0 none.",
    )
    max_attempts: int | None = Field(
        None, ge=1, description="Consecutive failed attempts before giving up; None: no limit."
    )
    max_elapsed: float | None = Field(
        None, gt=0, description="Seconds of consecutive failures before giving up; None: no limit."
    )
    reset_after: float = Field(
        10.0, ge=0, description="Seconds a connection must stay open to reset the attempt count."
    )
    max_retry_after: float | None = Field(
        None,
        gt=0,
        description="Longest Retry-After honoured, in seconds; a longer one is cut to this (and "
        "reported). None: 10 × max_delay, at least 60 s.",
    )
    fatal_close_codes: frozenset[int] = Field(
        DEFAULT_FATAL_CLOSE_CODES, description="Server close codes that stop reconnecting."
    )
    fatal_statuses: frozenset[int] = Field(
        DEFAULT_FATAL_STATUSES, description="Handshake HTTP statuses that stop reconnecting."
    )
    classify: Callable[[Failure], Decision | None] | None = Field(
        None,
        description="A function of a Failure returning a Decision (retry, retry after N seconds, "
        "fatal) or None for the default rules; asked first on every failure.",
    )

    @field_validator("classify", mode="before")
    @classmethod
    def _check_classify(cls, value: object) -> object:
        if value is None:
            return value
        if not callable(value):
            raise ValueError(
                f"reconnect.classify must be a function of a Failure returning a Decision or None, got "
                f"{type(value).__name__}: pass the function itself, e.g. Reconnect(classify=my_rules)"
            )
        if inspect.iscoroutinefunction(value) or inspect.iscoroutinefunction(type(value).__call__):
            raise ValueError(
                "reconnect.classify must be a plain (sync) function: it decides between two attempts "
                "and must not wait on I/O; compute what it needs beforehand"
            )
        return value

    @field_validator("jitter")
    @classmethod
    def _check_jitter(cls, value: float) -> float:
        if value > 1:
            raise ValueError(
                f"reconnect.jitter ({value}) is the random share of each delay, between 0 and 1, not "
                "seconds: use 0.5 (equal jitter), 1 (full jitter) or 0 (none)"
            )
        return value

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.initial_delay > self.max_delay:
            raise ValueError(
                f"reconnect.initial_delay ({self.initial_delay}s) is above max_delay "
                f"({self.max_delay}s): raise max_delay or lower initial_delay"
            )
        return self

    @property
    def retry_after_cap(self) -> float:
        """The longest ``Retry-After`` honoured: ``max_retry_after``, or 10 × ``max_delay`` but at
        least a minute (a server's minute-scale ``Retry-After`` is honoured whatever the backoff)."""
        if self.max_retry_after is not None:
            return self.max_retry_after
        return max(10 * self.max_delay, 60.0)


VENUE_PROFILES: dict[str, dict[str, Any]] = {
    # Published limits, as plain data: the SDK holds no venue-specific code, only these numbers.
    "binance_spot": {
        "streams_per_connection": 1024,
        "subscribe_batch": 200,
        "messages_per_second": 5,
        "count_control_frames": True,  # pings and pongs count towards the 5 per second
        # One slot for the client's ping, one for its pong to the venue's own ping (every 20 s),
        # which the transport sends by itself and which may fall in the same second.
        "heartbeat_reserve": 2,
        "connects_per_window": 300,
        "connect_window": 300.0,
        "max_connection_age": 24 * 3600.0,
    },
    "okx": {
        "subscribe_batch": 50,
        "connects_per_window": 3,
        "connect_window": 1.0,
        "subscribes_per_hour": 480,
    },
    "bybit": {
        "subscribe_batch": 10,
        "connects_per_window": 500,
        "connect_window": 300.0,
    },
    "bitfinex": {
        "streams_per_connection": 25,
        "subscribe_batch": 1,
        "connects_per_window": 20,
        "connect_window": 60.0,
    },
}
"""The ready :class:`VenueLimits` profiles, by name (``VenueLimits.profile(name)``)."""


class VenueLimits(BaseModel):
    """What a venue allows one client, enforced by the client before the venue has to.

    * ``streams_per_connection``: a :class:`~wsclient.Pool` never puts more on one connection.
    * ``subscribe_batch``: streams per subscribe message a pool sends (and replays).
    * ``messages_per_second``: client messages per connection in any second (``message_window``);
      every data frame waits for the budget, the subscription replay is paced by it, never a burst.
      With ``count_control_frames`` the heartbeat's pings count too; ``heartbeat_reserve`` slots are
      kept for them, so the heartbeat is never starved by data.
    * ``connects_per_window`` / ``connect_window``: connection attempts, through one
      :class:`~wsclient.budget.ConnectGate` per client or pool (or one given and shared).
    * ``max_connection_age``: the connection is replaced make-before-break before the venue cuts
      it, at a random point of the last ``age_jitter`` share of its life, the overlap bounded by
      ``rotation_overlap`` seconds.
    * ``subscribes_per_hour``: subscription messages per connection and hour (replay included).
    * ``margin``: each window is widened by this share, for the jitter between sending and counting.
    """

    model_config = _FROZEN

    streams_per_connection: int | None = Field(None, ge=1, description="Streams one connection may carry.")
    subscribe_batch: int = Field(1, ge=1, description="Streams per subscribe message (Pool).")
    messages_per_second: int | None = Field(
        None, ge=1, description="Client messages per connection per message_window."
    )
    message_window: float = Field(1.0, gt=0, description="The window of messages_per_second, seconds.")
    count_control_frames: bool = Field(
        False, description="Whether the venue counts the client's pings and pongs as messages."
    )
    heartbeat_reserve: int = Field(
        1, ge=0, description="Message slots per window kept for pings and pongs (count_control_frames)."
    )
    connects_per_window: int | None = Field(None, ge=1, description="Connection attempts per connect_window.")
    connect_window: float = Field(1.0, gt=0, description="The window of connects_per_window, seconds.")
    max_connection_age: float | None = Field(
        None, gt=0, description="Seconds after which the venue cuts a connection."
    )
    age_jitter: float = Field(
        0.1, ge=0, lt=1, description="Share of max_connection_age over which rotations are spread."
    )
    rotation_overlap: float = Field(
        10.0, gt=0, description="Bound on a make-before-break rotation's overlap, seconds."
    )
    subscribes_per_hour: int | None = Field(
        None, ge=1, description="Subscription messages per connection and hour."
    )
    margin: float = Field(0.1, ge=0, le=1, description="Share added to each window, for network jitter.")

    @model_validator(mode="after")
    def _check(self) -> Self:
        mps = self.messages_per_second
        if mps is not None and self.count_control_frames and self.heartbeat_reserve >= mps:
            raise ValueError(
                f"heartbeat_reserve ({self.heartbeat_reserve}) leaves no message for data out of "
                f"messages_per_second ({mps}): lower heartbeat_reserve"
            )
        age = self.max_connection_age
        if age is not None and self.rotation_overlap >= age * (1 - self.age_jitter):
            raise ValueError(
                f"rotation_overlap ({self.rotation_overlap}s) must be shorter than the part of "
                f"max_connection_age ({age}s) before rotations start ({age * (1 - self.age_jitter):g}s): "
                "lower rotation_overlap or age_jitter"
            )
        return self

    @property
    def reserve(self) -> int:
        """Message slots per window data frames leave to the heartbeat."""
        return self.heartbeat_reserve if self.count_control_frames else 0

    @classmethod
    def profile(cls, name: str, **overrides: Any) -> VenueLimits:
        """The ready profile ``name`` (a key of :data:`VENUE_PROFILES`), with ``overrides``."""
        try:
            data = VENUE_PROFILES[name]
        except KeyError:
            raise ConfigError(
                f"no venue profile {name!r}: choose one of {', '.join(sorted(VENUE_PROFILES))}, "
                "or build VenueLimits(...) with the venue's numbers"
            ) from None
        return cls(**{**data, **overrides})

    @classmethod
    def binance_spot(cls, **overrides: Any) -> VenueLimits:
        """Binance spot: 1024 streams and 5 messages per second (pings included) per connection,
        300 connects per 5 minutes, connections cut after 24 hours."""
        return cls.profile("binance_spot", **overrides)

    @classmethod
    def okx(cls, **overrides: Any) -> VenueLimits:
        """OKX: 3 connects per second, 480 subscribes per hour per connection."""
        return cls.profile("okx", **overrides)

    @classmethod
    def bybit(cls, **overrides: Any) -> VenueLimits:
        """Bybit: 500 connects per 5 minutes, 10 topics per subscribe message."""
        return cls.profile("bybit", **overrides)

    @classmethod
    def bitfinex(cls, **overrides: Any) -> VenueLimits:
        """Bitfinex: 25 channels per connection, one per subscribe message, 20 connects a minute."""
        return cls.profile("bitfinex", **overrides)


class PingReply(BaseModel):
    """A venue's application ping, answered by the client as the frame is read.

    Some venues ping at the application level and drop a client that misses two or three replies:
    HTX sends ``{"ping": ts}`` and expects ``{"pong": ts}``; Deribit sends a ``test_request`` and
    expects ``public/test``. A rule answers them before the frame joins the inbound queue, so a slow
    handler ahead of it can never delay the reply, and on the connection being opened too (during
    the ``on_connect`` hooks and the replay), never parked in the outbox.

    ``match(frame)`` gets the decoded frame (through the client's codec: JSON by default);
    ``reply(frame)`` returns the message to send (dict, model, str or bytes). ``hint`` is a string
    every such frame contains in its raw text: frames without it are not decoded twice (leave it
    None for compressed binary frames). ``deliver=True`` also hands the ping to the handlers.

    ``PingReply(match=lambda f: isinstance(f, dict) and "ping" in f,
    reply=lambda f: {"pong": f["ping"]}, hint='"ping"')``
    """

    model_config = _FROZEN

    match: Callable[[Any], bool]
    reply: Callable[[Any], Any]
    hint: str | None = Field(None, min_length=1, description="A substring of every matching text frame.")
    deliver: bool = Field(False, description="Also deliver the ping to on_message and typed handlers.")


class ClientConfig(BaseModel):
    """Everything about a :class:`~wsclient.Client` but its URL and headers."""

    # A rejected value is not quoted back: the proxy URL may hold a password.
    model_config = ConfigDict(
        frozen=True, extra="forbid", arbitrary_types_allowed=True, hide_input_in_errors=True
    )

    heartbeat: Heartbeat = Field(default_factory=Heartbeat)
    reconnect: Reconnect = Field(default_factory=Reconnect)
    open_timeout: float = Field(
        10.0, gt=0, description="Bound on TCP + TLS + WebSocket handshake, and on on_connect hooks."
    )
    close_timeout: float = Field(
        2.0, gt=0, description="Bound on the close handshake before the socket is aborted."
    )
    max_size: int | None = Field(
        2**20, gt=0, description="Largest inbound message in bytes; larger closes with 1009."
    )
    compression: Literal["deflate"] | None = Field(
        None, description='permessage-deflate: "deflate" or None (off; saves ~33 KiB per link).'
    )
    max_redirects: int = Field(
        5,
        ge=0,
        description="HTTP redirects of the handshake followed, within open_timeout; 0: none. Credential "
        "headers are not sent to another origin.",
    )
    subprotocols: tuple[str, ...] = ()
    user_agent: str | None = Field(None, description="User-Agent header; None: the library's.")
    ssl_context: ssl.SSLContext | None = Field(
        None, description="TLS settings for wss://; default: system trust store, verification on."
    )
    proxy: str | Literal[False] | None = Field(
        None,
        description="Proxy of every connection: a URL, http:// (CONNECT), socks5://, socks5h:// (the "
        "proxy resolves names), socks4://, socks4a://, with user:password@ if it wants them; None: from "
        "the environment (HTTPS_PROXY for wss://, HTTP_PROXY for ws://, ALL_PROXY, NO_PROXY), as curl "
        "reads it; False: never.",
    )
    inbound_queue: int = Field(
        10_000, ge=1, description="Frames buffered between the reader and the handlers."
    )
    inbound_overflow: Literal["block", "drop_oldest", "drop_newest"] = Field(
        "block",
        description='When the inbound queue is full: "block" stops reading (lossless, the '
        "dead-link verdict is suspended meanwhile) or drop and count.",
    )
    outbox_size: int = Field(1_000, ge=1, description="Sends queued while not connected.")
    outbox_overflow: Literal["raise", "drop_oldest", "drop_newest"] = "raise"
    replay_interval: float = Field(
        0.0, ge=0, description="Pause between replayed subscriptions, for venues' rate limits."
    )
    discriminator: str | tuple[str, ...] | Callable[[Any], Hashable | None] = Field(
        "type",
        description='Where a typed message\'s tag is: a field name ("type", "e"), a path to a nested '
        'tag (("arg", "channel")), or a function of the decoded frame.',
    )
    codec: Codec | None = Field(
        None, description="Frame codec for non-JSON feeds (e.g. GzipJsonCodec); None: JSON text."
    )
    request_id_field: str = Field(
        "id", min_length=1, description="Field carrying the correlation id of client.request()."
    )
    ping_replies: tuple[PingReply, ...] = Field(
        (), description="Application pings the client answers as they are read (PingReply rules)."
    )
    limits: VenueLimits | None = Field(
        None,
        description="The venue's limits on the client (message budget, connects, connection age); "
        "e.g. VenueLimits.binance_spot().",
    )
    transport: Literal["websockets", "picows"] = Field(
        "websockets",
        description='Transport backend: "websockets", or "picows" (faster; pip install \'wsclient[fast]\').',
    )

    @field_validator("proxy", mode="before")
    @classmethod
    def _check_proxy(cls, value: object) -> object:
        return check_proxy_setting(value)

    def __repr_args__(self) -> Generator[tuple[str | None, Any], None, None]:
        # The proxy's password stays out of reprs and str(), like every other credential.
        for name, value in super().__repr_args__():
            yield name, redact_url(value) if name == "proxy" and isinstance(value, str) else value

    @field_validator("transport")
    @classmethod
    def _check_transport(cls, value: str, info: ValidationInfo) -> str:
        if value == "picows":
            if importlib.util.find_spec("picows") is None:
                raise ValueError(
                    "transport='picows' needs the picows package: pip install 'wsclient[fast]' "
                    "(or use transport='websockets')"
                )
            # compression is declared above transport, so it has been validated already.
            if info.data.get("compression") is not None:
                raise ValueError(
                    "transport='picows' does not support compression: use compression=None, "
                    "or transport='websockets' for permessage-deflate"
                )
        return value

    @model_validator(mode="after")
    def _check_limits(self) -> Self:
        limits, hb = self.limits, self.heartbeat
        if (
            limits is not None
            and limits.messages_per_second is not None
            and limits.count_control_frames
            and hb.mode != "off"
        ):
            window = limits.message_window * (1 + limits.margin)
            pings = math.ceil(window / hb.interval)
            if pings > limits.heartbeat_reserve:
                raise ValueError(
                    f"heartbeat.interval ({hb.interval}s) sends up to {pings} pings per "
                    f"{window:g}s message window, more than limits.heartbeat_reserve "
                    f"({limits.heartbeat_reserve}) keeps for them: raise heartbeat.interval to at least "
                    f"{window / limits.heartbeat_reserve if limits.heartbeat_reserve else window:g}s or "
                    "raise heartbeat_reserve"
                )
        return self


def validate_url(url: str) -> str:
    """Check that ``url`` is an absolute ``ws://`` or ``wss://`` URL; raise :class:`ConfigError`."""
    if not isinstance(url, str):
        raise ConfigError(f"url must be a string such as 'wss://host/path', got {type(url).__name__}")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"url is malformed ({exc}): use 'wss://host[:port]/path'") from None
    if parts.scheme not in ("ws", "wss"):
        fix = "wss" if parts.scheme == "https" else "ws" if parts.scheme == "http" else "ws(s)"
        raise ConfigError(f"url scheme must be ws or wss, got {parts.scheme or 'none'!r}: write {fix}://…")
    if not parts.hostname:
        raise ConfigError("url has no host: write ws(s)://host[:port]/path")
    del port
    return url
