"""A feeder from configuration: a venue's streams through a :class:`~wsclient.Pool` into a message bus.

This is what ``wsclient feed CONFIG.toml`` runs. The file is read with :mod:`tomllib` and validated at
once into the frozen models below, so a mistake fails before anything connects, with a message
naming the field and the fix. String values may name environment variables: ``"${NATS_URL}"``, or
``"${NATS_URL:-nats://127.0.0.1:4222}"`` with a default.

::

    [venue]
    url = "wss://stream.binance.com:9443/ws"
    profile = "binance_spot"               # a VenueLimits profile; and/or [venue.limits] fields
    discriminator = "e"                    # where a typed message's tag is (a field, or a path)
    streams = ["btcusdt@trade", "ethusdt@trade"]
    subscribe = { method = "SUBSCRIBE", params = "{streams}", id = "{id}" }
    unsubscribe = { method = "UNSUBSCRIBE", params = "{streams}", id = "{id}" }

    [messages]
    model = "wsclient.testing.venue:VenueTrade"   # typed: a pydantic model, importable
    dedup_key = ["s", "t"]                 # (stream, sequence): exactly once through rotations
    # raw = true                           # or every JSON object frame as it came,
    # match = { e = "trade" }              #   only those with these values

    [sink]
    kind = "nats"
    servers = ["nats://127.0.0.1:4222"]
    subject = "md.trades.{s}"              # format fields: the message's fields (raw: its keys)
    id = "{s}:{t}"                         # Nats-Msg-Id: the same message, the same id in every feeder
    payload = "raw"                        # or "json" (the model's JSON; typed messages only)
    stream = { name = "MD", subjects = ["md.>"], duplicate_window = 120 }
    max_pending = 4096

    [fleet]                                # optional: feeders sharing the streams (wsclient.fleet)
    name = "feeders"
    redundancy = 2

Subscribe and unsubscribe messages are templates (a TOML table, or a JSON string): a string that is
exactly ``"{streams}"`` becomes the list of streams, ``"{id}"`` a request id (an integer counting up);
a list whose only element mentions ``{stream}`` is repeated once per stream with the name put in
(``args = ["publicTrade.{stream}"]``, ``args = [{ channel = "trades", instId = "{stream}" }]``).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import itertools
import json
import os
import re
import string
import time
import tomllib
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .config import VENUE_PROFILES, ClientConfig, Heartbeat, Reconnect, VenueLimits, validate_url
from .errors import ConfigError
from .pool import Pool
from .routing import SequenceGap

__all__ = [
    "FeedConfig",
    "FeedError",
    "Feeder",
    "FleetSection",
    "MessagesSection",
    "SinkSection",
    "VenueSection",
    "load_feed_config",
    "render_template",
]

_STRICT = ConfigDict(frozen=True, extra="forbid")
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


# -------------------------------------------------------------------------------------- templates


def _mentions(node: Any, token: str) -> bool:
    if isinstance(node, str):
        return token in node
    if isinstance(node, list):
        return any(_mentions(x, token) for x in node)
    if isinstance(node, dict):
        return any(_mentions(v, token) for v in node.values())
    return False


def _per_stream(node: Any, stream: str) -> Any:
    if isinstance(node, str):
        return node.replace("{stream}", stream)
    if isinstance(node, list):
        return [_per_stream(x, stream) for x in node]
    if isinstance(node, dict):
        return {k: _per_stream(v, stream) for k, v in node.items()}
    return node


def render_template(node: Any, streams: Sequence[str], request_id: int) -> Any:
    """The venue message for ``streams`` from a subscribe or unsubscribe template (see the module)."""
    if isinstance(node, str):
        if node == "{streams}":
            return list(streams)
        if node == "{id}":
            return request_id
        return node
    if isinstance(node, list):
        if len(node) == 1 and _mentions(node[0], "{stream}"):
            return [_per_stream(node[0], s) for s in streams]
        return [render_template(x, streams, request_id) for x in node]
    if isinstance(node, dict):
        return {k: render_template(v, streams, request_id) for k, v in node.items()}
    return node


def _message_template(value: Any) -> Any:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ValueError(
                f"not JSON ({exc}): write a TOML table such as "
                '{ method = "SUBSCRIBE", params = "{streams}", id = "{id}" }, or a JSON object string'
            ) from None
    if not isinstance(value, dict | list):
        raise ValueError("must be a table (a JSON object) with a {streams} placeholder")
    if not _mentions(value, "{streams}") and not _mentions(value, "{stream}"):
        raise ValueError(
            'has no placeholder for the streams: put "{streams}" where the list of streams goes, '
            'or a one-element list mentioning "{stream}" to repeat per stream'
        )
    return value


def _format_fields(template: str, what: str) -> tuple[str, ...]:
    """The top-level names a ``str.format`` template reads (``{s}``, ``{data[0][s]}`` -> ``data``)."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(
            f"{what} {template!r} is not a valid template ({exc}): write e.g. 'md.trades.{{s}}'"
        ) from None
    names: list[str] = []
    for _, field, _, _ in parsed:
        if field is None:
            continue
        root = re.split(r"[.\[]", field, maxsplit=1)[0]
        if not root or root.isdigit():
            raise ValueError(f"{what} {template!r}: name the field, e.g. {{s}}, not {{{field}}}")
        names.append(root)
    return tuple(names)


class _Fields(Mapping[str, Any]):
    """A typed message's fields as a mapping, for ``str.format_map``."""

    __slots__ = ("_msg",)

    def __init__(self, msg: Any) -> None:
        self._msg = msg

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self._msg, key)
        except AttributeError:
            raise KeyError(key) from None

    def __iter__(self) -> Any:
        return iter(type(self._msg).model_fields)

    def __len__(self) -> int:
        return len(type(self._msg).model_fields)


class FieldMissing(KeyError):
    """A subject or id template names a field the message does not have (a handler error)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "a field is missing"


def _formatter(template: str, typed: bool, what: str) -> Callable[[Any], str]:
    def render(msg: Any) -> str:
        try:
            return template.format_map(_Fields(msg) if typed else msg)
        except (KeyError, IndexError, AttributeError, TypeError) as exc:
            raise FieldMissing(f"{what} {template!r}: the message has no {exc}") from None

    return render


# -------------------------------------------------------------------------------------- the models


class VenueSection(BaseModel):
    """``[venue]``: where the streams come from and how to ask for them."""

    model_config = _STRICT

    url: str
    """The venue's ``ws://`` or ``wss://`` URL."""
    streams: tuple[str, ...] = Field(min_length=1)
    """The stream names, as the subscribe template puts them in."""
    subscribe: Any
    """The subscribe message template (see the module)."""
    unsubscribe: Any = None
    """The unsubscribe template; needed with ``[fleet]``, which removes streams at run time."""
    discriminator: str | tuple[str, ...] = "type"
    """Where a typed message's tag is: a field (``"e"``) or a path (``["arg", "channel"]``)."""
    profile: str | None = None
    """A :meth:`~wsclient.VenueLimits.profile` name (``binance_spot``, ``okx``, ``bybit``, ...)."""
    limits: dict[str, Any] | None = None
    """:class:`~wsclient.VenueLimits` fields, over the profile's."""
    heartbeat: Heartbeat = Field(default_factory=Heartbeat)
    """:class:`~wsclient.Heartbeat` fields (``interval``, ``timeout``, ...)."""
    reconnect: Reconnect = Field(default_factory=Reconnect)
    """:class:`~wsclient.Reconnect` fields."""
    stale_after: float | None = Field(None, gt=0)
    """Seconds of silence after which a stream is resubscribed (typed messages with ``dedup_key``
    whose first field is the stream's name as in ``streams``)."""
    headers: dict[str, str] = Field(default_factory=dict)
    """HTTP headers of the handshake (values masked in logs; use ``${ENV}`` for keys)."""

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        try:
            return validate_url(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("streams")
    @classmethod
    def _streams(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(not s for s in value):
            raise ValueError("a stream name must not be empty")
        if len(set(value)) != len(value):
            dup = next(s for s in value if value.count(s) > 1)
            raise ValueError(f"{dup!r} is listed twice")
        return value

    @field_validator("profile")
    @classmethod
    def _profile(cls, value: str | None) -> str | None:
        if value is not None and value not in VENUE_PROFILES:
            raise ValueError(
                f"no venue profile {value!r}: choose one of {', '.join(sorted(VENUE_PROFILES))}, or "
                "remove it and give the venue's numbers in [venue.limits]"
            )
        return value

    @field_validator("subscribe", "unsubscribe")
    @classmethod
    def _template(cls, value: Any) -> Any:
        return None if value is None else _message_template(value)

    @model_validator(mode="after")
    def _client_config(self) -> Self:
        self.client_config()  # the limits and the heartbeat must agree: checked now, not on a link
        return self

    def venue_limits(self) -> VenueLimits:
        """The profile's limits with ``limits`` over them."""
        try:
            if self.profile is not None:
                return VenueLimits.profile(self.profile, **(self.limits or {}))
            return VenueLimits(**(self.limits or {}))
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            message = str(first["msg"]).removeprefix("Value error, ")
            raise ValueError(f"limits{'.' + where if where else ''}: {message}") from None

    def client_config(self) -> ClientConfig:
        """The :class:`~wsclient.ClientConfig` of every shard."""
        try:
            return ClientConfig(
                discriminator=self.discriminator,
                heartbeat=self.heartbeat,
                reconnect=self.reconnect,
                limits=self.venue_limits(),
            )
        except ValidationError as exc:
            message = str(exc.errors()[0]["msg"]).removeprefix("Value error, ")
            raise ValueError(message) from None


def import_model(spec: str) -> type[BaseModel]:
    """The pydantic model named ``"package.module:Class"``."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{spec!r} is not 'package.module:Class' (e.g. 'wsclient.testing.venue:VenueTrade')")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"cannot import {module_name!r} ({exc}): put its directory on PYTHONPATH or install it"
        ) from None
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ValueError(f"module {module_name!r} has no {attr!r}")
    if not (isinstance(obj, type) and issubclass(obj, BaseModel)):
        raise ValueError(f"{spec!r} is not a pydantic model class (subclass wsclient.Message)")
    return obj


class MessagesSection(BaseModel):
    """``[messages]``: typed (``model``) or raw pass-through (``raw = true``)."""

    model_config = _STRICT

    model: str | None = None
    """``"package.module:Class"``: a pydantic model (a :class:`~wsclient.Message`) the frames
    validate as; frames it does not claim (acknowledgements) are ignored."""
    dedup_key: tuple[str, ...] | None = None
    """Typed: field names of ``(stream, ..., sequence)``, the last an integer that counts up per
    stream. Delivery is then exactly once and in order through rotations, and gaps are reported."""
    raw: bool = False
    """Raw pass-through: every JSON object frame, as received."""
    match: dict[str, Any] = Field(default_factory=dict)
    """Raw: only objects whose keys have these values (``{ e = "trade" }``); others are skipped."""

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        if (self.model is None) == (not self.raw):
            raise ValueError(
                'choose one: model = "package.module:Class" (typed) or raw = true (pass-through)'
            )
        if self.raw and self.dedup_key is not None:
            raise ValueError("dedup_key needs a typed model: remove it, or use model = ...")
        if self.model is not None and self.match:
            raise ValueError("match is for raw = true; a typed model is chosen by its tag")
        if self.model is not None:
            model = import_model(self.model)
            if self.dedup_key is not None:
                if len(self.dedup_key) < 2:
                    raise ValueError('dedup_key names the stream field(s) then the sequence: ["s", "t"]')
                unknown = [f for f in self.dedup_key if f not in model.model_fields]
                if unknown:
                    raise ValueError(
                        f"dedup_key: {', '.join(unknown)} not field(s) of {model.__name__} "
                        f"(fields: {', '.join(model.model_fields)})"
                    )
        return self

    def model_class(self) -> type[BaseModel] | None:
        """The typed model, or None for raw pass-through."""
        return None if self.model is None else import_model(self.model)

    def key_function(self) -> Callable[[Any], tuple[Hashable, int] | None] | None:
        """``message -> (stream, seq)`` from ``dedup_key``."""
        fields = self.dedup_key
        if fields is None:
            return None
        *stream_fields, seq_field = fields
        if len(stream_fields) == 1:
            (one,) = stream_fields
            return lambda m: (getattr(m, one), getattr(m, seq_field))
        return lambda m: (tuple(getattr(m, f) for f in stream_fields), getattr(m, seq_field))


class SinkSection(BaseModel):
    """``[sink]``: the bus, and what each message becomes there."""

    model_config = _STRICT

    kind: Literal["nats", "redis"] = "nats"
    """``"nats"`` (JetStream) or ``"redis"`` (streams, where this build has it)."""
    servers: tuple[str, ...] = ("nats://127.0.0.1:4222",)
    """The bus's URL(s)."""
    subject: str
    """Subject (NATS) or stream key (Redis): a ``str.format`` template of the message's fields
    (typed) or keys (raw), e.g. ``"md.trades.{s}"``."""
    id: str
    """The message id (``Nats-Msg-Id``), a template like ``subject``: every feeder must give the same
    message the same id, so the bus keeps one copy."""
    payload: Literal["raw", "json"] = "raw"
    """``"raw"``: the frame as received; ``"json"``: the typed model's JSON."""
    stream: dict[str, Any] | None = None
    """A JetStream stream to create or update on connect (``name``, ``subjects``,
    ``duplicate_window``, ``storage``, ``max_age``, ``max_msgs``, ``replicas``)."""
    max_pending: int = Field(4096, gt=0)
    """Publishes unacknowledged at a time; beyond it the feed waits (back-pressure, no loss)."""
    close_timeout: float = Field(10.0, gt=0)
    """Seconds the sink waits for the last acknowledgements on exit."""

    @field_validator("servers", mode="before")
    @classmethod
    def _servers(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @field_validator("subject", "id")
    @classmethod
    def _templates(cls, value: str, info: Any) -> str:
        fields = _format_fields(value, info.field_name)
        if info.field_name == "id" and not fields:
            raise ValueError(
                f"id {value!r} names no field: every message would get the same id and the bus "
                'would keep only the first; write e.g. "{s}:{t}"'
            )
        return value

    @model_validator(mode="after")
    def _bus(self) -> Self:
        if self.kind == "nats":
            try:
                from .sinks.nats import JetStreamSpec
            except ImportError as exc:
                raise ValueError(str(exc)) from None
            if self.stream is not None:
                try:
                    JetStreamSpec.model_validate(self.stream)
                except ValidationError as exc:
                    first = exc.errors()[0]
                    where = ".".join(str(p) for p in first["loc"])
                    message = str(first["msg"]).removeprefix("Value error, ")
                    raise ValueError(f"stream.{where}: {message}") from None
        else:
            try:
                importlib.import_module("wsclient.sinks.redis")
            except ImportError as exc:
                raise ValueError(str(exc)) from None
            if self.stream is not None:
                raise ValueError("stream is a JetStream setting: remove it with kind = redis")
        return self


class FleetSection(BaseModel):
    """``[fleet]``: feeders sharing the streams through the bus (:class:`wsclient.fleet.Fleet`)."""

    model_config = _STRICT

    name: str = Field("feeders", pattern=r"^[a-zA-Z0-9_-]+$")
    """The fleet's name (letters, digits, ``-``, ``_``: it names its key-value bucket): feeders
    with the same name share its streams."""
    member: str | None = Field(None, min_length=1)
    """This feeder's id in the fleet, unique (default: host, pid and a random suffix)."""
    redundancy: int = Field(1, ge=1)
    """Feeders carrying each stream (2: one may die without a gap)."""
    lease: float = Field(5.0, gt=0.5)
    """Seconds a member stays in the fleet without renewing its lease."""
    handoff: float | None = Field(None, ge=0)
    """Seconds a stream stays here after another member took it over (default: ``lease``)."""
    servers: tuple[str, ...] | None = None
    """The NATS server(s) of the fleet's membership (default: the sink's)."""

    @field_validator("servers", mode="before")
    @classmethod
    def _servers(cls, value: Any) -> Any:
        return (value,) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _available(self) -> Self:
        if importlib.util.find_spec("wsclient.fleet") is None:
            raise ValueError(
                "[fleet] needs wsclient.fleet, which this build does not have: remove [fleet] "
                "(this feeder then carries every stream)"
            )
        return self


class FeedConfig(BaseModel):
    """A ``wsclient feed`` configuration: ``[venue]``, ``[messages]``, ``[sink]``, optional ``[fleet]``."""

    model_config = _STRICT

    venue: VenueSection
    messages: MessagesSection
    sink: SinkSection
    fleet: FleetSection | None = None

    @model_validator(mode="after")
    def _together(self) -> Self:
        model = self.messages.model_class()
        if model is not None:
            fields = model.model_fields
            for what in ("subject", "id"):
                template = getattr(self.sink, what)
                unknown = [f for f in _format_fields(template, what) if f not in fields]
                if unknown:
                    raise ValueError(
                        f"sink.{what} {template!r}: {', '.join(unknown)} not field(s) of "
                        f"{model.__name__} (fields: {', '.join(fields)})"
                    )
        elif self.sink.payload == "json":
            raise ValueError('sink.payload = "json" needs a typed model: use payload = "raw" with raw = true')
        if self.venue.stale_after is not None and self.messages.dedup_key is None:
            raise ValueError(
                "venue.stale_after needs messages.dedup_key (the pool watches each stream by it)"
            )
        if self.fleet is not None:
            if self.venue.unsubscribe is None:
                raise ValueError(
                    "[fleet] moves streams between feeders: give venue.unsubscribe, the template of "
                    "the venue's unsubscribe message"
                )
            if self.fleet.servers is None and self.sink.kind != "nats":
                raise ValueError("fleet.servers: name the NATS server(s) of the fleet (the sink is not NATS)")
        return self

    @classmethod
    def from_toml(cls, text: str, *, environ: Mapping[str, str] | None = None) -> FeedConfig:
        """Parse and validate a TOML document (``${VAR}`` expanded from ``environ``)."""
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"not valid TOML: {exc}") from None
        data = _expand(data, os.environ if environ is None else environ, ())
        return cls.model_validate(data)


def load_feed_config(path: str | os.PathLike[str]) -> FeedConfig:
    """Read and validate a ``wsclient feed`` TOML file; :class:`ConfigError` or pydantic's
    ``ValidationError`` on a mistake."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text") from None
    return FeedConfig.from_toml(text)


def _expand(node: Any, environ: Mapping[str, str], where: tuple[str, ...]) -> Any:
    if isinstance(node, str):

        def value(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            found = environ.get(name)
            if found is not None:
                return found
            if default is not None:
                return default
            raise ConfigError(
                f"{'.'.join(where)}: environment variable {name} is not set: set it, or write "
                f"${{{name}:-default}}"
            )

        return _ENV.sub(value, node)
    if isinstance(node, list):
        return [_expand(x, environ, (*where, str(i))) for i, x in enumerate(node)]
    if isinstance(node, dict):
        return {k: _expand(v, environ, (*where, k)) for k, v in node.items()}
    return node


# -------------------------------------------------------------------------------------- the feeder


class FeedError(RuntimeError):
    """A feeder could not start (its fleet could not be joined)."""


@dataclass(slots=True)
class FeedFigures:
    """What a feeder counted itself (the pool and the sink count the rest)."""

    received: int = 0
    """Messages handed to the sink."""
    skipped: int = 0
    """Raw frames that were not JSON objects or did not ``match``."""
    handler_errors: int = 0
    """Messages that could not be published (a template's missing field, ...)."""
    last_error: str = ""
    gaps: int = 0
    """Sequence gaps reported (typed with ``dedup_key``)."""
    gap_messages: int = 0
    """Messages the gaps missed."""


class Feeder:
    """The pool, the sink and the fleet of a :class:`FeedConfig`, wired; run with :meth:`run`."""

    def __init__(self, config: FeedConfig) -> None:
        self.config = config
        self.figures = FeedFigures()
        self.t0 = time.monotonic()
        venue, messages = config.venue, config.messages
        ids = itertools.count(1)
        subscribe_template, unsubscribe_template = venue.subscribe, venue.unsubscribe

        def subscribe(streams: Sequence[str]) -> Any:
            return render_template(subscribe_template, streams, next(ids))

        unsubscribe: Callable[[Sequence[str]], Any] | None = None
        if unsubscribe_template is not None:

            def unsubscribe(streams: Sequence[str]) -> Any:
                return render_template(unsubscribe_template, streams, next(ids))

        self.pool = Pool(
            venue.url,
            subscribe=subscribe,
            unsubscribe=unsubscribe,
            config=venue.client_config(),
            headers=venue.headers or None,
            dedup_key=messages.key_function(),
            stale_after=venue.stale_after,
        )
        self.sink = self._make_sink()
        self.model = messages.model_class()
        self.fleet: Any = None
        self.final_sink_stats: Any = None
        """The sink's figures once :meth:`run` has closed it."""
        self.pool.on_error(self._on_error)
        self.pool.on_gap(self._on_gap)
        self.pool.on_unknown(lambda frame: None)  # acknowledgements and other events: not ours
        if self.model is not None:
            self.pool.on(self.model, self._counting(self.sink), with_frame=config.sink.payload == "raw")
        else:
            self.pool.on_message(self._raw(self.sink))

    def _make_sink(self) -> Any:
        sink = self.config.sink
        typed = self.config.messages.model is not None
        subject = _formatter(sink.subject, typed, "subject")
        msg_id = _formatter(sink.id, typed, "id")
        if sink.kind == "nats":
            from .sinks.nats import JetStreamSpec, NatsJetStreamSink

            return NatsJetStreamSink(
                list(sink.servers),
                subject=subject,
                msg_id=msg_id,
                payload=sink.payload,
                stream=JetStreamSpec.model_validate(sink.stream) if sink.stream is not None else None,
                max_pending=sink.max_pending,
                name="wsclient-feed",
            )
        from .sinks.redis import RedisStreamSink

        # For Redis the subject template names the stream key (e.g. "md:trades:{s}").
        return RedisStreamSink(
            sink.servers[0],
            stream=subject,
            msg_id=msg_id,
            payload=sink.payload,
            max_pending=sink.max_pending,
            name="wsclient-feed",
        )

    def _counting(self, sink: Any) -> Callable[..., Any]:
        figures = self.figures

        def handler(msg: Any, frame: Any = None) -> Any:
            result = sink(msg, frame)
            figures.received += 1  # after the call: a template that fails counts as an error only
            return result

        handler.wants_frame = sink.wants_frame  # type: ignore[attr-defined]
        return handler

    def _raw(self, sink: Any) -> Callable[[Any], Any]:
        figures = self.figures
        match = tuple(self.config.messages.match.items())
        loads = json.loads

        def handler(frame: Any) -> Any:
            try:
                obj = loads(frame)
            except ValueError:
                figures.skipped += 1
                return None
            if not isinstance(obj, dict) or any(obj.get(k, _ABSENT) != v for k, v in match):
                figures.skipped += 1
                return None
            result = sink(obj, frame)
            figures.received += 1
            return result

        return handler

    def _on_error(self, item: object, exc: BaseException) -> None:
        self.figures.handler_errors += 1
        self.figures.last_error = f"{type(exc).__name__}: {exc}"

    def _on_gap(self, gap: SequenceGap) -> None:
        self.figures.gaps += 1
        self.figures.gap_messages += gap.missing

    def _make_fleet(self) -> Any:
        fleet = self.config.fleet
        assert fleet is not None
        fleet_class: Any = importlib.import_module(f"{__package__}.fleet").Fleet
        servers = list(fleet.servers if fleet.servers is not None else self.config.sink.servers)
        return fleet_class(
            self.pool,
            servers,
            list(self.config.venue.streams),
            name=fleet.name,
            member=fleet.member,
            redundancy=fleet.redundancy,
            lease=fleet.lease,
            handoff=fleet.handoff,
        )

    async def run(
        self,
        stop: asyncio.Event,
        *,
        on_started: Callable[[], None] | None = None,
        on_stopping: Callable[[], None] | None = None,
    ) -> None:
        """Connect the sink, start the pool (and the fleet), run until ``stop`` is set, then close
        them in the order that loses nothing: fleet, pool, then the sink once it has every
        acknowledgement (or ``sink.close_timeout`` passed). ``on_started`` is called once the
        streams are handed to the pool (or the fleet), ``on_stopping`` before anything closes."""
        sink = self.sink
        try:
            async with contextlib.AsyncExitStack() as stack:
                stack.push_async_callback(sink.close, self.config.sink.close_timeout)
                starting = asyncio.ensure_future(sink.start())
                stopping = asyncio.ensure_future(stop.wait())
                try:
                    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    stopping.cancel()
                    if not starting.done():
                        starting.cancel()
                    await asyncio.gather(starting, stopping, return_exceptions=True)
                if stop.is_set():
                    return
                starting.result()
                await stack.enter_async_context(self.pool)
                if self.config.fleet is not None:
                    self.fleet = self._make_fleet()
                    try:
                        await stack.enter_async_context(self.fleet)
                    except Exception as exc:  # nats-py's errors, OSError, a refused bucket...
                        servers = ", ".join(self.fleet.servers)
                        raise FeedError(
                            f"cannot join fleet {self.config.fleet.name!r} through {servers}: "
                            f"{type(exc).__name__}: {exc}"
                        ) from None
                else:
                    self.pool.add_streams(self.config.venue.streams)
                if on_started is not None:
                    on_started()
                await stop.wait()
                if on_stopping is not None:
                    on_stopping()
        finally:
            self.final_sink_stats = sink.stats

    def fleet_figures(self) -> tuple[tuple[str, ...], int, str] | None:
        """``(members, streams this feeder carries, its member id)`` while a fleet runs."""
        fleet = self.fleet
        if fleet is None:
            return None
        try:
            stats = fleet.stats
            return tuple(stats.members), int(stats.mine), str(fleet.member)
        except Exception:  # a fleet still joining may have no figures yet
            return None


_ABSENT = object()


def describe_config(config: FeedConfig) -> str:
    """One line saying what a feed will do."""
    venue, messages, sink = config.venue, config.messages, config.sink
    what = messages.model.rsplit(":", 1)[-1] if messages.model else "raw frames"
    limits = f"profile {venue.profile}" if venue.profile else "own limits"
    return (
        f"{len(venue.streams)} stream(s) of {venue.url} ({limits}) as {what} → {sink.kind} "
        f"{', '.join(sink.servers)} subject {sink.subject!r} id {sink.id!r}"
    )
