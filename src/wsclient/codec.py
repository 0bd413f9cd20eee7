"""Frame codecs: how a frame's bytes or text become Python values, and back.

Most venues send JSON text, and for those the router never calls a codec at all: pydantic validates
the raw frame directly (``TypeAdapter.validate_json``), which is the fastest path there is. A codec
matters for the others, e.g. HTX, whose frames are gzip-compressed binary JSON::

    router = Router(codec=GzipJsonCodec())

A codec other than the default :class:`JsonCodec` makes the router decode each frame with
``codec.loads`` and validate the result with ``validate_python``.
"""

from __future__ import annotations

import zlib
from typing import Any, Protocol, runtime_checkable

from pydantic import BaseModel
from pydantic_core import from_json, to_json

__all__ = ["Codec", "GzipJsonCodec", "JsonCodec", "encode", "is_json_codec"]

Data = str | bytes


@runtime_checkable
class Codec(Protocol):
    """Turns inbound frames into Python values and outbound values into frames.

    ``loads`` may raise any exception for a frame it cannot decode; the router counts that frame as
    invalid and hands it to the error hook. ``dumps`` returns ``str`` for a text frame and ``bytes``
    for a binary frame.
    """

    def loads(self, data: Data, /) -> Any:
        """Decode one inbound frame."""
        ...

    def dumps(self, obj: Any, /) -> Data:
        """Encode one outbound value (already reduced to JSON-compatible types)."""
        ...


class JsonCodec:
    """The default codec: JSON text in, JSON text out.

    The router recognises this exact class and skips it on the inbound path, validating the raw
    frame with pydantic instead; ``loads`` is still used where a plain decoded value is needed
    (predicate routing, request replies). Subclass it only to change behaviour; a subclass is
    treated like any other custom codec.
    """

    __slots__ = ()

    def loads(self, data: Data, /) -> Any:
        """Parse JSON text or UTF-8 bytes with pydantic-core's parser."""
        return from_json(data)

    def dumps(self, obj: Any, /) -> str:
        """Serialise to compact JSON text (``Decimal``, ``datetime`` and models included)."""
        return to_json(obj).decode()

    def __repr__(self) -> str:
        return "JsonCodec()"


class GzipJsonCodec:
    """Compressed binary JSON in (gzip or zlib, as HTX sends), plain JSON text out.

    Text frames are parsed as JSON without decompression, so a venue that mixes both works.
    ``wbits`` is passed to :mod:`zlib`: the default 47 accepts both gzip and zlib headers; use -15
    for raw deflate. ``max_size`` bounds the decompressed size, so a small hostile frame cannot
    expand into gigabytes (a decompression bomb); a larger frame fails to decode and is counted as
    invalid.
    """

    __slots__ = ("max_size", "wbits")

    def __init__(self, *, wbits: int = 47, max_size: int = 16 * 2**20) -> None:
        if max_size <= 0:
            raise ValueError(f"max_size must be positive, got {max_size}")
        self.wbits = wbits
        self.max_size = max_size

    def loads(self, data: Data, /) -> Any:
        """Decompress a binary frame (text frames are taken as is) and parse the JSON in it."""
        if isinstance(data, str):
            return from_json(data)
        inflater = zlib.decompressobj(self.wbits)
        text = inflater.decompress(data, self.max_size)
        if inflater.unconsumed_tail:
            raise ValueError(f"frame decompresses to more than max_size={self.max_size} bytes")
        if not inflater.eof:
            raise ValueError("truncated compressed frame")
        return from_json(text)

    def dumps(self, obj: Any, /) -> str:
        """Serialise to JSON text: venues that compress downstream still expect plain requests."""
        return to_json(obj).decode()

    def __repr__(self) -> str:
        return f"GzipJsonCodec(wbits={self.wbits}, max_size={self.max_size})"


def is_json_codec(codec: Codec | None) -> bool:
    """True when ``codec`` is the default JSON codec, i.e. frames can go straight to pydantic."""
    return codec is None or type(codec) is JsonCodec


def encode(msg: object, codec: Codec | None = None) -> Data:
    """Turn an outbound value into a frame.

    * ``str`` and ``bytes`` pass through unchanged (text and binary frames).
    * A pydantic model (e.g. a :class:`~wsclient.Message`) is dumped with its aliases, so a field
      declared as ``side: str = Field(alias="S")`` goes out as ``"S"``, mirroring how it is read.
    * ``dict``, ``list`` and ``tuple`` become compact JSON text; ``Decimal``, ``datetime`` and
      nested models are serialised as pydantic does.

    With a non-default ``codec``, models are first dumped to JSON-compatible Python values
    (``model_dump(mode="json")``) and every non-``str``/``bytes`` value goes through
    ``codec.dumps``. Anything else raises :class:`TypeError`.
    """
    if isinstance(msg, str | bytes):
        return msg
    if codec is None or type(codec) is JsonCodec:
        if isinstance(msg, BaseModel):
            return msg.model_dump_json(by_alias=True)
        if isinstance(msg, dict | list | tuple):
            return to_json(msg, by_alias=True).decode()
    elif isinstance(msg, BaseModel):
        return codec.dumps(msg.model_dump(mode="json", by_alias=True))
    elif isinstance(msg, dict | list | tuple):
        return codec.dumps(msg)
    raise TypeError(
        f"cannot send a {type(msg).__name__}: pass a dict, a list, a pydantic model (Message), "
        "str (text frame) or bytes (binary frame)"
    )
