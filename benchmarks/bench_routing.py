"""Micro-benchmark: Router.dispatch against a bare pydantic validate_json (not a test).

Run with ``python benchmarks/bench_routing.py [frames]``. Prints µs/frame, best of several rounds,
for ~160-byte trade frames with Decimal prices:

* ``bare``: ``TypeAdapter(Trade).validate_json``, the floor any typed router builds on;
* ``union``: the same through a three-model discriminated union (what the router validates with);
* ``dispatch``: ``Router.dispatch`` with three models and one sync handler per model;
* further variants: bytes frames, an async handler (awaiting the returned awaitable), a callable
  discriminator, a gzip codec, and a request pending while market data flows.
"""

from __future__ import annotations

import asyncio
import gc
import gzip
import sys
import time
from collections.abc import Callable, Hashable
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter

from wsclient.codec import GzipJsonCodec
from wsclient.routing import Message, RequestTracker, Router

ROUNDS = 5


class Trade(Message):
    type: Literal["trade"]
    symbol: str
    price: Decimal
    size: Decimal
    side: Literal["buy", "sell"]
    seq: int
    ts: int


class Quote(Message):
    type: Literal["quote"]
    symbol: str
    bid: Decimal
    ask: Decimal
    seq: int


class Status(Message):
    type: Literal["status"]
    status: str


def make_frames(n: int) -> list[str]:
    return [
        f'{{"type":"trade","symbol":"BTC-USD","price":"{43000 + i % 500}.{i % 100:02d}",'
        f'"size":"0.{i % 10**8:08d}","side":"{"buy" if i % 2 else "sell"}","seq":{i},'
        f'"ts":{1_700_000_000_000 + i},"venue":"bench-exchange","trade_id":{i}}}'
        for i in range(n)
    ]


def best_of(run: Callable[[], None], n: int) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        gc.collect()
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best / n * 1e6


def noop(msg: Any) -> None:
    pass


def loop(dispatch: Callable[[Any], object], frames: list[Any]) -> Callable[[], None]:
    def run() -> None:
        for f in frames:
            dispatch(f)

    return run


def router_with(**kwargs: Any) -> Router:
    router = Router(**kwargs)
    for model in (Trade, Quote, Status):
        router.register(model, noop)
    router.rebuild()
    return router


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    frames = make_frames(n)
    frames_b = [f.encode() for f in frames]
    size = sum(map(len, frames_b)) / n
    print(f"{n} frames, {size:.0f} bytes average, Python {sys.version.split()[0]}")

    bare = TypeAdapter(Trade).validate_json
    union = TypeAdapter(Annotated[Trade | Quote | Status, Field(discriminator="type")]).validate_json
    router = router_with()
    dispatch = router.dispatch

    def run_bare() -> None:
        for f in frames:
            bare(f)

    def run_union() -> None:
        for f in frames:
            union(f)

    def run_dispatch() -> None:
        for f in frames:
            dispatch(f)

    def run_dispatch_bytes() -> None:
        for f in frames_b:
            dispatch(f)

    results: dict[str, float] = {}
    results["bare validate_json (Trade)"] = best_of(run_bare, n)
    results["validate_json, 3-model union"] = best_of(run_union, n)
    results["Router.dispatch (str)"] = best_of(run_dispatch, n)
    results["Router.dispatch (bytes)"] = best_of(run_dispatch_bytes, n)
    assert router.stats.handled == ROUNDS * 2 * n, router.stats

    tracked = router_with(requests=RequestTracker())

    async def with_pending_request() -> None:
        tracked.requests.create(10**9)  # type: ignore[union-attr]
        results["dispatch, a request pending"] = best_of(loop(tracked.dispatch, frames), n)

    asyncio.run(with_pending_request())

    def tag_of(obj: Any) -> Hashable | None:
        return obj.get("type") if isinstance(obj, dict) else None

    by_callable = Router(discriminator=tag_of)
    for model, tag in ((Trade, "trade"), (Quote, "quote"), (Status, "status")):
        by_callable.register(model, noop, tag=tag)
    results["dispatch, callable discriminator"] = best_of(loop(by_callable.dispatch, frames), n)

    zipped = [gzip.compress(f) for f in frames_b[: n // 4]]
    gz = router_with(codec=GzipJsonCodec())
    results["dispatch, gzip codec (n/4 frames)"] = best_of(loop(gz.dispatch, zipped), len(zipped))

    async_router = Router()

    async def anoop(msg: Any) -> None:
        pass

    for model in (Trade, Quote, Status):
        async_router.register(model, anoop)

    async def run_async() -> None:
        d = async_router.dispatch
        for f in frames:
            pending = d(f)
            if pending is not None:
                await pending

    def run_async_sync() -> None:
        asyncio.run(run_async())

    results["dispatch + await, async handler"] = best_of(run_async_sync, n)

    base = results["bare validate_json (Trade)"]
    width = max(map(len, results))
    for name, us in results.items():
        print(f"{name:<{width}}  {us:6.3f} µs/frame  ({us - base:+.3f} vs bare)")


if __name__ == "__main__":
    main()
