"""Typed routing: raw frame → one pydantic validation → the handlers of the model it became.

This module is sans-I/O: no sockets, no tasks. The client's dispatcher feeds it one frame at a time,
in arrival order, and awaits what :meth:`Router.dispatch` returns (if anything) before the next
frame::

    router = Router(discriminator="e", on_error=report, on_unknown=log_unknown)
    router.register(Trade, on_trade)          # Trade has  e: Literal["trade"]
    router.register(Ack, on_ack, match=lambda o: isinstance(o, dict) and "result" in o)

    pending = router.dispatch(frame)          # validates once, runs sync handlers inline
    if pending is not None:                   # only when an async / in_thread handler ran
        await pending

How a frame is routed
---------------------
1. **Replies** (only while :class:`RequestTracker` requests are pending): a frame carrying the id of
   a pending request resolves that request's future and is not routed further.
2. **Tagged path** (the fast one): every model registered without ``match=`` declares its tag, and
   one pydantic validator over the union of those models, keyed by tag, validates the raw frame
   directly (``validate_json``: no ``json.loads``, no intermediate dict). The tag picks the model in
   O(1), whatever the number of models.
3. **Predicate path** (the slow one): when a frame has no tag, or a tag no model claims, the models
   registered with ``match=`` are tried in registration order on the decoded frame; the first whose
   predicate returns true is validated and handled. This is for frames such as acks
   (``{"result": null, "id": 1}``) or Bitfinex arrays (``[17, "hb"]``).
4. Otherwise the frame is **unknown** and goes to ``on_unknown``.

Every frame lands in exactly one of ``stats.handled``, ``stats.unknown`` or ``stats.invalid``. A
frame that cannot be decoded, or whose payload fails validation for the model its tag names, is
invalid and goes to ``on_error(raw, exc)``. A handler that raises goes to ``on_error(message, exc)``
and is logged on the ``"wsclient"`` logger; the remaining handlers and later frames still run.

Sequence numbers
----------------
A model's messages can carry a per-stream sequence number; give ``register(..., seq_key=...)`` or
define ``__wsclient_seq__`` on the model, and the router feeds a :class:`SequenceTracker` that
reports gaps and resets to ``on_gap``. See :class:`SequenceTracker` for the exact rules.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import itertools
import logging
from collections.abc import Awaitable, Callable, Hashable, Iterable
from dataclasses import dataclass
from enum import Enum
from types import CoroutineType
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, TypeVar, get_args, get_origin

from pydantic import BaseModel, ConfigDict, GetCoreSchemaHandler, GetPydanticSchema, TypeAdapter
from pydantic_core import CoreSchema, ValidationError, core_schema, from_json

from .codec import Codec, Data, JsonCodec, encode
from .logs import LogLimiter

if TYPE_CHECKING:
    from .dedup import Dedup

__all__ = [
    "DiscriminatorSpec",
    "Message",
    "Registration",
    "RequestTracker",
    "Router",
    "RouterStats",
    "SequenceGap",
    "SequenceTracker",
]

_log = logging.getLogger("wsclient")

M = TypeVar("M", bound=BaseModel)

DiscriminatorSpec = str | tuple[str, ...] | Callable[[Any], Hashable | None]
"""A field name, a path of field names to a nested tag, or a function of the decoded frame."""

SeqKey = Callable[[Any], "tuple[Hashable, int] | None"]

# Error types pydantic reports, with an empty location, when the tagged union could not pick a
# model: no tag, a tag no model claims, or a frame that is not an object at all (dict_type from
# validate_json, model_attributes_type from validate_python). These frames are candidates for
# predicate routing or unknown; every other error means a claimed but invalid frame.
_UNTAGGED = frozenset({"union_tag_not_found", "union_tag_invalid", "dict_type", "model_attributes_type"})

_UNDECODED: Any = object()  # sentinel: the frame has not been decoded to Python values yet

#: What a *sync* handler may raise and still only have failed itself. Sync code has no await point,
#: so nothing can cancel it from outside: a CancelledError it raises is its own (say, ``.result()``
#: of a cancelled future) and must not stop the reader or the dispatcher.
SYNC_HANDLER_FAILURES = (Exception, asyncio.CancelledError)


def handler_failed(exc: BaseException) -> bool:
    """Whether ``exc``, raised while awaiting a handler, is that handler's failure.

    False for what must stop dispatch: the current task's own cancellation, KeyboardInterrupt,
    SystemExit. A handler that lets a cancelled inner await escape has failed like any other.
    """
    if isinstance(exc, asyncio.CancelledError):
        task = asyncio.current_task()
        return task is not None and not task.cancelling()
    return isinstance(exc, Exception)


_PREVIEW = 200
_Coroutine = CoroutineType


class Message(BaseModel):
    """Base class for feed messages.

    Extra fields are ignored, so a venue adding a field to its messages does not break anyone.

    Declare the tag with a ``Literal`` on the discriminator field (``type`` by default)::

        class Trade(Message):
            type: Literal["trade"]
            symbol: str
            price: Decimal

    Several values (``Literal["trade", "aggTrade"]``) route all of them to the model. For a nested
    tag (``Router(discriminator=("arg", "channel"))``) the ``Literal`` sits on the nested model's
    field. With a callable discriminator, or when the model should not carry the tag as a field,
    set the class attribute ``__wsclient_tag__`` (one value, or a ``frozenset`` of values) or pass
    ``tag=`` to :meth:`Router.register`.

    To have the router check sequence numbers, define
    ``def __wsclient_seq__(self) -> tuple[Hashable, int] | None`` returning ``(stream, seq)``, or
    ``None`` for a message without one (a classmethod or staticmethod taking the message works too).
    """

    model_config = ConfigDict(extra="ignore")

    __wsclient_tag__: ClassVar[Hashable | None] = None


@dataclass(slots=True)
class RouterStats:
    """Live counters of a :class:`Router` (read them, don't write them).

    ``handled + unknown + invalid`` is the number of frames dispatched. ``replies`` counts frames
    consumed as request replies; they are also counted in ``handled`` (or, when the tracker's
    ``also_route`` is set, wherever their routing took them).
    """

    handled: int = 0
    unknown: int = 0
    invalid: int = 0
    handler_errors: int = 0
    """Exceptions raised by handlers and by ``seq_key`` functions."""
    hook_errors: int = 0
    """Exceptions raised by the ``on_error`` / ``on_unknown`` / ``on_gap`` hooks themselves."""
    replies: int = 0

    @property
    def frames(self) -> int:
        """Frames dispatched so far."""
        return self.handled + self.unknown + self.invalid


@dataclass(frozen=True, slots=True)
class SequenceGap:
    """A discontinuity in one stream's sequence numbers.

    ``kind="gap"``: ``received`` is above ``expected`` (``missing`` messages were lost).
    ``kind="reset"``: the sequence fell back (a venue restart, a new epoch); ``expected`` is what
    would have been contiguous. ``across_reconnect`` is true when the previous message of the
    stream came on an earlier connection, i.e. the loss happened while reconnecting.
    """

    stream: Hashable
    expected: int
    received: int
    kind: Literal["gap", "reset"]
    across_reconnect: bool

    @property
    def missing(self) -> int:
        """How many sequence numbers were skipped (0 for a reset)."""
        return self.received - self.expected if self.kind == "gap" else 0


class SequenceTracker:
    """Per-stream sequence-number bookkeeping: reports gaps and resets, counts duplicates.

    For each stream the tracker remembers the last sequence number seen and classifies the next:

    * ``last + 1``: contiguous, nothing reported (the fast, common case).
    * above ``last + 1``: a **gap** (``expected=last + 1``).
    * below ``last`` and at or below ``start``, or more than ``max_replay`` below ``last``: a
      **reset** (the venue restarted its counter); the new value becomes the baseline.
    * otherwise (``seq <= last``): a **duplicate** (a replay, e.g. after a resubscribe), counted
      in ``duplicates``; the baseline does not move. Duplicates are still delivered to handlers.

    The first number seen for a stream is only recorded. :meth:`mark_reconnect` marks every known
    stream, so that the first gap or reset after a reconnect says ``across_reconnect=True``.

    ``start`` defaults to 1, which covers counters restarting at 0 or at 1.
    """

    __slots__ = (
        "_after_reconnect",
        "_last",
        "duplicates",
        "gaps",
        "max_replay",
        "missing",
        "resets",
        "start",
    )

    def __init__(self, *, start: int = 1, max_replay: int = 1000) -> None:
        if max_replay < 0:
            raise ValueError(f"max_replay must be >= 0, got {max_replay}")
        self.start = start
        self.max_replay = max_replay
        self._last: dict[Hashable, int] = {}
        self._after_reconnect: set[Hashable] = set()
        self.gaps = 0
        """Gaps reported."""
        self.resets = 0
        """Resets reported."""
        self.duplicates = 0
        """Messages whose number was not above the last one (and was no reset)."""
        self.missing = 0
        """Sequence numbers skipped over all gaps."""

    def observe(self, stream: Hashable, seq: int) -> SequenceGap | None:
        """Record ``seq`` for ``stream``; return the discontinuity it reveals, if any."""
        last = self._last.get(stream)
        if last is not None and seq == last + 1:
            self._last[stream] = seq
            if self._after_reconnect:
                self._unmark(stream)
            return None
        return self._irregular(stream, seq, last)

    def _irregular(self, stream: Hashable, seq: int, last: int | None) -> SequenceGap | None:
        if last is None:
            self._last[stream] = seq
            return None
        kind: Literal["gap", "reset"]
        if seq > last:
            kind = "gap"
            self.gaps += 1
            self.missing += seq - last - 1
        elif seq < last and (seq <= self.start or last - seq > self.max_replay):
            kind = "reset"
            self.resets += 1
        else:
            # A duplicate keeps the reconnect mark: the gap, if any, shows on the next new number.
            self.duplicates += 1
            return None
        self._last[stream] = seq
        across = stream in self._after_reconnect
        if across:
            self._unmark(stream)
        return SequenceGap(stream, last + 1, seq, kind, across)

    def is_reset(self, stream: Hashable, seq: int) -> bool:
        """Whether ``seq``, below the stream's last number, is a reset rather than a copy."""
        last = self._last.get(stream)
        return last is not None and seq < last and (seq <= self.start or last - seq > self.max_replay)

    def _unmark(self, stream: Hashable) -> None:
        after = self._after_reconnect
        after.discard(stream)
        if not after:
            # A set keeps its table at its largest size: an empty one is made anew (~50 B a
            # stream after every reconnect of a feeder with thousands of streams).
            self._after_reconnect = set()

    def mark_reconnect(self, streams: Iterable[Hashable] | None = None) -> None:
        """Note that a new connection starts: the next gap on any known stream (or on those of
        ``streams``: the ones the new connection carries, when several share this tracker)
        straddles it."""
        if streams is None:
            self._after_reconnect.update(self._last)
        else:
            self._after_reconnect.update(s for s in streams if s in self._last)

    def last(self, stream: Hashable) -> int | None:
        """The last sequence number accepted for ``stream``."""
        return self._last.get(stream)

    def forget(self, stream: Hashable) -> None:
        """Drop what is known of ``stream`` (e.g. after resynchronising it from a snapshot)."""
        self._last.pop(stream, None)
        if stream in self._after_reconnect:
            self._unmark(stream)

    def clear(self) -> None:
        """Drop every stream's state (the counters are kept)."""
        self._last.clear()
        self._after_reconnect.clear()


class Judgement(Enum):
    """What :meth:`~wsclient.dedup.Dedup.judge` says of one message."""

    DELIVER = "deliver"
    DROP = "drop"
    HOLD = "hold"


_DELIVER, _HOLD = Judgement.DELIVER, Judgement.HOLD


class _Drop:
    __slots__ = ()


_DROP = _Drop()


class Overlap:
    """Which streams each of two overlapping links delivered (a rotation), and when the new one has
    caught up: every stream the old link delivered meanwhile, the new one delivered too."""

    __slots__ = ("_primary", "_secondary", "ready")

    def __init__(self, ready: asyncio.Future[None], expected: set[Hashable] | None = None) -> None:
        # The streams the old link carries: those delivered before the overlap, and any it
        # delivers meanwhile.
        self._primary: set[Hashable] = set(expected or ())
        self._secondary: set[Hashable] = set()
        self.ready = ready
        """Resolved once the new link has caught up."""

    def saw(self, stream: Hashable, secondary: bool) -> None:
        """A message of ``stream`` arrived on the new (``secondary``) or the old link."""
        if not secondary:
            # Only adds to what the new link must catch up with: nothing to decide here.
            self._primary.add(stream)
        elif stream not in self._secondary:
            self._secondary.add(stream)
            if not self.ready.done() and self._primary <= self._secondary:
                self.ready.set_result(None)

    @property
    def missing(self) -> int:
        """Streams the old link delivered that the new one has not yet."""
        return len(self._primary - self._secondary)


class RequestTracker:
    """Correlates requests with replies by an id field (``client.request``).

    The flow, for the client::

        request_id, frame = tracker.prepare(msg, codec)   # sets the id on a copy, encodes
        future = tracker.create(request_id)                # before sending: no reply is missed
        try:
            await connection.send(frame)
            return await asyncio.wait_for(future, timeout)
        finally:
            tracker.forget(request_id)

    and, when the connection drops, ``tracker.fail_all(ConnectionLostError(...))``.

    The router consults the tracker for each frame only while requests are pending, and then a
    JSON frame is only parsed when the text contains ``"<id_field>"``, so market data flowing past
    an outstanding request costs a substring search. A matching reply resolves the future with the
    decoded frame (usually a ``dict``; error replies too, the caller inspects them) and is not
    routed to handlers, unless ``also_route`` is set. Ids are matched by equality of the decoded
    value, so a venue must echo the id with the type it was sent with.
    """

    __slots__ = ("_ids", "_needle_bytes", "_needle_text", "also_route", "id_field", "outstanding")

    def __init__(self, id_field: str = "id", *, first_id: int = 1, also_route: bool = False) -> None:
        if not id_field:
            raise ValueError("id_field must be a non-empty field name")
        self.id_field = id_field
        self.also_route = also_route
        self._ids = itertools.count(first_id)
        self.outstanding: dict[Hashable, asyncio.Future[Any]] = {}
        """The requests awaiting a reply, by id. Read-only to others (the router tests it for
        emptiness on every frame), and always the same dict: it is emptied in place."""
        self._needle_text = f'"{id_field}"'
        self._needle_bytes = self._needle_text.encode()

    @property
    def pending(self) -> int:
        """Requests awaiting a reply."""
        return len(self.outstanding)

    def next_id(self) -> int:
        """A fresh request id (increasing integers from ``first_id``)."""
        return next(self._ids)

    def prepare(self, msg: object, codec: Codec | None = None) -> tuple[Hashable, Data]:
        """Give ``msg`` a request id and encode it; return ``(id, frame)``.

        ``msg`` is a ``dict`` or a pydantic model; it is never mutated. An id already present (a
        non-``None`` value for a dict, an explicitly set field for a model) is kept, so callers
        can choose their own ids. A model without the id field is dumped to a dict first. Raw
        ``str``/``bytes`` frames cannot carry a new id: :class:`TypeError`.
        """
        key = self.id_field
        if isinstance(msg, dict):
            request_id = msg.get(key)
            if request_id is None:
                request_id = self.next_id()
                msg = {**msg, key: request_id}
            return request_id, encode(msg, codec)
        if isinstance(msg, BaseModel):
            name = _field_name(type(msg), key)
            if name is None:
                data = msg.model_dump(mode="json", by_alias=True)
                request_id = data.get(key)
                if request_id is None:
                    request_id = data[key] = self.next_id()
                return request_id, encode(data, codec)
            request_id = getattr(msg, name)
            if request_id is None or name not in msg.model_fields_set:
                request_id = self.next_id()
                msg = msg.model_copy(update={name: request_id})
            return request_id, encode(msg, codec)
        raise TypeError(
            f"a request must be a dict or a pydantic model so that its {key!r} can be set, "
            f"not {type(msg).__name__}; send pre-encoded frames with send()"
        )

    def create(self, request_id: Hashable) -> asyncio.Future[Any]:
        """Register a pending request and return the future its reply will resolve.

        Must be called from the event loop. The entry disappears by itself once the future is
        done (resolved, failed or cancelled, e.g. by ``asyncio.wait_for`` on timeout), so a
        forgotten :meth:`forget` does not leak.
        """
        if request_id in self.outstanding:
            raise ValueError(f"request id {request_id!r} is already pending")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.outstanding[request_id] = future
        future.add_done_callback(functools.partial(self._discard, request_id))
        return future

    def _discard(self, request_id: Hashable, future: asyncio.Future[Any]) -> None:
        if self.outstanding.get(request_id) is future:
            del self.outstanding[request_id]

    def resolve(self, frame: Data, codec: Codec | None = None) -> bool:
        """If ``frame`` replies to a pending request, resolve its future and return True.

        Cheap when nothing is pending, and for JSON frames that do not contain the id field's
        name. Frames that cannot be decoded are simply not replies.
        """
        if not self.outstanding:
            return False
        if codec is None or type(codec) is JsonCodec:
            if isinstance(frame, str):
                if self._needle_text not in frame:
                    return False
            elif self._needle_bytes not in frame:
                return False
            loads: Callable[[Data], Any] = from_json
        else:
            loads = codec.loads
        try:
            obj = loads(frame)
        except Exception:
            return False
        return self.resolve_object(obj)

    def resolve_object(self, obj: Any) -> bool:
        """Like :meth:`resolve`, for a frame already decoded to Python values."""
        if not self.outstanding or not isinstance(obj, dict):
            return False
        request_id = obj.get(self.id_field)
        if request_id is None:
            return False
        try:
            future = self.outstanding.pop(request_id)
        except (KeyError, TypeError):  # TypeError: an unhashable id such as a list
            return False
        if future.done():
            return False
        future.set_result(obj)
        return True

    def forget(self, request_id: Hashable) -> None:
        """Stop waiting for ``request_id``; a still-pending future is cancelled. Idempotent."""
        future = self.outstanding.pop(request_id, None)
        if future is not None and not future.done():
            future.cancel()

    def fail_all(self, exc: BaseException) -> None:
        """Fail every pending request with ``exc`` at once (the connection was lost)."""
        # Emptied in place: a compiled Router.dispatch holds this dict.
        pending = list(self.outstanding.values())
        self.outstanding.clear()
        for future in pending:
            if not future.done():
                future.set_exception(exc)


class Registration:
    """A handler registered on a :class:`Router`; :meth:`cancel` removes it."""

    __slots__ = ("_router", "handler", "in_thread", "match", "model", "seq_key", "tags", "with_frame")

    def __init__(
        self,
        router: Router,
        model: type[BaseModel],
        handler: Callable[..., Any],
        match: Callable[[Any], bool] | None,
        in_thread: bool,
        seq_key: SeqKey | None,
        tags: tuple[Hashable, ...],
        with_frame: bool = False,
    ) -> None:
        self._router: Router | None = router
        self.model = model
        self.handler = handler
        self.match = match
        self.in_thread = in_thread
        self.seq_key = seq_key
        self.tags = tags
        """The tags routed to the model (empty for a predicate registration)."""
        self.with_frame = with_frame
        """The handler is called as ``handler(message, frame)``, with the raw frame it came from."""

    @property
    def active(self) -> bool:
        """False once cancelled."""
        return self._router is not None

    def cancel(self) -> None:
        """Unregister the handler; it gets no frame dispatched after this call. Idempotent."""
        router, self._router = self._router, None
        if router is not None:
            router._remove(self)

    def __repr__(self) -> str:
        how = "match" if self.match is not None else f"tags={list(self.tags)!r}"
        state = "" if self.active else ", cancelled"
        return f"<Registration {self.model.__name__} → {_name(self.handler)} ({how}{state})>"


@dataclass(frozen=True, slots=True)
class _Plan:
    """What to do with a validated message of one model; rebuilt when registrations change."""

    inline: tuple[Callable[[Any], Any], ...]
    """The leading plain sync handlers: called from dispatch() itself."""
    handlers: tuple[tuple[Callable[[Any], Any], bool], ...]
    """All handlers as (handler, in_thread), for the awaitable continuation."""
    deferred: bool
    """Some handler after ``inline`` is async or in_thread."""
    seq_key: SeqKey | None
    framed: tuple[tuple[Callable[..., Any], bool, bool], ...] | None = None
    """With a handler that wants the raw frame: all handlers as (handler, in_thread, with_frame),
    run by ``_run_framed`` (``inline`` is then empty, so no fast path takes the plan)."""


_Held = tuple[Any, _Plan, "Data | None"]
"""A message held by the de-duplicator: (message, plan, the frame it came from)."""


@dataclass(frozen=True, slots=True)
class _Rule:
    match: Callable[[Any], bool]
    validate: Callable[[Any], Any]
    plan: _Plan


class Router:
    """Validates frames into registered models and calls their handlers.

    ``discriminator`` says where a frame's tag is:

    * a field name (``"type"``, ``"e"``, ``"channel"``): the tag is that top-level key;
    * a tuple of names, a path to a nested tag: ``("arg", "channel")`` reads OKX's
      ``{"arg": {"channel": "trades"}, "data": [...]}``; each model declares the ``Literal`` on its
      nested model's field (``arg: TradesArg`` with ``channel: Literal["trades"]``);
    * a callable taking the decoded frame and returning its tag (or ``None`` for no tag; an
      exception it raises also means no tag). Models then name their tag with ``__wsclient_tag__``
      or ``register(..., tag=...)``. Frames are decoded once, the callable is called once, and the
      tag picks the model's validator from a dict: this skips the second call pydantic would make
      through a union, and costs about one JSON parse more than a field-name discriminator.

    For field names and paths the lookup happens inside pydantic-core, in Rust: the validator is a
    tagged union over all tagged models (the core schema pydantic builds for
    ``Annotated[Union[...], Field(discriminator=...)]``, generalised to paths and to one model). It
    is built once and rebuilt lazily, on the first dispatch after the set of tags changed.

    ``codec``: ``None`` or :class:`~wsclient.codec.JsonCodec` validates raw frames with
    ``validate_json``; any other codec decodes with ``codec.loads`` and validates with
    ``validate_python``.

    Hooks are plain functions called inline; an exception they raise is logged, counted in
    ``stats.hook_errors`` and otherwise ignored. Without ``on_error``, invalid frames are logged at
    WARNING on the ``"wsclient"`` logger; without ``on_unknown``, unknown ones at INFO; without
    ``on_gap``, gaps at WARNING. Handler errors are always logged at ERROR, and also passed to
    ``on_error``. All of these can repeat once per frame, so they go through ``log_limiter`` (a
    :class:`~wsclient.logs.LogLimiter`: a few lines per kind and minute, then a count of the lines
    suppressed), and frame previews through ``redact`` (the client's secrets masked).

    ``requests`` enables request/reply correlation (see :class:`RequestTracker`); ``sequences``
    lets several routers share one :class:`SequenceTracker` (one is created otherwise).
    """

    __slots__ = (
        "_by_tag",
        "_choices",
        "_discriminator",
        "_limiter",
        "_loads",
        "_on_error",
        "_on_gap",
        "_on_unknown",
        "_plans",
        "_redact",
        "_registrations",
        "_rules",
        "_secondary",
        "_streams",
        "_tagger",
        "_validate_json",
        "_validate_python",
        "codec",
        "dedup",
        "default_seq_key",
        "dispatch",
        "merging",
        "overlap",
        "requests",
        "sequences",
        "stats",
    )

    dispatch: Callable[[Data], Awaitable[None] | None]
    """``dispatch(frame)``: route one inbound frame; never raises (except a ``BaseException`` such
    as cancellation).

    Returns ``None`` when everything ran inline (sync handlers only), else an awaitable that runs the
    remaining (async or ``in_thread``) handlers in order; the caller must await it before dispatching
    the next frame, which is what keeps messages in arrival order.

    An attribute rather than a method: :meth:`rebuild` compiles it for the current registrations, with
    everything it reads bound as local variables (the per-frame path of a feed). A reference kept
    across later registrations stays correct: it hands over to the current one.
    """

    def __init__(
        self,
        *,
        discriminator: DiscriminatorSpec = "type",
        codec: Codec | None = None,
        on_error: Callable[[object, BaseException], None] | None = None,
        on_unknown: Callable[[Data], None] | None = None,
        on_gap: Callable[[SequenceGap], None] | None = None,
        requests: RequestTracker | None = None,
        sequences: SequenceTracker | None = None,
        log_limiter: LogLimiter | None = None,
        redact: Callable[[str], str] | None = None,
        dedup: Dedup | None = None,
        default_seq_key: SeqKey | None = None,
    ) -> None:
        self._limiter = log_limiter if log_limiter is not None else LogLimiter()
        self._redact: Callable[[str], str] = redact if redact is not None else str
        self._discriminator: str | tuple[str, ...] | None
        self._tagger: Callable[[Any], Hashable | None] | None
        if isinstance(discriminator, str):
            if not discriminator:
                raise ValueError("discriminator must be a non-empty field name")
            self._discriminator, self._tagger = discriminator, None
        elif isinstance(discriminator, tuple):
            if not discriminator or not all(isinstance(k, str) and k for k in discriminator):
                raise ValueError(
                    f"a discriminator path must be a non-empty tuple of field names, got {discriminator!r}"
                )
            self._discriminator = discriminator[0] if len(discriminator) == 1 else discriminator
            self._tagger = None
        elif callable(discriminator):
            self._discriminator, self._tagger = None, _safe_tagger(discriminator)
        else:
            raise TypeError(
                "discriminator must be a field name, a tuple of field names or a callable, "
                f"got {type(discriminator).__name__}"
            )
        if codec is not None and not isinstance(codec, Codec):
            raise TypeError(f"codec must have loads() and dumps(), got {type(codec).__name__}")
        self.codec: Codec = codec if codec is not None else JsonCodec()
        """The codec frames are decoded with (and :func:`~wsclient.codec.encode` should use)."""
        json = type(self.codec) is JsonCodec
        self._loads: Callable[[Data], Any] = from_json if json else self.codec.loads
        self._on_error = on_error
        self._on_unknown = on_unknown
        self._on_gap = on_gap
        self.requests = requests
        """The request tracker consulted before routing, if any."""
        if dedup is not None:
            sequences = dedup.sequences
        self.sequences = sequences if sequences is not None else SequenceTracker()
        """The sequence tracker fed by ``seq_key`` / ``__wsclient_seq__``."""
        self.dedup = dedup
        """With one, copies of delivered messages (by sequence) are dropped: exactly once."""
        self.default_seq_key = default_seq_key
        """The sequence key of models that have none of their own (a client's ``dedup_key``)."""
        self.merging = False
        """Two links carry this router's streams (a rotation's overlap): hold what runs ahead."""
        self.overlap: Overlap | None = None
        """Which streams each link delivered during a rotation's overlap, while one runs."""
        self._secondary = False
        self._streams: set[Hashable] = set()  # streams this router delivered (with a de-duplicator)
        self.stats = RouterStats()
        """Live counters."""
        self._registrations: list[Registration] = []
        self.dispatch = self._dispatch_dirty
        self._choices: dict[Hashable, type[BaseModel]] = {}
        self._plans: dict[type[BaseModel], _Plan] = {}
        self._rules: tuple[_Rule, ...] = ()
        self._by_tag: dict[Hashable, Callable[[Any], Any]] = {}
        self._validate_json: Callable[[Data], Any] | None = None
        self._validate_python: Callable[[Any], Any] | None = None

    # -- registration ---------------------------------------------------------------------------

    def register(
        self,
        model: type[M],
        handler: Callable[[M], Awaitable[None] | None],
        *,
        match: Callable[[Any], bool] | None = None,
        in_thread: bool = False,
        seq_key: Callable[[M], tuple[Hashable, int] | None] | None = None,
        tag: Hashable | list[Any] | set[Any] | None = None,
        with_frame: bool | None = None,
    ) -> Registration:
        """Route messages of ``model`` to ``handler``; return a handle to unregister it.

        ``handler`` may be sync or ``async``; a model may have several handlers, called one after
        the other in registration order (an async one is awaited before the next starts).
        ``in_thread=True`` runs a sync handler through :func:`asyncio.to_thread`, for blocking
        work; dispatch still waits for it, so ordering holds.

        Without ``match``, the model is routed by its tag: ``tag=`` if given (one value, or a
        ``list``/``set``/``frozenset`` of values), else the model's ``__wsclient_tag__``, else the
        ``Literal`` values of its discriminator field. Two models cannot share a tag.

        With ``match``, the model is on the predicate path, for frames without a usable tag:
        ``match`` gets the decoded frame (a predicate that raises counts as false). Registering
        another handler with the same model and the same predicate object adds it to that route.

        ``seq_key(message)`` returns ``(stream, seq)`` or ``None``; it overrides the model's
        ``__wsclient_seq__``. A model has at most one sequence key, whichever registration gives it.

        ``with_frame=True`` calls ``handler(message, frame)`` with the raw frame (``str`` or
        ``bytes``) the message was validated from, for handlers that pass it on untouched (a
        :mod:`wsclient.sinks` sink). ``None`` (the default) reads the handler's ``wants_frame``
        attribute. Such a model's messages take the general dispatch path, a little slower.

        Changes take effect from the next dispatched frame.
        """
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise TypeError(f"model must be a pydantic model class (a Message), got {model!r}")
        if not callable(handler):
            raise TypeError(f"handler must be callable, got {handler!r}")
        if in_thread and _is_async(handler):
            raise ValueError(f"{_name(handler)} is async: in_thread=True is for blocking sync handlers")
        if match is not None and tag is not None:
            raise ValueError("pass either match= (predicate routing) or tag=, not both")
        if not model.__pydantic_complete__:
            # Surface unresolved forward references here, not on the first frame.
            model.model_rebuild(raise_errors=True)
        tags: tuple[Hashable, ...] = () if match is not None else self._tags_of(model, tag)
        for other in self._registrations:
            if other.model is model:
                if seq_key is not None and other.seq_key not in (None, seq_key):
                    raise ValueError(
                        f"{model.__name__} already has a different seq_key; a model has one "
                        "sequence key (pass the same function, or none)"
                    )
            elif tags and (clash := set(other.tags).intersection(tags)):
                raise ValueError(
                    f"tag {clash.pop()!r} is already routed to {other.model.__name__}; "
                    f"{model.__name__} needs a different tag"
                )
        if with_frame is None:
            with_frame = getattr(handler, "wants_frame", False) is True
        registration = Registration(self, model, handler, match, in_thread, seq_key, tags, with_frame)
        self._registrations.append(registration)
        self.dispatch = self._dispatch_dirty
        return registration

    def _tags_of(self, model: type[BaseModel], tag: object) -> tuple[Hashable, ...]:
        declared = tag if tag is not None else getattr(model, "__wsclient_tag__", None)
        if declared is not None:
            tags = _as_tags(declared)
        elif self._discriminator is None:
            raise TypeError(
                f"{model.__name__} has no tag for the callable discriminator: set "
                f"__wsclient_tag__ on the model or pass tag= (or match= for predicate routing)"
            )
        else:
            tags = _literal_tags(model, self._discriminator)
        for value in tags:
            if value is None:
                raise ValueError(f"None cannot be a tag ({model.__name__})")
            hash(value)
        return tags

    def _remove(self, registration: Registration) -> None:
        self._registrations.remove(registration)
        self.dispatch = self._dispatch_dirty

    @property
    def registrations(self) -> tuple[Registration, ...]:
        """Active registrations, in registration order."""
        return tuple(self._registrations)

    def rebuild(self) -> None:
        """Rebuild the validator and dispatch tables now.

        :meth:`dispatch` does this by itself on the first frame after registrations changed;
        call it up front to pay the schema-building cost before traffic starts.
        """
        tagged: dict[type[BaseModel], list[Registration]] = {}
        predicated: dict[tuple[type[BaseModel], Callable[[Any], bool]], list[Registration]] = {}
        choices: dict[Hashable, type[BaseModel]] = {}
        for reg in self._registrations:
            if reg.match is None:
                tagged.setdefault(reg.model, []).append(reg)
                choices.update(dict.fromkeys(reg.tags, reg.model))
            else:
                predicated.setdefault((reg.model, reg.match), []).append(reg)
        seq_keys: dict[type[BaseModel], SeqKey] = {}
        for reg in self._registrations:
            if reg.seq_key is not None:
                seq_keys.setdefault(reg.model, reg.seq_key)
        default = self.default_seq_key
        plans = {m: _plan(m, regs, seq_keys.get(m), default) for m, regs in tagged.items()}
        rules = tuple(
            _Rule(match, m.__pydantic_validator__.validate_python, _plan(m, regs, seq_keys.get(m), default))
            for (m, match), regs in predicated.items()
        )
        if choices != self._choices:
            self._build_validators(choices)
        self._plans, self._rules = plans, rules
        self.dispatch = self._compile()

    def _build_validators(self, choices: dict[Hashable, type[BaseModel]]) -> None:
        self._validate_json = self._validate_python = None
        self._by_tag = {}
        if choices:
            if self._discriminator is None:
                self._by_tag = {t: m.__pydantic_validator__.validate_python for t, m in choices.items()}
            else:
                # The compiled validator itself, not the TypeAdapter method: the wrapper only
                # forwards default options, and costs ~0.15 µs per frame on the hot path.
                validator = _union_adapter(tuple(choices.items()), self._discriminator).validator
                if type(self.codec) is JsonCodec:
                    self._validate_json = validator.validate_json
                else:
                    self._validate_python = validator.validate_python
        self._choices = choices

    # -- dispatch -------------------------------------------------------------------------------

    def _dispatch_dirty(self, frame: Data) -> Awaitable[None] | None:
        """``dispatch`` after registrations changed: rebuild, then route with the new tables."""
        self.rebuild()
        return self.dispatch(frame)

    def _compile(self) -> Callable[[Data], Awaitable[None] | None]:
        """The ``dispatch`` function for the current tables and validators."""
        router = self
        decoded = self._dispatch_decoded
        validate = self._validate_json
        if validate is None:

            def dispatch_decoded(frame: Data) -> Awaitable[None] | None:
                if router.dispatch is not dispatch_decoded:
                    return router.dispatch(frame)
                return decoded(frame)

            return dispatch_decoded

        stats = self.stats
        requests = self.requests
        pending: dict[Hashable, Any] = requests.outstanding if requests is not None else {}
        claim_reply, rejected, invalid = self._claim_reply, self._rejected, self._invalid
        failed, finish = self._handler_failed, self._finish
        deliver: Callable[..., Awaitable[None] | None] = self._deliver
        isawaitable = inspect.isawaitable
        # model -> (its handler when it is the only one, plain sync, with no sequence key; the plan).
        # That common case skips _deliver(): a method call is a tenth of this path's budget.
        table: dict[type[BaseModel], tuple[Callable[[Any], Any] | None, _Plan]] = {
            model: (
                plan.inline[0] if len(plan.handlers) == 1 and plan.inline and plan.seq_key is None else None,
                plan,
            )
            for model, plan in self._plans.items()
        }
        # Models whose handlers are all async (or in_thread), with no sequence key: straight to the
        # continuation, skipping _deliver() too.
        deferred_only = frozenset(
            model
            for model, plan in self._plans.items()
            if not plan.inline and plan.seq_key is None and plan.framed is None
        )

        if self.dedup is not None:
            deliver = self._compile_keyed(deliver)

        def dispatch(frame: Data) -> Awaitable[None] | None:
            if router.dispatch is not dispatch:  # kept by a caller across a registration change
                return router.dispatch(frame)
            if pending and requests is not None and claim_reply(requests, frame, _UNDECODED):
                return None
            try:
                msg = validate(frame)
            except ValidationError as exc:
                return rejected(frame, _UNDECODED, exc)
            except Exception as exc:  # a user validator raising e.g. KeyError, or RecursionError
                return invalid(frame, exc)
            handler, plan = table[msg.__class__]
            if handler is None:
                if msg.__class__ in deferred_only:
                    stats.handled += 1
                    return finish(msg, plan.handlers, 0, None)
                return deliver(msg, plan, False, frame)
            stats.handled += 1
            try:
                result = handler(msg)
            except SYNC_HANDLER_FAILURES as exc:
                failed(msg, handler, exc)
                return None
            # A "sync" handler may still return an awaitable (a wrapped coroutine function).
            if result is not None and isawaitable(result):
                return finish(msg, plan.handlers, 1, result)
            return None

        return dispatch

    def _compile_keyed(
        self, general: Callable[..., Awaitable[None] | None]
    ) -> Callable[..., Awaitable[None] | None]:
        """Delivery with a de-duplicator, for the common case written out: the next number of a
        stream, no overlap running, nothing held, a single sync handler. Anything else takes the
        general path (:meth:`_deliver`)."""
        router = self
        dedup = self.dedup
        assert dedup is not None
        tracker = self.sequences
        marks = tracker._last
        seen = self._streams
        stats = self.stats
        failed, finish, run = self._handler_failed, self._finish, self._run
        isawaitable = inspect.isawaitable
        singles = {
            model: plan.inline[0]
            for model, plan in self._plans.items()
            if len(plan.handlers) == 1 and plan.inline
        }

        def deliver(
            msg: Any, plan: _Plan, released: bool = False, frame: Data | None = None
        ) -> Awaitable[None] | None:
            seq_key = plan.seq_key
            if seq_key is None or not dedup.calm or router.overlap is not None:
                return general(msg, plan, released, frame)
            try:
                key = seq_key(msg)
            except Exception:
                return general(msg, plan, released, frame)  # reports it
            if key is None:
                return general(msg, plan, released, frame)
            stream, seq = key
            last = marks.get(stream)
            if last is None or seq != last + 1:
                return general(msg, plan, released, frame)
            marks[stream] = seq
            if tracker._after_reconnect:
                tracker._unmark(stream)
            if stream not in seen:
                seen.add(stream)
            handler = singles.get(msg.__class__)
            if handler is None:
                return run(msg, plan, frame)
            stats.handled += 1
            try:
                result = handler(msg)
            except SYNC_HANDLER_FAILURES as exc:
                failed(msg, handler, exc)
                return None
            if result is not None and isawaitable(result):
                return finish(msg, plan.handlers, 1, result)
            return None

        return deliver

    def _dispatch_decoded(self, frame: Data) -> Awaitable[None] | None:
        """The path through Python values: custom codecs, callable tags, predicate-only routers."""
        try:
            obj = self._loads(frame)
        except Exception as exc:
            return self._invalid(frame, exc)
        requests = self.requests
        if requests is not None and requests.outstanding and self._claim_reply(requests, frame, obj):
            return None
        tagger = self._tagger
        if tagger is not None:
            validate = self._by_tag.get(tagger(obj))
            if validate is None:
                return self._untagged(frame, obj)
            try:
                msg = validate(obj)
            except Exception as exc:
                return self._invalid(frame, exc)
        else:
            validate = self._validate_python
            if validate is None:
                return self._untagged(frame, obj)
            try:
                msg = validate(obj)
            except ValidationError as exc:
                return self._rejected(frame, obj, exc)
            except Exception as exc:
                return self._invalid(frame, exc)
        return self._deliver(msg, self._plans[msg.__class__], False, frame)

    def _claim_reply(self, requests: RequestTracker, frame: Data, obj: Any) -> bool:
        if obj is _UNDECODED:
            if not requests.resolve(frame):
                return False
        elif not requests.resolve_object(obj):
            return False
        self.stats.replies += 1
        if requests.also_route:
            return False
        self.stats.handled += 1
        return True

    def _deliver(
        self, msg: Any, plan: _Plan, released: bool = False, frame: Data | None = None
    ) -> Awaitable[None] | None:
        seq_key = plan.seq_key
        if seq_key is not None:
            stream = self._observe(seq_key, msg, plan, released, frame)
            if stream is _DROP:
                return None
            if stream is not None:
                # Messages of the other link were waiting for this one: they follow it, in order.
                assert self.dedup is not None
                after = self.dedup.release(stream)
                if after:
                    return self._chain(self._run(msg, plan, frame), after)
        return self._run(msg, plan, frame)

    def _chain(self, pending: Awaitable[None] | None, items: list[_Held]) -> Awaitable[None] | None:
        """Deliver ``items`` (released from the hold, in order) after ``pending``."""
        for index, (msg, plan, frame) in enumerate(items):
            if pending is not None:
                return self._then(pending, items[index:])
            pending = self._deliver(msg, plan, True, frame)
        return pending

    async def _then(self, pending: Awaitable[None], items: list[_Held]) -> None:
        await pending
        for msg, plan, frame in items:
            more = self._deliver(msg, plan, True, frame)
            if more is not None:
                await more

    def _run(self, msg: Any, plan: _Plan, frame: Data | None = None) -> Awaitable[None] | None:
        if plan.framed is not None:
            return self._run_framed(msg, plan.framed, frame)
        self.stats.handled += 1
        done = 0
        for handler in plan.inline:
            done += 1
            try:
                result = handler(msg)
            except SYNC_HANDLER_FAILURES as exc:
                self._handler_failed(msg, handler, exc)
                continue
            # A "sync" handler may still return an awaitable (a wrapped coroutine function).
            if result is not None and inspect.isawaitable(result):
                return self._finish(msg, plan.handlers, done, result)
        if plan.deferred:
            return self._finish(msg, plan.handlers, done, None)
        return None

    async def _finish(
        self,
        msg: Any,
        handlers: tuple[tuple[Callable[[Any], Any], bool], ...],
        start: int,
        pending: Awaitable[Any] | None,
    ) -> None:
        """Await ``pending`` (from ``handlers[start - 1]``), then run ``handlers[start:]`` in order.

        The guard is written out here rather than in a helper coroutine: one coroutine per frame
        instead of three is a measurable share of an async handler's cost.
        """
        if pending is not None:
            try:
                await pending
            except BaseException as exc:
                self._guard(msg, handlers[start - 1][0], exc)
        for handler, in_thread in handlers[start:]:
            try:
                if in_thread:
                    await asyncio.to_thread(handler, msg)
                    continue
                result = handler(msg)
                # A coroutine is by far the common awaitable: tested first, by class.
                if result is not None and (result.__class__ is _Coroutine or inspect.isawaitable(result)):
                    await result
            except BaseException as exc:
                self._guard(msg, handler, exc)

    def _run_framed(
        self, msg: Any, calls: tuple[tuple[Callable[..., Any], bool, bool], ...], frame: Data | None
    ) -> Awaitable[None] | None:
        """``_run`` for a plan with a handler that wants the raw frame."""
        self.stats.handled += 1
        for index, (handler, in_thread, with_frame) in enumerate(calls):
            if in_thread:
                return self._finish_framed(msg, frame, calls, index, None)
            try:
                result = handler(msg, frame) if with_frame else handler(msg)
            except SYNC_HANDLER_FAILURES as exc:
                self._handler_failed(msg, handler, exc)
                continue
            if result is not None and inspect.isawaitable(result):
                return self._finish_framed(msg, frame, calls, index + 1, (handler, result))
        return None

    async def _finish_framed(
        self,
        msg: Any,
        frame: Data | None,
        calls: tuple[tuple[Callable[..., Any], bool, bool], ...],
        start: int,
        pending: tuple[Callable[..., Any], Awaitable[Any]] | None,
    ) -> None:
        if pending is not None:
            try:
                await pending[1]
            except BaseException as exc:
                self._guard(msg, pending[0], exc)
        for handler, in_thread, with_frame in calls[start:]:
            args = (msg, frame) if with_frame else (msg,)
            try:
                if in_thread:
                    await asyncio.to_thread(handler, *args)
                    continue
                result = handler(*args)
                if result is not None and inspect.isawaitable(result):
                    await result
            except BaseException as exc:
                self._guard(msg, handler, exc)

    def _guard(self, msg: Any, handler: Callable[..., Any], exc: BaseException) -> None:
        """Count a handler's failure, or re-raise what must stop dispatch."""
        if not handler_failed(exc):
            raise exc
        self._handler_failed(msg, handler, exc)

    def _observe(
        self, seq_key: SeqKey, msg: Any, plan: _Plan, released: bool, frame: Data | None = None
    ) -> Any:
        """Feed the tracker; with a :class:`~wsclient.dedup.Dedup`, judge the message first.

        Returns ``_DROP`` when the message must not be delivered (a copy, or held), the stream when
        held messages may follow it, else None.
        """
        dedup = self.dedup
        try:
            key = seq_key(msg)
            if key is None:
                return _DROP if self._secondary else None
            stream, seq = key
            if dedup is not None and not released:
                if stream not in self._streams:
                    self._streams.add(stream)
                overlap = self.overlap
                if overlap is not None:
                    overlap.saw(stream, self._secondary)
                judgement = dedup.judge(stream, seq, merging=self.merging)
                if judgement is not _DELIVER:
                    if judgement is _HOLD:
                        dedup.hold(stream, seq, (msg, plan, frame))
                    return _DROP
            gap = self.sequences.observe(stream, seq)
        except Exception as exc:
            self._handler_failed(msg, seq_key, exc)
            return None
        self._report_gap(gap)
        if dedup is not None and not released and dedup.has_held(stream):
            return stream
        return None

    def _report_gap(self, gap: SequenceGap | None) -> None:
        if gap is not None:
            if self._on_gap is not None:
                self._call_hook(self._on_gap, gap)
            elif (suppressed := self._limiter.allow("gap")) is not None:
                _log.warning(
                    "sequence %s on stream %r: expected %d, received %d%s%s",
                    gap.kind,
                    gap.stream,
                    gap.expected,
                    gap.received,
                    " (across a reconnect)" if gap.across_reconnect else "",
                    LogLimiter.suffix(suppressed),
                )

    def _rejected(self, frame: Data, obj: Any, exc: ValidationError) -> Awaitable[None] | None:
        if _is_untagged(exc):
            return self._untagged(frame, obj)
        return self._invalid(frame, exc)

    def _untagged(self, frame: Data, obj: Any) -> Awaitable[None] | None:
        if self._rules:
            if obj is _UNDECODED:
                try:
                    obj = self._loads(frame)
                except Exception as exc:
                    return self._invalid(frame, exc)
            for rule in self._rules:
                try:
                    hit = rule.match(obj)
                except Exception:
                    continue
                if hit:
                    try:
                        msg = rule.validate(obj)
                    except Exception as exc:
                        return self._invalid(frame, exc)
                    return self._deliver(msg, rule.plan, False, frame)
        self.stats.unknown += 1
        if self._on_unknown is not None:
            self._call_hook(self._on_unknown, frame)
        else:
            self.log_unknown(frame)
        return None

    def log_unknown(self, frame: Data) -> None:
        """Log a frame no model claimed (INFO, rate-limited, redacted)."""
        suppressed = self._limiter.allow("unknown")
        if suppressed is not None:
            _log.info(
                "unknown frame (no model claims it): %s%s",
                self._redact(_preview(frame)),
                LogLimiter.suffix(suppressed),
            )

    def log_invalid(self, frame: Data, exc: BaseException) -> None:
        """Log a frame that failed to decode or validate (WARNING, rate-limited, redacted)."""
        suppressed = self._limiter.allow("invalid")
        if suppressed is not None:
            _log.warning(
                "invalid frame (%s): %s%s",
                self._redact(_short(exc)),
                self._redact(_preview(frame)),
                LogLimiter.suffix(suppressed),
            )

    def _invalid(self, frame: Data, exc: BaseException) -> Awaitable[None] | None:
        # Typed like dispatch() so that every dispatch path can end with `return self._invalid()`.
        self.stats.invalid += 1
        if self._on_error is not None:
            self._call_hook(self._on_error, frame, exc)
        else:
            self.log_invalid(frame, exc)
        return None

    def _handler_failed(self, msg: Any, handler: Callable[..., Any], exc: BaseException) -> None:
        self.stats.handler_errors += 1
        suppressed = self._limiter.allow("handler")
        if suppressed is not None:
            _log.error(
                "handler %s raised on %s%s",
                _name(handler),
                type(msg).__name__,
                LogLimiter.suffix(suppressed),
                exc_info=exc,
            )
        if self._on_error is not None:
            self._call_hook(self._on_error, msg, exc)

    def _call_hook(self, hook: Callable[..., Any], *args: Any) -> None:
        try:
            hook(*args)
        except Exception:
            self.stats.hook_errors += 1
            suppressed = self._limiter.allow("hook")
            if suppressed is not None:
                _log.exception("hook %s raised%s", _name(hook), LogLimiter.suffix(suppressed))

    # -- overlapping links ----------------------------------------------------------------------

    def dispatch_secondary(self, frame: Data) -> Awaitable[None] | None:
        """Route a frame of the second of two overlapping links: replies to its requests, and the
        keyed messages :attr:`dedup` lets through. The rest (copies of what the other link brings,
        frames that would be reported twice) is ignored."""
        if self.dispatch == self._dispatch_dirty:
            self.rebuild()
        msg = self._validated(frame)
        if msg is None:
            return None
        plan = self._plans.get(msg.__class__)
        if plan is None or plan.seq_key is None:
            return None
        self._secondary = True
        try:
            return self._deliver(msg, plan, False, frame)
        finally:
            self._secondary = False

    def _validated(self, frame: Data) -> Any:
        """``frame`` as a model instance, or None (a reply, claimed; or no model): no reporting."""
        requests = self.requests
        try:
            if self._validate_json is not None:
                if (
                    requests is not None
                    and requests.outstanding
                    and self._claim_reply(requests, frame, _UNDECODED)
                ):
                    return None
                return self._validate_json(frame)
            obj = self._loads(frame)
            if requests is not None and requests.outstanding and self._claim_reply(requests, frame, obj):
                return None
            if self._tagger is not None:
                validate = self._by_tag.get(self._tagger(obj))
                return validate(obj) if validate is not None else None
            return self._validate_python(obj) if self._validate_python is not None else None
        except Exception:
            return None

    def has_seen(self, stream: Hashable) -> bool:
        """Whether a keyed message of ``stream`` reached this router (with a de-duplicator)."""
        return stream in self._streams

    def begin_overlap(self, ready: asyncio.Future[None]) -> None:
        """A second link starts carrying this router's streams: merge them until
        :meth:`end_overlap`; ``ready`` is resolved once the second link has delivered every stream
        this router delivers (that the de-duplicator still knows)."""
        assert self.dedup is not None
        last = self.sequences.last
        # Forgotten ones out, in place: the compiled delivery holds this set.
        self._streams.difference_update([s for s in self._streams if last(s) is None])
        self.merging = True
        self.overlap = Overlap(ready, self._streams)

    def end_move(self, stream: Hashable) -> Awaitable[None] | None:
        """A stream's move between connections is over: deliver what was held for it, in order."""
        if self.dedup is None:
            return None
        return self._chain(None, [item for _, item in self.dedup.end_move(stream)])

    def end_overlap(self) -> Awaitable[None] | None:
        """The overlap is over (one link left): deliver what was held, in order, gaps reported."""
        self.merging = False
        self.overlap = None
        if self.dedup is None:
            return None
        return self._chain(None, [item for _, item in self.dedup.release_all()])

    # -- connection lifecycle -------------------------------------------------------------------

    def mark_reconnect(self) -> None:
        """A new connection starts delivering here: with a shared tracker (a pool), only the streams
        this router carries straddle it."""
        if self.dedup is not None:
            self.sequences.mark_reconnect(self._streams)
        else:
            self.sequences.mark_reconnect()

    def connection_lost(self, exc: BaseException) -> None:
        """Call when a connection dies: fails pending requests, marks sequences for the gap check."""
        if self.requests is not None:
            self.requests.fail_all(exc)
        self.mark_reconnect()

    def __repr__(self) -> str:
        disc = self._discriminator if self._discriminator is not None else "<callable>"
        return (
            f"<Router discriminator={disc!r} codec={self.codec!r} registrations={len(self._registrations)}>"
        )


# -- helpers ------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=128)
def _union_adapter(
    choices: tuple[tuple[Hashable, type[BaseModel]], ...], key: str | tuple[str, ...]
) -> TypeAdapter[Any]:
    """The validator for one set of tagged models, shared by every router that routes the same set.

    A compiled validator costs several KiB; a feeder running hundreds of clients over the same models
    would otherwise hold hundreds of identical copies.
    """
    return TypeAdapter(_tagged_union(dict(choices), key))


def _tagged_union(choices: dict[Hashable, type[BaseModel]], key: str | tuple[str, ...]) -> Any:
    """``Annotated[Any, <tagged-union core schema>]``: one validator for all tagged models.

    Built at the core-schema level because pydantic's ``Field(discriminator=...)`` wants at least
    two models and a top-level field, while pydantic-core itself accepts one choice and a path.
    """
    discriminator: str | list[str | int] = key if isinstance(key, str) else list(key)

    def schema(_source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        by_model: dict[type[BaseModel], CoreSchema] = {}
        for model in choices.values():
            if model not in by_model:
                by_model[model] = handler.generate_schema(model)
        return core_schema.tagged_union_schema(
            {tag: by_model[model] for tag, model in choices.items()},
            discriminator=discriminator,
        )

    return Annotated[Any, GetPydanticSchema(get_pydantic_core_schema=schema)]


def _plan(
    model: type[BaseModel], regs: list[Registration], seq_key: SeqKey | None, default: SeqKey | None = None
) -> _Plan:
    handlers = tuple((reg.handler, reg.in_thread) for reg in regs)
    if seq_key is None:
        seq_key = getattr(model, "__wsclient_seq__", None)
    if seq_key is None:
        seq_key = default
    if any(reg.with_frame for reg in regs):
        framed = tuple((reg.handler, reg.in_thread, reg.with_frame) for reg in regs)
        return _Plan((), handlers, True, seq_key, framed)
    inline: list[Callable[[Any], Any]] = []
    for handler, in_thread in handlers:
        if in_thread or _is_async(handler):
            break
        inline.append(handler)
    return _Plan(tuple(inline), handlers, len(inline) < len(handlers), seq_key)


def _is_untagged(exc: ValidationError) -> bool:
    if exc.error_count() != 1:
        return False
    error = exc.errors(include_url=False, include_context=False, include_input=False)[0]
    return error["type"] in _UNTAGGED and not error["loc"]


def _safe_tagger(func: Callable[[Any], Hashable | None]) -> Callable[[Any], Hashable | None]:
    """Wrap a user tag function so that raising, or returning an unhashable value, means no tag."""

    def tagger(obj: Any) -> Hashable | None:
        try:
            tag = func(obj)
            hash(tag)
        except Exception:
            return None
        return tag

    return tagger


def _as_tags(value: object) -> tuple[Hashable, ...]:
    if isinstance(value, list | set | frozenset):
        return tuple(v.value if isinstance(v, Enum) else v for v in value)
    return (value.value if isinstance(value, Enum) else value,)


def _field_name(model: type[BaseModel], key: str) -> str | None:
    """The name of the field read from the wire key ``key`` (by alias first, then by name)."""
    fields = model.model_fields
    for name, info in fields.items():
        if key in (info.validation_alias, info.alias):
            return name
    return key if key in fields else None


def _literal_tags(model: type[BaseModel], key: str | tuple[str, ...]) -> tuple[Hashable, ...]:
    path = (key,) if isinstance(key, str) else key
    current: type[BaseModel] = model
    for depth, part in enumerate(path):
        name = _field_name(current, part)
        annotation = current.model_fields[name].annotation if name is not None else None
        if depth < len(path) - 1:
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                current = annotation
                continue
            missing = "a nested model field" if name is None else "a nested model"
        elif get_origin(annotation) is Literal:
            return _as_tags(list(get_args(annotation)))
        else:
            missing = "a Literal field"
        where = ".".join(path[: depth + 1])
        raise TypeError(
            f"{model.__name__} cannot be routed by {where!r}: it needs {missing} there, "
            f"e.g. {part}: Literal['...'] (or set __wsclient_tag__, or pass tag= or match=)"
        )
    raise AssertionError("unreachable")  # pragma: no cover


def _is_async(func: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(func) or inspect.iscoroutinefunction(
        getattr(func, "__call__", None)  # noqa: B004 - an instance with an async __call__
    )


def _name(func: object) -> str:
    return getattr(func, "__qualname__", None) or repr(func)


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _preview(frame: Data) -> str:
    return repr(frame[:_PREVIEW]) + ("…" if len(frame) > _PREVIEW else "")
