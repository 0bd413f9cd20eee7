"""Router, codecs, request and sequence tracking, driven directly: no sockets, no client."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import threading
import zlib
from collections.abc import Hashable
from decimal import Decimal
from typing import Any, Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import (
    BaseModel,
    Field,
    PydanticUndefinedAnnotation,
    RootModel,
    ValidationError,
    model_validator,
)

from wsclient.codec import GzipJsonCodec, JsonCodec, encode
from wsclient.routing import (
    Message,
    RequestTracker,
    Router,
    SequenceGap,
    SequenceTracker,
)

# -- models ---------------------------------------------------------------------------------------


class Trade(Message):
    e: Literal["trade"]
    s: str
    p: Decimal
    t: int


class AggTrade(Message):
    e: Literal["aggTrade"]
    s: str
    p: Decimal


class Depth(Message):
    e: Literal["depthUpdate"]
    s: str
    u: int


class Ack(Message):
    result: Any = None
    id: int


class Heartbeat(RootModel[tuple[int, Literal["hb"]]]):
    """Bitfinex-style ``[chanId, "hb"]``: no tag at all, recognised by a predicate."""


class Errors:
    """An on_error / on_unknown recorder."""

    def __init__(self) -> None:
        self.errors: list[tuple[object, BaseException]] = []
        self.unknown: list[str | bytes] = []

    def on_error(self, obj: object, exc: BaseException) -> None:
        self.errors.append((obj, exc))

    def on_unknown(self, raw: str | bytes) -> None:
        self.unknown.append(raw)


def make_router(**kwargs: Any) -> tuple[Router, Errors]:
    hooks = Errors()
    kwargs.setdefault("discriminator", "e")
    router = Router(on_error=hooks.on_error, on_unknown=hooks.on_unknown, **kwargs)
    return router, hooks


def trade(t: int = 1, p: str = "1.5") -> str:
    return json.dumps({"e": "trade", "s": "BTCUSDT", "p": p, "t": t, "venue_added": [1, 2]})


# -- tagged routing -------------------------------------------------------------------------------


def test_three_models_under_a_custom_discriminator_are_routed_in_order() -> None:
    router, hooks = make_router()
    seen: list[Message] = []
    router.register(Trade, seen.append)
    router.register(AggTrade, seen.append)
    router.register(Depth, seen.append)

    frames = [
        trade(1),
        '{"e":"aggTrade","s":"ETHUSDT","p":"2000.25"}',
        b'{"e":"depthUpdate","s":"BTCUSDT","u":42}',
        trade(2, "1.75"),
    ]
    for frame in frames:
        assert router.dispatch(frame) is None  # sync handlers only: nothing to await

    assert [type(m) for m in seen] == [Trade, AggTrade, Depth, Trade]
    first = seen[0]
    assert isinstance(first, Trade)
    assert first.p == Decimal("1.5")
    assert not hasattr(first, "venue_added")  # extra fields are ignored
    last = seen[3]
    assert isinstance(last, Trade)
    assert last.t == 2
    assert last.p == Decimal("1.75")
    assert router.stats.handled == 4
    assert hooks.errors == hooks.unknown == []


def test_several_handlers_per_model_run_in_registration_order() -> None:
    router, _ = make_router()
    calls: list[str] = []
    router.register(Trade, lambda m: calls.append("a"))
    router.register(AggTrade, lambda m: calls.append("other"))
    router.register(Trade, lambda m: calls.append("b"))
    router.register(Trade, lambda m: calls.append("c"))
    router.dispatch(trade())
    assert calls == ["a", "b", "c"]


def test_literal_with_several_values_and_aliased_field() -> None:
    class Kline(Message):
        event: Literal["kline", "continuous_kline"] = Field(alias="e")
        close: Decimal = Field(alias="c")

    router, _ = make_router()
    seen: list[Kline] = []
    router.register(Kline, seen.append)
    router.dispatch('{"e":"kline","c":"1"}')
    router.dispatch('{"e":"continuous_kline","c":"2"}')
    assert [m.close for m in seen] == [Decimal(1), Decimal(2)]


def test_a_single_registered_model_works() -> None:
    router, hooks = make_router()
    seen: list[Trade] = []
    router.register(Trade, seen.append)
    router.dispatch(trade())
    router.dispatch('{"e":"aggTrade","s":"x","p":"1"}')
    assert len(seen) == 1
    assert len(hooks.unknown) == 1


def test_nested_path_discriminator() -> None:
    class TradesArg(BaseModel):
        channel: Literal["trades"]
        instId: str

    class BooksArg(BaseModel):
        channel: Literal["books", "books5"]
        instId: str

    class OkxTrade(BaseModel):
        px: Decimal
        sz: Decimal

    class Trades(Message):
        arg: TradesArg
        data: list[OkxTrade]

    class Books(Message):
        arg: BooksArg
        data: list[dict[str, Any]]

    router, hooks = make_router(discriminator=("arg", "channel"))
    seen: list[Message] = []
    router.register(Trades, seen.append)
    router.register(Books, seen.append)

    router.dispatch('{"arg":{"channel":"trades","instId":"BTC-USDT"},"data":[{"px":"42000.1","sz":"0.5"}]}')
    router.dispatch('{"arg":{"channel":"books5","instId":"BTC-USDT"},"data":[]}')
    router.dispatch('{"event":"subscribe","arg":{"channel":"tickers"}}')  # unclaimed tag
    router.dispatch('{"event":"error","code":"60012"}')  # no tag at all
    router.dispatch('{"arg":{"channel":"trades"},"data":[]}')  # claimed, but invalid

    assert [type(m) for m in seen] == [Trades, Books]
    first = seen[0]
    assert isinstance(first, Trades)
    assert first.data[0].px == Decimal("42000.1")
    assert router.stats.handled == 2
    assert router.stats.unknown == 2
    assert router.stats.invalid == 1
    assert isinstance(hooks.errors[0][1], ValidationError)


def test_callable_discriminator_with_class_tag_and_register_tag() -> None:
    class TradeData(BaseModel):
        p: Decimal

    class StreamTrade(Message):
        __wsclient_tag__ = "trade"
        stream: str
        data: TradeData

    class StreamDepth(Message):
        stream: str
        data: dict[str, Any]

    def tag_of(frame: Any) -> Hashable | None:
        # Binance combined streams: {"stream": "btcusdt@trade", "data": {...}}
        return frame["stream"].partition("@")[2]

    router, hooks = make_router(discriminator=tag_of)
    seen: list[Message] = []
    router.register(StreamTrade, seen.append)
    router.register(StreamDepth, seen.append, tag=["depth", "depth@100ms"])

    router.dispatch('{"stream":"btcusdt@trade","data":{"p":"1.25"}}')
    router.dispatch('{"stream":"btcusdt@depth@100ms","data":{}}')
    router.dispatch('{"stream":"btcusdt@kline_1m","data":{}}')  # unclaimed tag
    router.dispatch('{"result":null,"id":1}')  # the callable raises KeyError: no tag
    router.dispatch("[1, 2]")  # ... TypeError: no tag
    router.dispatch('{"stream":"btcusdt@trade","data":{"p":"nope"}}')  # invalid

    assert [type(m) for m in seen] == [StreamTrade, StreamDepth]
    first = seen[0]
    assert isinstance(first, StreamTrade)
    assert first.data.p == Decimal("1.25")
    assert (router.stats.handled, router.stats.unknown, router.stats.invalid) == (2, 3, 1)
    assert len(hooks.unknown) == 3


def test_callable_discriminator_needs_a_tag_from_the_model_or_register() -> None:
    router, _ = make_router(discriminator=lambda frame: frame.get("kind"))
    with pytest.raises(TypeError, match="__wsclient_tag__"):
        router.register(Trade, print)


def test_registration_errors_are_raised_at_register_time() -> None:
    class NoTag(Message):
        s: str

    class Nested(Message):
        arg: str

    class Clash(Message):
        e: Literal["trade"]

    router, _ = make_router()
    with pytest.raises(TypeError, match="Literal"):
        router.register(NoTag, print)
    router.register(Trade, print)
    with pytest.raises(ValueError, match="already routed to Trade"):
        router.register(Clash, print)
    with pytest.raises(TypeError, match="pydantic model"):
        router.register(dict, print)  # type: ignore[type-var]

    async def handler(msg: Trade) -> None: ...

    with pytest.raises(ValueError, match="in_thread"):
        router.register(Trade, handler, in_thread=True)
    with pytest.raises(ValueError, match="not both"):
        router.register(Trade, print, match=bool, tag="x")

    by_path, _ = make_router(discriminator=("arg", "channel"))
    with pytest.raises(TypeError, match="nested model"):
        by_path.register(Nested, print)
    with pytest.raises(ValueError, match="field name"):
        Router(discriminator=())
    with pytest.raises(TypeError, match="discriminator"):
        Router(discriminator=42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="codec"):
        Router(codec=object())  # type: ignore[arg-type]


# -- predicate routing ----------------------------------------------------------------------------


def test_predicate_models_route_untagged_frames_in_registration_order() -> None:
    router, hooks = make_router()
    seen: list[object] = []
    router.register(Trade, seen.append)
    router.register(Heartbeat, seen.append, match=lambda o: isinstance(o, list) and o[1:] == ["hb"])
    router.register(Ack, seen.append, match=lambda o: "result" in o)  # raises on lists: no match
    router.register(Ack, lambda m: seen.append("never"), match=lambda o: "id" in o)

    router.dispatch('{"result":null,"id":1}')
    router.dispatch('[17470,"hb"]')
    router.dispatch(trade())
    router.dispatch("[17470,[1,2,3]]")  # no predicate matches
    router.dispatch('{"id":"x","result":1}')  # matches Ack, fails its validation

    assert [type(m) for m in seen] == [Ack, Heartbeat, Trade]
    heartbeat = seen[1]
    assert isinstance(heartbeat, Heartbeat)
    assert heartbeat.root == (17470, "hb")
    assert (router.stats.handled, router.stats.unknown, router.stats.invalid) == (3, 1, 1)
    assert hooks.unknown == ["[17470,[1,2,3]]"]


def test_predicates_also_see_frames_whose_tag_no_model_claims() -> None:
    class Pong(Message):
        e: str

    router, _ = make_router()
    router.register(Trade, print)
    seen: list[Pong] = []
    router.register(Pong, seen.append, match=lambda o: o.get("e") == "pong")
    router.dispatch('{"e":"pong"}')
    assert len(seen) == 1


def test_predicate_only_router_without_tagged_models() -> None:
    router, _ = make_router()
    seen: list[Ack] = []
    router.register(Ack, seen.append, match=lambda o: "id" in o)
    router.dispatch('{"id":5}')
    router.dispatch('{"other":5}')
    router.dispatch("not json")
    assert [m.id for m in seen] == [5]
    assert (router.stats.handled, router.stats.unknown, router.stats.invalid) == (1, 1, 1)


async def test_predicate_routes_take_async_handlers_and_sequence_keys() -> None:
    router, hooks = make_router()
    order: list[str] = []

    async def later(msg: Ack) -> None:
        await asyncio.sleep(0)
        order.append(f"async{msg.id}")

    def broken(msg: Ack) -> None:
        raise RuntimeError("bug")

    match = lambda o: "result" in o  # noqa: E731 - the same predicate object for every handler
    router.register(Ack, broken, match=match, seq_key=lambda m: ("acks", m.id))
    router.register(Ack, later, match=match)
    for frame in ('{"result":0,"id":1}', '{"result":0,"id":3}'):
        pending = router.dispatch(frame)
        assert pending is not None
        await pending
    assert order == ["async1", "async3"]
    assert router.stats.handler_errors == len(hooks.errors) == 2
    assert router.sequences.gaps == 1


# -- accounting and hooks -------------------------------------------------------------------------


def test_unknown_versus_invalid_accounting() -> None:
    router, hooks = make_router()
    router.register(Trade, print)
    router.register(AggTrade, print)
    unknown = [
        '{"e":"kline","k":{}}',  # a tag no model claims
        '{"stream":"x"}',  # no tag
        '{"e":null}',
        '{"e":["trade"]}',
        "[1, 2, 3]",  # not an object
        "42",
        "null",
    ]
    invalid = [
        '{"e":"trade","s":"BTCUSDT","p":"abc","t":1}',  # bad Decimal
        '{"e":"trade","s":"BTCUSDT","t":1}',  # missing field
        '{"e":"trade","s":"BTCUSDT","p":1e999,"t":1}',  # infinite price
        "{not json",
        b"\xff\xfe\x00",
        "",
    ]
    for frame in unknown + invalid:
        assert router.dispatch(frame) is None

    assert router.stats.unknown == len(unknown)
    assert router.stats.invalid == len(invalid)
    assert router.stats.handled == 0
    assert hooks.unknown == unknown
    assert [raw for raw, _ in hooks.errors] == invalid
    assert all(isinstance(exc, ValidationError) for _, exc in hooks.errors)
    types = [exc.errors()[0]["type"] for _, exc in hooks.errors if isinstance(exc, ValidationError)]
    assert types[:3] == ["decimal_parsing", "missing", "finite_number"]
    assert set(types[3:]) == {"json_invalid"}


def test_a_model_validator_raising_a_non_value_error_counts_as_invalid() -> None:
    class Fragile(Message):
        e: Literal["fragile"]

        @model_validator(mode="before")
        @classmethod
        def _boom(cls, data: Any) -> Any:
            return data["missing"]  # KeyError is not turned into a ValidationError by pydantic

    router, hooks = make_router()
    router.register(Fragile, print)
    router.dispatch('{"e":"fragile"}')
    assert router.stats.invalid == 1
    assert isinstance(hooks.errors[0][1], KeyError)


def test_a_raising_handler_does_not_stop_the_next_handler_or_the_next_frame(
    caplog: pytest.LogCaptureFixture,
) -> None:
    router, hooks = make_router()
    calls: list[tuple[str, int]] = []

    def broken(msg: Trade) -> None:
        calls.append(("broken", msg.t))
        raise RuntimeError("handler bug")

    router.register(Trade, broken)
    router.register(Trade, lambda m: calls.append(("next", m.t)))

    with caplog.at_level(logging.ERROR, logger="wsclient"):
        router.dispatch(trade(1))
        router.dispatch(trade(2))

    assert calls == [("broken", 1), ("next", 1), ("broken", 2), ("next", 2)]
    assert router.stats.handled == 2
    assert router.stats.handler_errors == 2
    assert [type(obj) for obj, _ in hooks.errors] == [Trade, Trade]
    assert all(isinstance(exc, RuntimeError) for _, exc in hooks.errors)
    assert "handler bug" in caplog.text
    assert all(r.name == "wsclient" for r in caplog.records)


def test_raising_hooks_do_not_break_dispatch(caplog: pytest.LogCaptureFixture) -> None:
    def bad_hook(*args: object) -> None:
        raise ValueError("hook bug")

    router = Router(discriminator="e", on_error=bad_hook, on_unknown=bad_hook, on_gap=bad_hook)
    router.register(Trade, lambda m: 1 / 0, seq_key=lambda m: ("s", m.t))
    with caplog.at_level(logging.ERROR, logger="wsclient"):
        router.dispatch(trade(1))  # handler error → on_error raises
        router.dispatch(trade(5))  # gap → on_gap raises, then the handler error again
        router.dispatch("garbage")  # invalid → on_error raises
        router.dispatch('{"e":"x"}')  # unknown → on_unknown raises
    assert router.stats.frames == 4
    assert router.stats.hook_errors == 5
    assert "hook bug" in caplog.text


def test_default_hooks_log(caplog: pytest.LogCaptureFixture) -> None:
    router = Router(discriminator="e")
    router.register(Trade, lambda m: None, seq_key=lambda m: ("trades", m.t))
    with caplog.at_level(logging.DEBUG, logger="wsclient"):
        router.dispatch("garbage")
        router.dispatch('{"e":"x"}')
        router.dispatch(trade(1))
        router.dispatch(trade(3))
    assert "invalid frame" in caplog.text
    assert "unknown frame" in caplog.text
    assert "sequence gap on stream 'trades': expected 2, received 3" in caplog.text


# -- async and threaded handlers ------------------------------------------------------------------


async def test_async_handlers_preserve_arrival_order() -> None:
    router, _ = make_router()
    order: list[str] = []

    async def slow_trade(msg: Trade) -> None:
        # Later frames sleep less: without the ordering guarantee they would overtake.
        await asyncio.sleep(0.01 / msg.t)
        order.append(f"trade{msg.t}")

    def sync_after(msg: Trade) -> None:
        order.append(f"after{msg.t}")

    router.register(Trade, lambda m: order.append(f"before{m.t}"))
    router.register(Trade, slow_trade)
    router.register(Trade, sync_after)
    router.register(Depth, lambda m: order.append("depth"))

    for frame in (trade(1), trade(2), '{"e":"depthUpdate","s":"x","u":1}', trade(3)):
        pending = router.dispatch(frame)
        if pending is not None:
            await pending

    assert order == [
        "before1",
        "trade1",
        "after1",
        "before2",
        "trade2",
        "after2",
        "depth",
        "before3",
        "trade3",
        "after3",
    ]


async def test_async_handler_errors_are_reported_and_later_handlers_run() -> None:
    router, hooks = make_router()
    calls: list[str] = []

    async def broken(msg: Trade) -> None:
        raise RuntimeError("async bug")

    def returns_awaitable(msg: Trade) -> Any:
        # A sync callable returning a coroutine (e.g. a wrapped async function) is awaited too.
        return broken(msg)

    router.register(Trade, returns_awaitable)
    router.register(Trade, broken)
    router.register(Trade, lambda m: calls.append("last"))
    pending = router.dispatch(trade())
    assert pending is not None
    await pending
    assert calls == ["last"]
    assert router.stats.handler_errors == 2
    assert len(hooks.errors) == 2


async def test_in_thread_handlers_run_off_the_loop_thread_in_order() -> None:
    router, _ = make_router()
    loop_thread = threading.get_ident()
    ran: list[tuple[int, int]] = []

    def blocking(msg: Trade) -> None:
        ran.append((msg.t, threading.get_ident()))

    router.register(Trade, blocking, in_thread=True)
    for t in range(5):
        pending = router.dispatch(trade(t))
        assert pending is not None
        await pending
    assert [t for t, _ in ran] == list(range(5))
    assert all(thread != loop_thread for _, thread in ran)


async def test_only_the_dispatchers_own_cancellation_stops_dispatch() -> None:
    router, _ = make_router()
    calls: list[int] = []

    async def lets_inner_cancellation_escape(msg: Trade) -> None:
        inner = asyncio.ensure_future(asyncio.sleep(10))
        inner.cancel()
        await inner

    router.register(Trade, lets_inner_cancellation_escape)
    router.register(Trade, lambda m: calls.append(m.t))
    pending = router.dispatch(trade(1))
    assert pending is not None
    await pending
    assert calls == [1]
    assert router.stats.handler_errors == 1

    started = asyncio.Event()

    async def slow(msg: Trade) -> None:
        started.set()
        await asyncio.sleep(10)

    slow_router, _ = make_router()
    slow_router.register(Trade, slow)

    async def dispatcher() -> None:
        pending = slow_router.dispatch(trade(1))
        assert pending is not None
        await pending

    task = asyncio.create_task(dispatcher())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert slow_router.stats.handler_errors == 0


def test_a_sync_handler_raising_cancelled_error_has_only_failed_itself() -> None:
    """Sync code cannot be cancelled from outside: its CancelledError must not stop dispatch."""
    router, hooks = make_router()
    calls: list[int] = []
    cancelled: asyncio.Future[None] = asyncio.Future(loop=asyncio.new_event_loop())
    cancelled.cancel()

    def reads_a_cancelled_future(msg: Trade) -> None:
        if msg.t == 1:
            cancelled.result()  # raises CancelledError
        calls.append(msg.t)

    def depth_reads_a_cancelled_future(msg: Depth) -> None:
        cancelled.result()

    router.register(Trade, reads_a_cancelled_future)  # the one-handler fast path
    router.register(Depth, depth_reads_a_cancelled_future)  # the general path: two handlers
    router.register(Depth, lambda m: calls.append(-m.u))
    router.dispatch(trade(1))
    router.dispatch(trade(2))
    router.dispatch('{"e":"depthUpdate","s":"X","u":3}')
    assert calls == [2, -3]
    assert router.stats.handler_errors == 2
    assert [type(exc) for _, exc in hooks.errors] == [asyncio.CancelledError] * 2
    cancelled.get_loop().close()


# -- registration lifecycle -----------------------------------------------------------------------


def test_unresolvable_forward_references_fail_at_register_time() -> None:
    class Later(Message):
        e: Literal["later"]
        child: Undefined  # type: ignore[name-defined]  # noqa: F821

    router, _ = make_router()
    with pytest.raises(PydanticUndefinedAnnotation, match="Undefined"):
        router.register(Later, print)


def test_cancel_unregisters_idempotently_and_rebuilds() -> None:
    router, hooks = make_router()
    a: list[int] = []
    b: list[int] = []
    reg_a = router.register(Trade, lambda m: a.append(m.t))
    reg_b = router.register(Trade, lambda m: b.append(m.t))
    router.dispatch(trade(1))

    reg_a.cancel()
    reg_a.cancel()
    assert not reg_a.active
    assert router.registrations == (reg_b,)
    router.dispatch(trade(2))

    reg_b.cancel()
    router.dispatch(trade(3))  # no model claims "trade" any more
    assert (a, b) == ([1], [1, 2])
    assert hooks.unknown == [trade(3)]

    router.register(Trade, lambda m: a.append(m.t))
    router.dispatch(trade(4))
    assert a == [1, 4]
    assert "Trade" in repr(reg_b)
    assert "cancelled" in repr(reg_b)


def test_a_dispatch_reference_kept_across_registrations_stays_correct() -> None:
    router, hooks = make_router()
    trades: list[int] = []
    router.register(Trade, lambda m: trades.append(m.t))
    kept = router.dispatch
    kept(trade(1))  # compiles the tables for Trade alone
    compiled = router.dispatch
    assert compiled is not kept

    depths: list[int] = []
    registration = router.register(Depth, lambda m: depths.append(m.u))
    compiled('{"e":"depthUpdate","s":"BTCUSDT","u":7}')  # stale: hands over, rebuilds
    assert depths == [7]
    registration.cancel()
    compiled(trade(2))
    compiled('{"e":"depthUpdate","s":"BTCUSDT","u":8}')  # unclaimed again
    assert trades == [1, 2]
    assert depths == [7]
    assert hooks.unknown == ['{"e":"depthUpdate","s":"BTCUSDT","u":8}']
    assert router.stats.handled == 3


async def test_a_compiled_dispatch_sees_requests_made_after_fail_all() -> None:
    tracker = RequestTracker()
    router, _ = make_router(requests=tracker)
    router.register(Trade, print)
    router.rebuild()  # the compiled dispatch binds the tracker's table of pending requests
    for round_ in range(2):
        router.connection_lost(ConnectionError("gone"))  # with nothing pending, then with one
        request_id = tracker.next_id()
        future = tracker.create(request_id)
        router.dispatch(json.dumps({"result": "ok", "id": request_id}))
        assert future.done()
        assert (await future)["result"] == "ok"
        assert router.stats.replies == round_ + 1
        lost = tracker.create(tracker.next_id())
        router.connection_lost(ConnectionError("gone"))
        with pytest.raises(ConnectionError):
            await lost


def test_single_sync_handler_fast_path_and_general_path_agree() -> None:
    router, hooks = make_router()
    seen: list[tuple[str, int]] = []

    def seq(msg: Depth) -> tuple[str, int]:
        return msg.s, msg.u

    router.register(Trade, lambda m: seen.append(("trade", m.t)))  # one sync handler: fast path
    router.register(Depth, lambda m: seen.append(("depth", m.u)), seq_key=seq)  # general path
    router.register(AggTrade, lambda m: seen.append(("agg1", 0)))
    router.register(AggTrade, lambda m: seen.append(("agg2", 0)))  # two handlers: general path

    def failing(msg: Trade) -> None:
        raise RuntimeError("handler bug")

    router.dispatch(trade(1))
    router.dispatch('{"e":"depthUpdate","s":"X","u":1}')
    router.dispatch('{"e":"depthUpdate","s":"X","u":3}')  # a gap
    router.dispatch('{"e":"aggTrade","s":"X","p":"1"}')
    router.register(Trade, failing).cancel()
    only = router.register(Depth, failing)
    router.dispatch('{"e":"depthUpdate","s":"X","u":4}')
    only.cancel()
    assert seen == [("trade", 1), ("depth", 1), ("depth", 3), ("agg1", 0), ("agg2", 0), ("depth", 4)]
    assert router.stats.handled == 5
    assert router.stats.handler_errors == 1
    assert [type(exc) for _, exc in hooks.errors] == [RuntimeError]


def test_changing_only_handlers_keeps_the_validator() -> None:
    router, _ = make_router()
    router.register(Trade, print)
    router.rebuild()
    validator = router._validate_json
    router.register(Trade, print).cancel()
    router.rebuild()
    assert router._validate_json is validator


def test_a_model_has_one_seq_key() -> None:
    router, _ = make_router()
    router.register(Trade, print, seq_key=lambda m: ("s", m.t))
    with pytest.raises(ValueError, match="seq_key"):
        router.register(Trade, print, seq_key=lambda m: ("s", m.t))


# -- codecs ---------------------------------------------------------------------------------------


class HtxTrade(Message):
    ch: Literal["market.btcusdt.trade.detail"]
    ts: int


class HtxPing(Message):
    ping: int


def test_gzip_codec_path() -> None:
    router, hooks = make_router(discriminator="ch", codec=GzipJsonCodec())
    seen: list[Message] = []
    router.register(HtxTrade, seen.append)
    router.register(HtxPing, seen.append, match=lambda o: "ping" in o)

    router.dispatch(gzip.compress(b'{"ch":"market.btcusdt.trade.detail","ts":1}'))
    router.dispatch(gzip.compress(b'{"ping":1700000000000}'))
    router.dispatch(zlib.compress(b'{"ch":"market.btcusdt.trade.detail","ts":2}'))
    router.dispatch('{"ch":"market.btcusdt.trade.detail","ts":3}')  # a text frame
    router.dispatch(gzip.compress(b'{"ch":"market.ethusdt.kline.1min"}'))  # unknown
    router.dispatch(gzip.compress(b"[1, 2]"))  # not an object: unknown too
    router.dispatch(b"not gzip at all")  # invalid: zlib.error
    router.dispatch(gzip.compress(b'{"ch":"market.btcusdt.trade.detail"}'))  # invalid payload
    router.dispatch(gzip.compress(b"{")[:-4])  # truncated

    assert [type(m) for m in seen] == [HtxTrade, HtxPing, HtxTrade, HtxTrade]
    assert (router.stats.handled, router.stats.unknown, router.stats.invalid) == (4, 2, 3)
    assert isinstance(hooks.errors[0][1], zlib.error)
    assert isinstance(hooks.errors[1][1], ValidationError)


def test_gzip_codec_refuses_decompression_bombs() -> None:
    codec = GzipJsonCodec(max_size=1000)
    bomb = gzip.compress(b"[" + b" " * 100_000 + b"]")
    with pytest.raises(ValueError, match="max_size"):
        codec.loads(bomb)
    assert codec.loads(gzip.compress(b"[1]")) == [1]
    with pytest.raises(ValueError, match="positive"):
        GzipJsonCodec(max_size=0)


def test_custom_codec_with_a_callable_discriminator() -> None:
    class Loads:
        def loads(self, data: str | bytes) -> Any:
            return json.loads(data)

        def dumps(self, obj: Any) -> str:
            return json.dumps(obj)

    class Event(Message):
        __wsclient_tag__ = "evt"
        n: int

    router, _ = make_router(discriminator=lambda o: o["kind"], codec=Loads())
    seen: list[Event] = []
    router.register(Event, seen.append)
    router.dispatch('{"kind":"evt","n":1}')
    router.dispatch('{"kind":"evt","n":"x"}')
    router.dispatch("[" * 100_000)  # json.loads raises RecursionError: invalid, not a crash
    assert [m.n for m in seen] == [1]
    assert router.stats.invalid == 2


def test_encode() -> None:
    class Subscribe(Message):
        op: Literal["subscribe"] = "subscribe"
        args: list[str]
        limit: Decimal = Field(alias="lim", default=Decimal("0.5"))

    sub = Subscribe(args=["trades"])
    assert encode(sub) == '{"op":"subscribe","args":["trades"],"lim":"0.5"}'
    assert encode({"op": "ping", "px": Decimal("1.10")}) == '{"op":"ping","px":"1.10"}'
    assert encode([1, "a"]) == '[1,"a"]'
    assert encode("ping") == "ping"
    assert encode(b"\x00\x01") == b"\x00\x01"
    assert isinstance(encode({}, JsonCodec()), str)

    class Upper:
        def loads(self, data: str | bytes) -> Any:
            return data

        def dumps(self, obj: Any) -> bytes:
            return json.dumps(obj, sort_keys=True).encode()

    assert encode(sub, Upper()) == b'{"args": ["trades"], "lim": "0.5", "op": "subscribe"}'
    assert encode({"a": 1}, Upper()) == b'{"a": 1}'
    with pytest.raises(TypeError, match="cannot send a int"):
        encode(5)


# -- requests -------------------------------------------------------------------------------------


async def test_concurrent_requests_are_matched_by_id_and_replies_are_not_routed() -> None:
    tracker = RequestTracker()
    router, _ = make_router(requests=tracker)
    acks: list[Ack] = []
    router.register(Ack, acks.append, match=lambda o: "result" in o)

    sent: list[str | bytes] = []
    futures = {}
    for op in ("time", "ping", "listen"):
        request_id, frame = tracker.prepare({"op": op})
        futures[request_id] = tracker.create(request_id)
        sent.append(frame)
    assert [json.loads(f)["id"] for f in sent] == [1, 2, 3]
    assert tracker.pending == 3

    router.dispatch(trade())  # market data flows past the pending requests
    router.dispatch('{"result":"late","id":99}')  # not ours: ordinary routing
    for request_id in (3, 1, 2):
        router.dispatch(json.dumps({"result": f"r{request_id}", "id": request_id}).encode())

    assert [(await futures[i])["result"] for i in (1, 2, 3)] == ["r1", "r2", "r3"]
    assert [a.id for a in acks] == [99]  # replies did not reach handlers
    assert router.stats.replies == 3
    assert router.stats.frames == 5
    assert tracker.pending == 0


async def test_also_route_delivers_replies_to_handlers_too() -> None:
    tracker = RequestTracker(also_route=True)
    router, _ = make_router(requests=tracker)
    acks: list[Ack] = []
    router.register(Ack, acks.append, match=lambda o: "id" in o)
    request_id, _ = tracker.prepare({"op": "x"})
    future = tracker.create(request_id)
    router.dispatch('{"result":1,"id":1}')
    assert (await future)["result"] == 1
    assert [a.id for a in acks] == [1]
    assert router.stats.handled == 1
    assert router.stats.replies == 1


async def test_replies_through_a_codec() -> None:
    tracker = RequestTracker(id_field="cid")
    router, _ = make_router(discriminator="ch", codec=GzipJsonCodec(), requests=tracker)
    future = tracker.create("abc")
    router.dispatch(gzip.compress(b'{"cid":"abc","status":"ok"}'))
    assert (await future)["status"] == "ok"
    assert tracker.resolve(gzip.compress(b'{"cid":"abc"}'), GzipJsonCodec()) is False


async def test_fail_all_fails_every_pending_request_at_once() -> None:
    tracker = RequestTracker()
    router, _ = make_router(requests=tracker)
    futures = [tracker.create(tracker.next_id()) for _ in range(3)]
    lost = ConnectionError("connection lost")
    router.connection_lost(lost)
    for future in futures:
        with pytest.raises(ConnectionError):
            await future
    assert tracker.pending == 0


async def test_forget_and_timeouts_leave_nothing_pending() -> None:
    tracker = RequestTracker()
    future = tracker.create(1)
    tracker.forget(1)
    tracker.forget(1)
    assert future.cancelled()
    assert tracker.pending == 0
    assert tracker.resolve('{"id":1}') is False

    timed_out = tracker.create(2)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(timed_out, 0.001)
    await asyncio.sleep(0)  # done-callbacks run on the next loop iteration
    assert tracker.pending == 0

    tracker.create(3)
    with pytest.raises(ValueError, match="already pending"):
        tracker.create(3)
    assert tracker.resolve('{"data":[1]}') is False  # no "id" in the text: not even parsed
    assert tracker.resolve('{"id":[3]}') is False  # unhashable id
    assert tracker.resolve('{"id":3') is False  # undecodable
    assert tracker.resolve('{"id":3}') is True


def test_prepare_sets_ids_without_mutating_the_message() -> None:
    class Req(Message):
        op: str
        id: int | None = None

    class NoId(Message):
        op: str

    tracker = RequestTracker(first_id=10)
    original = {"op": "time"}
    assert tracker.prepare(original) == (10, '{"op":"time","id":10}')
    assert original == {"op": "time"}
    assert tracker.prepare({"op": "x", "id": "mine"}) == ("mine", '{"op":"x","id":"mine"}')

    req = Req(op="a")
    assert tracker.prepare(req) == (11, '{"op":"a","id":11}')
    assert req.id is None
    assert tracker.prepare(Req(op="b", id=7)) == (7, '{"op":"b","id":7}')
    assert tracker.prepare(NoId(op="c")) == (12, '{"op":"c","id":12}')
    with pytest.raises(TypeError, match="dict or a pydantic model"):
        tracker.prepare('{"op":"raw"}')


# -- sequences ------------------------------------------------------------------------------------


def test_sequence_tracker_contiguous_reports_nothing() -> None:
    tracker = SequenceTracker()
    assert all(tracker.observe("a", seq) is None for seq in range(100, 200))
    assert (tracker.gaps, tracker.resets, tracker.duplicates) == (0, 0, 0)
    assert tracker.last("a") == 199


def test_sequence_tracker_gap_reset_and_duplicates() -> None:
    tracker = SequenceTracker(max_replay=10)
    tracker.observe("a", 100)
    tracker.observe("b", 5)
    assert tracker.observe("a", 104) == SequenceGap("a", 101, 104, "gap", across_reconnect=False)
    assert tracker.missing == 3
    assert tracker.observe("a", 104) is None  # duplicate
    assert tracker.observe("a", 98) is None  # a short replay: duplicate
    assert tracker.duplicates == 2
    assert tracker.observe("a", 105) is None  # the baseline did not move
    reset = tracker.observe("a", 1)  # back to the start value
    assert reset == SequenceGap("a", 106, 1, "reset", across_reconnect=False)
    assert reset.missing == 0
    assert tracker.observe("a", 2) is None
    tracker.observe("b", 500)
    assert tracker.observe("b", 400) == SequenceGap("b", 501, 400, "reset", False)  # far back
    assert (tracker.gaps, tracker.resets) == (2, 2)

    tracker.forget("a")
    assert tracker.observe("a", 50) is None  # a forgotten stream starts afresh
    tracker.clear()
    assert tracker.last("b") is None


def test_sequence_gap_across_a_reconnect() -> None:
    tracker = SequenceTracker()
    for seq in (10, 11):
        tracker.observe("a", seq)
        tracker.observe("b", seq)
    tracker.mark_reconnect()
    assert tracker.observe("a", 12) is None  # contiguous across the reconnect: fine
    assert tracker.observe("b", 11) is None  # a replayed duplicate keeps the mark...
    gap = tracker.observe("b", 15)  # ...so the gap straddling the reconnect says so
    assert gap == SequenceGap("b", 12, 15, "gap", across_reconnect=True)
    assert tracker.observe("a", 20) == SequenceGap("a", 13, 20, "gap", across_reconnect=False)
    assert tracker.observe("new", 1) is None


def test_router_feeds_sequences_from_seq_key_and_model_method() -> None:
    class Book(Message):
        e: Literal["book"]
        sym: str
        seq: int

        def __wsclient_seq__(self) -> tuple[Hashable, int]:
            return self.sym, self.seq

    gaps: list[SequenceGap] = []
    router, _ = make_router(on_gap=gaps.append)
    router.register(Book, print)
    router.register(Trade, print, seq_key=lambda m: ("trades", m.t))
    router.register(Trade, print)  # no seq_key of its own: the model keeps the one given

    book = '{{"e":"book","sym":"{}","seq":{}}}'
    for frame in (
        book.format("BTC", 1),
        book.format("ETH", 1),
        book.format("BTC", 2),
        book.format("BTC", 4),
        trade(1),
        trade(2),
    ):
        router.dispatch(frame)
    router.connection_lost(ConnectionError("gone"))
    router.dispatch(trade(9))
    router.dispatch(book.format("ETH", 2))

    assert gaps == [
        SequenceGap("BTC", 3, 4, "gap", False),
        SequenceGap("trades", 3, 9, "gap", True),
    ]
    assert router.stats.handled == 8


def test_a_raising_seq_key_counts_as_a_handler_error_and_the_handlers_still_run() -> None:
    router, hooks = make_router()
    seen: list[Trade] = []
    router.register(Trade, seen.append, seq_key=lambda m: m.missing)  # type: ignore[attr-defined]
    router.dispatch(trade())
    assert len(seen) == 1
    assert router.stats.handler_errors == 1
    assert isinstance(hooks.errors[0][1], AttributeError)


# -- robustness -----------------------------------------------------------------------------------

_json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=20,
)
_tags = st.sampled_from(["trade", "aggTrade", "depthUpdate", "kline", ""]) | _json_values
_tagged_dicts = st.fixed_dictionaries(
    {"e": _tags},
    optional={"s": _json_values, "p": _json_values, "t": _json_values, "u": _json_values},
)
_huge_numbers = st.sampled_from(
    [
        "1" * 5000,
        "-" + "9" * 20000,
        "1e999999",
        "-1e-999999",
        "1" + "0" * 400 + ".5",
        "123456789012345678901234567890",
    ]
)


def _frames() -> st.SearchStrategy[str | bytes]:
    return st.one_of(
        st.text(),
        st.binary(),
        _json_values.map(json.dumps),
        _tagged_dicts.map(json.dumps),
        _tagged_dicts.map(lambda d: json.dumps(d).encode()),
        st.integers(1, 12_000).map(lambda n: "[" * n + "]" * n),
        st.integers(1, 12_000).map(lambda n: '{"a":' * n + "1" + "}" * n),
        st.integers(1, 12_000).map(lambda n: "[" * n),
        st.builds(
            lambda tag, key, number: f'{{"e":"{tag}","s":"x","{key}":{number},"t":{number}}}',
            st.sampled_from(["trade", "depthUpdate", "zzz"]),
            st.sampled_from(["p", "u", "t"]),
            _huge_numbers,
        ),
        st.sampled_from(["\ud800", '{"e":"\ud800"}', "\x00", '[17,"hb"]', '{"result":null}']),
    )


def _robust_routers() -> list[Router]:
    routers = []
    for kwargs in (
        {"discriminator": "e"},
        {"discriminator": ("e",)},
        {"discriminator": lambda o: o["e"]},
        {"discriminator": "e", "codec": GzipJsonCodec()},
        {"discriminator": "e", "requests": RequestTracker()},
    ):
        router = Router(on_error=lambda *a: None, on_unknown=lambda raw: None, **kwargs)
        for model, tag in ((Trade, "trade"), (AggTrade, "aggTrade"), (Depth, "depthUpdate")):
            router.register(model, lambda m: None, tag=tag)
        router.register(Heartbeat, lambda m: None, match=lambda o: isinstance(o, list) and o[1] == "hb")
        router.register(Ack, lambda m: None, match=lambda o: "result" in o)
        routers.append(router)
    return routers


_ROUTERS = _robust_routers()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frames=st.lists(_frames(), min_size=1, max_size=5))
def test_dispatch_never_raises_and_every_frame_is_accounted_for(
    frames: list[str | bytes],
) -> None:
    for router in _ROUTERS:
        before = router.stats.frames
        dispatched = 0
        for frame in frames:
            assert router.dispatch(frame) is None  # sync handlers only
            dispatched += 1
            if isinstance(router.codec, GzipJsonCodec) and isinstance(frame, bytes):
                assert router.dispatch(gzip.compress(frame)) is None
                dispatched += 1
        stats = router.stats
        assert stats.handled + stats.unknown + stats.invalid == stats.frames
        assert stats.frames - before == dispatched
        assert stats.handler_errors == stats.hook_errors == 0


async def test_robustness_while_a_request_is_pending() -> None:
    tracker = RequestTracker()
    router, _ = make_router(requests=tracker)
    router.register(Trade, print)
    tracker.create(1)
    frames: list[str | bytes] = [
        "[" * 10_000,
        b"\xff",
        '{"id":',
        '{"id":[1]}',
        '{"id":{"a":1}}',
        "[1,2]",
        '"id"',
    ]
    for frame in frames:
        assert router.dispatch(frame) is None
    assert router.stats.frames == len(frames)
    assert router.stats.replies == 0
    assert router.dispatch('{"id":1}') is None
    assert router.stats.replies == 1
