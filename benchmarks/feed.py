"""The deterministic market-data stream the benchmark server writes, and its WebSocket framing.

No pydantic here: the server imports this and must start fast (the server-restart scenario restarts
it while a client waits).

Every payload is a JSON text of ~160 bytes: a book update (50 %), a trade (35 %) or a ticker (15 %),
with Decimal prices as strings. The ``ts`` field is a fixed-width slot (20 characters, the number
right-aligned with leading spaces, which JSON allows) so that a server can stamp a pre-encoded frame
with ``time.monotonic_ns()`` at write time without changing its length or header. The stream ends
with an ``{"type":"end",...}`` marker frame.

The pool benchmark's venue-like feed is different: Binance-shaped trades of ~160 bytes on streams named
``sNN@trade`` (:func:`trade_streams`), trade ids ``t`` contiguous from 1 on every stream
(:func:`trade_frames`).
"""

from __future__ import annotations

import random
import time

__all__ = [
    "END_TYPE",
    "STAMP_WIDTH",
    "Template",
    "end_payload",
    "frame",
    "frame_header",
    "stamp",
    "stream_chunks",
    "templates",
    "trade_frames",
    "trade_streams",
]

STAMP_WIDTH = 20
END_TYPE = "end"
SYMBOLS = ("BTC-USD", "ETH-USD", "SOL-USD", "XRP-USD", "ADA-USD", "AVAX-USD", "LINK-USD", "DOGE-USD")
BASE_PRICE = {
    "BTC-USD": 43000.0,
    "ETH-USD": 2300.0,
    "SOL-USD": 101.0,
    "XRP-USD": 0.62,
    "ADA-USD": 0.58,
    "AVAX-USD": 36.0,
    "LINK-USD": 14.5,
    "DOGE-USD": 0.09,
}

#: A payload split around its ``ts`` slot: ``head + stamp + tail`` is the JSON text.
Template = tuple[bytes, bytes]


def frame_header(length: int, opcode: int = 0x1, rsv1: bool = False) -> bytes:
    """Header of an unmasked, final server-to-client frame (RFC 6455 §5.2)."""
    first = 0x80 | (0x40 if rsv1 else 0) | opcode
    if length < 126:
        return bytes((first, length))
    if length < 65536:
        return bytes((first, 126)) + length.to_bytes(2, "big")
    return bytes((first, 127)) + length.to_bytes(8, "big")


def frame(payload: bytes, opcode: int = 0x1) -> bytes:
    return frame_header(len(payload), opcode) + payload


def stamp(ns: int | None = None) -> bytes:
    """The ``ts`` slot's content: ``time.monotonic_ns()`` right-aligned in STAMP_WIDTH characters."""
    return b"%*d" % (STAMP_WIDTH, time.monotonic_ns() if ns is None else ns)


def _price(rng: random.Random, symbol: str) -> str:
    base = BASE_PRICE[symbol]
    value = base * (1 + rng.uniform(-0.002, 0.002))
    places = 2 if base >= 10 else 5
    return f"{value:.{places}f}"


def _template(rng: random.Random, seq: int, kind: str | None = None) -> Template:
    symbol = SYMBOLS[rng.randrange(len(SYMBOLS))]
    if kind is None:
        r = rng.random()
        kind = "book" if r < 0.50 else "trade" if r < 0.85 else "ticker"
    head = f'{{"type":"{kind}","symbol":"{symbol}","seq":{seq},"ts":'
    if kind == "book":
        tail = (
            f',"side":"{"bid" if rng.random() < 0.5 else "ask"}","price":"{_price(rng, symbol)}",'
            f'"size":"{rng.uniform(0, 50):.8f}","level":{rng.randrange(1, 50)},"action":"update",'
            f'"venue":"bench"}}'
        )
    elif kind == "trade":
        tail = (
            f',"price":"{_price(rng, symbol)}","size":"{rng.uniform(0, 2):.8f}",'
            f'"side":"{"buy" if rng.random() < 0.5 else "sell"}","trade_id":{rng.randrange(10**9, 10**10)},'
            f'"venue":"bench"}}'
        )
    else:
        bid = _price(rng, symbol)
        tail = (
            f',"bid":"{bid}","ask":"{_price(rng, symbol)}","last":"{bid}",'
            f'"volume":"{rng.uniform(1e3, 1e6):.3f}"}}'
        )
    return head.encode(), tail.encode()


def templates(count: int, seed: int = 1, first_seq: int = 1) -> list[Template]:
    """``count`` payload templates with consecutive ``seq`` numbers from ``first_seq``."""
    rng = random.Random(seed)
    return [_template(rng, first_seq + i) for i in range(count)]


def first_template(seed: int = 1) -> Template:
    """The first message of a feed connection: a ticker with ``seq`` 0."""
    return _template(random.Random(seed), 0, "ticker")


def end_payload(count: int) -> bytes:
    return b'{"type":"end","symbol":"","seq":%d,"ts":%s}' % (count, stamp(0))


def stream_chunks(n: int, seed: int = 1, chunk_size: int = 256 * 1024) -> tuple[list[bytes], float]:
    """``n`` frames plus the end marker, concatenated into blocks of whole frames.

    Blocks end on frame boundaries, so a pong may be written between two blocks. Returns the blocks
    and the average payload size.
    """
    rng = random.Random(seed)
    ts = stamp()
    chunks: list[bytes] = []
    buf = bytearray()
    payload_bytes = 0
    for seq in range(1, n + 1):
        head, tail = _template(rng, seq)
        size = len(head) + STAMP_WIDTH + len(tail)
        payload_bytes += size
        buf += frame_header(size)
        buf += head
        buf += ts
        buf += tail
        if len(buf) >= chunk_size:
            chunks.append(bytes(buf))
            buf.clear()
    buf += frame(end_payload(n))
    chunks.append(bytes(buf))
    return chunks, payload_bytes / max(1, n)


# ------------------------------------------------------------------------------ the pool's trade feed

#: First trade time of the pool feed (ms since the epoch); ``E`` and ``T`` count up from it.
TRADE_EPOCH_MS = 1_732_500_000_000


def trade_streams(count: int) -> list[str]:
    """The names of ``count`` trade streams: ``s00@trade``, ``s01@trade``, …"""
    width = max(2, len(str(count - 1)))
    return [f"s{i:0{width}d}@trade" for i in range(count)]


def trade_frames(streams: list[str], per_stream: int, seed: int = 1) -> dict[str, list[bytes]]:
    """Each stream's ``per_stream`` trade frames (header and payload), trade ids 1..per_stream.

    A payload is a Binance-like trade of ~160 bytes: ``{"e":"trade","E":…,"s":"s07@trade","t":17,
    "p":"43012.50000000","q":"0.01300000","b":…,"a":…,"T":…,"m":true,"M":true}``.
    """
    rng = random.Random(seed)
    out: dict[str, list[bytes]] = {}
    for n, stream in enumerate(streams):
        price = rng.uniform(10.0, 60_000.0)
        order = 10**10 + n * 10**7
        frames: list[bytes] = []
        for t in range(1, per_stream + 1):
            price *= 1 + rng.uniform(-0.0005, 0.0005)
            ms = TRADE_EPOCH_MS + t
            payload = (
                f'{{"e":"trade","E":{ms + 3},"s":"{stream}","t":{t},"p":"{price:.8f}",'
                f'"q":"{rng.uniform(0.0001, 5.0):.8f}","b":{order + 2 * t},"a":{order + 2 * t + 1},'
                f'"T":{ms},"m":{"true" if rng.random() < 0.5 else "false"},"M":true}}'
            ).encode()
            frames.append(frame(payload))
        out[stream] = frames
    return out
