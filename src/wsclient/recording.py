"""Recordings of a feed: what a client received, when, and when its connections ended.

A recording is a JSON Lines file, gzip-compressed when its name ends in ``.gz``. The first line is a
header; every other line is one frame or one lifecycle event, in arrival order::

    {"format": "wsclient-recording", "version": 1, "url": "wss://venue.example/ws?token=***",
     "started": "2025-01-02T03:04:05.678901+00:00", "wsclient": "0.1.0"}
    {"t": 0.004121, "wall": 1735787045.683022, "kind": "connected", "connection": 1}
    {"t": 0.005310, "wall": 1735787045.684211, "kind": "text", "data": "{\\"type\\":\\"ack\\"}"}
    {"t": 0.105872, "wall": 1735787045.784773, "kind": "binary", "data": "H4sIAAAA..."}
    {"t": 2.500112, "wall": 1735787048.179013, "kind": "disconnected", "connection": 1,
     "code": 1012, "reason": "service restart", "detail": "connection closed with code 1012 ..."}
    {"t": 9.800000, "wall": 1735787055.478901, "kind": "end", "frames": 412}

* ``t`` is seconds since the recording started (a monotonic clock: spacing survives clock changes),
  ``wall`` the wall-clock time (Unix seconds) of the same instant.
* ``text`` frames hold the frame as received; ``binary`` frames hold it in base64.
* ``connected`` starts a connection; ``disconnected`` ends one: ``code`` is the close code (1006: the
  connection dropped without a close frame; ``null``: the client declared the link dead), ``reason``
  the close frame's reason, ``detail`` the client's description.
* ``end`` is written when the recording is finished cleanly; a file without it was cut short (a
  killed recorder) and still reads up to its last complete line.

The URL and close reasons are written with credentials masked; frames are written as received.
Times are those at which the client's handlers got each frame, which is as soon as it was read
unless handlers ahead of it were busy.

:class:`RecordingWriter` writes a file, :meth:`RecordingWriter.attach` feeds it from a
:class:`~wsclient.Client`, :func:`load` reads one back (:class:`Recording`), which
:class:`~wsclient.testing.ReplayServer` plays to clients.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import gzip
import io
import json
import os
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, Final, Literal, Self

from .errors import WSClientError
from .events import ClientEvent, Connected, Disconnected
from .redact import redact_url

if TYPE_CHECKING:
    from .client import Client

__all__ = [
    "FORMAT",
    "VERSION",
    "Entry",
    "Recording",
    "RecordingError",
    "RecordingWriter",
    "Segment",
    "load",
]

FORMAT: Final = "wsclient-recording"
"""The header's ``format`` value."""
VERSION: Final = 1
"""The format version this module writes and reads."""

Kind = Literal["text", "binary", "connected", "disconnected", "end"]


class RecordingError(WSClientError, ValueError):
    """A recording cannot be read: not a recording, another version, or a malformed line."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One line of a recording after the header."""

    t: float
    """Seconds since the recording started."""
    wall: float
    """Wall-clock time, Unix seconds."""
    kind: Kind
    data: str | bytes | None = None
    """The frame, for ``text`` and ``binary`` entries."""
    connection: int | None = None
    code: int | None = None
    reason: str = ""
    detail: str = ""

    @property
    def is_frame(self) -> bool:
        """Whether this is a frame (``text`` or ``binary``)."""
        return self.kind == "text" or self.kind == "binary"


@dataclass(frozen=True, slots=True)
class Segment:
    """What one recorded connection received, and how it ended."""

    frames: tuple[Entry, ...]
    """The frames, in order."""
    start: float
    """``t`` of the connection's first entry: frame offsets count from it."""
    end: Entry | None
    """The ``disconnected`` entry that ended the connection; ``None`` for the last one, still open
    when the recording finished."""


@dataclass(frozen=True, slots=True)
class Recording:
    """A recording read back by :func:`load`."""

    url: str
    """The URL recorded, credentials masked."""
    started: str
    """When the recording started (ISO 8601, UTC)."""
    entries: tuple[Entry, ...]
    complete: bool
    """Whether the file ends with its ``end`` line (False: the recorder was cut short)."""
    header: dict[str, Any] = field(default_factory=dict)

    @property
    def frames(self) -> list[str | bytes]:
        """Every frame, in order."""
        return [e.data for e in self.entries if e.data is not None]

    @property
    def segments(self) -> list[Segment]:
        """The recording cut at each ``disconnected`` entry: one segment per recorded connection.

        A frame can be delivered just before its connection's ``connected`` entry (the subscription's
        acknowledgement, read while the client was still opening), so connections are delimited by
        their ends, not their starts.
        """
        segments: list[Segment] = []
        frames: list[Entry] = []
        start: float | None = None
        for entry in self.entries:
            if entry.kind == "end":
                continue
            if start is None:
                start = entry.t
            if entry.is_frame:
                frames.append(entry)
            elif entry.kind == "disconnected":
                segments.append(Segment(tuple(frames), start, entry))
                frames, start = [], None
        if start is not None:
            segments.append(Segment(tuple(frames), start, None))
        return segments

    @property
    def duration(self) -> float:
        """Seconds from the start to the last entry."""
        return self.entries[-1].t if self.entries else 0.0


def _open(path: Path, mode: Literal["rt", "wt"]) -> IO[str]:
    if path.name.endswith(".gz"):
        return gzip.open(path, mode, encoding="utf-8", newline="\n")
    return open(path, mode, encoding="utf-8", newline="\n")


class RecordingWriter:
    """Writes a recording file (see the module's docstring for the format).

    Use as a context manager, or call :meth:`close`; :meth:`attach` records a client's frames and
    connection events. The file is gzip-compressed when its name ends in ``.gz``. Writes are buffered:
    a frame costs a ``json.dumps`` and a buffered write, done in the event loop.
    """

    def __init__(self, path: str | os.PathLike[str], url: str, *, overwrite: bool = True) -> None:
        """Create ``path`` and write the header; ``url`` is recorded with credentials masked.

        Raises:
            FileExistsError: When ``path`` exists and ``overwrite`` is False.
        """
        self.path = Path(path)
        if not overwrite and self.path.exists():
            raise FileExistsError(f"{self.path} exists")
        self.frames = 0
        """Frames written so far."""
        self.connections = 0
        """``connected`` entries written so far."""
        self.disconnects = 0
        """``disconnected`` entries written so far."""
        self._t0 = time.monotonic()
        self._wall0 = time.time()
        self._file: IO[str] | None = _open(self.path, "wt")
        started = datetime.datetime.fromtimestamp(self._wall0, datetime.UTC).isoformat()
        self._line(
            {
                "format": FORMAT,
                "version": VERSION,
                "url": redact_url(url),
                "started": started,
                "wsclient": _version(),
            }
        )

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` ran."""
        return self._file is None

    def _line(self, record: dict[str, Any]) -> bool:
        if self._file is None:
            return False  # a frame delivered after close(): the recording is over
        self._file.write(json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n")
        return True

    def _stamp(self, kind: Kind) -> dict[str, Any]:
        elapsed = time.monotonic() - self._t0
        return {"t": round(elapsed, 6), "wall": round(self._wall0 + elapsed, 6), "kind": kind}

    def frame(self, data: str | bytes) -> None:
        """Record one inbound frame, now."""
        if isinstance(data, bytes):
            record = self._stamp("binary")
            record["data"] = base64.b64encode(data).decode("ascii")
        else:
            record = self._stamp("text")
            record["data"] = data
        if self._line(record):
            self.frames += 1

    def connected(self, connection: int) -> None:
        """Record that connection number ``connection`` opened."""
        record = self._stamp("connected")
        record["connection"] = connection
        if self._line(record):
            self.connections += 1

    def disconnected(self, connection: int, code: int | None, reason: str = "", detail: str = "") -> None:
        """Record that a connection ended: its close ``code`` (``None``: declared dead), the close
        frame's ``reason`` and a description (``detail``); both texts should be masked already."""
        record = self._stamp("disconnected")
        record.update(connection=connection, code=code, reason=reason, detail=detail)
        if self._line(record):
            self.disconnects += 1

    def on_event(self, event: ClientEvent) -> None:
        """A ``client.on_event`` callback: records ``Connected`` and ``Disconnected``."""
        if isinstance(event, Connected):
            self.connected(event.connection_id)
        elif isinstance(event, Disconnected):
            self.disconnected(
                event.connection_id, event.code, _close_reason(event.code, event.reason), event.reason
            )

    def attach(self, client: Client) -> Self:
        """Record every frame ``client`` receives and its connections' starts and ends.

        Register before ``client.start()`` so that the first connection is recorded whole. Frames
        matched as heartbeat replies or answered ``ping_replies`` are not delivered, so not recorded.
        """
        client.on_message(self.frame)
        client.on_event(self.on_event)
        return self

    def close(self) -> None:
        """Write the ``end`` line and close the file. Idempotent."""
        file = self._file
        if file is None:
            return
        try:
            record = self._stamp("end")
            record["frames"] = self.frames
            self._line(record)
        finally:
            self._file = None
            file.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _close_reason(code: int | None, detail: str) -> str:
    """The close frame's reason out of a ``Disconnected`` description (already masked).

    ``TransportClosed`` describes itself as ``connection closed with code N (reason)``; anything else
    (a dead-link verdict) has no close frame, hence no reason.
    """
    prefix = f"connection closed with code {code} ("
    if code is not None and detail.startswith(prefix) and detail.endswith(")"):
        return detail[len(prefix) : -1]
    return ""


def _version() -> str:
    from . import __version__

    return __version__


def load(path: str | os.PathLike[str]) -> Recording:
    """Read a recording written by :class:`RecordingWriter` (gzip when the name ends in ``.gz``).

    A file cut short (no ``end`` line, or a gzip stream that stops mid-way) reads up to its last
    complete line, with ``complete=False``.

    Raises:
        FileNotFoundError: When ``path`` does not exist.
        RecordingError: When the file is not a recording of a version this module reads, or a line
            is malformed; the message names the line.
    """
    path = Path(path)
    entries: list[Entry] = []
    header: dict[str, Any] | None = None
    complete = False
    with _open(path, "rt") as file:
        for number, line in _lines(file, path):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                if number > 1 and not line.endswith("\n"):
                    break  # the last line, cut short by a killed recorder
                raise RecordingError(f"{path}:{number}: not a JSON line ({exc})") from None
            if header is None:
                header = _check_header(record, path)
                continue
            entry = _entry(record, path, number)
            if entry.kind == "end":
                complete = True
            entries.append(entry)
    if header is None:
        raise RecordingError(f"{path}: empty file, not a wsclient recording")
    return Recording(
        url=str(header.get("url", "")),
        started=str(header.get("started", "")),
        entries=tuple(entries),
        complete=complete,
        header=header,
    )


def _lines(file: IO[str], path: Path) -> Iterator[tuple[int, str]]:
    number = 0
    try:
        for number, line in enumerate(file, 1):
            yield number, line
    except (EOFError, zlib.error):
        return  # a gzip stream cut short: what was read stands
    except (gzip.BadGzipFile, UnicodeDecodeError, io.UnsupportedOperation) as exc:
        raise RecordingError(f"{path}:{number + 1}: cannot be read as a recording ({exc})") from None


def _check_header(record: object, path: Path) -> dict[str, Any]:
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise RecordingError(
            f'{path}: not a wsclient recording (its first line has no "format": "{FORMAT}"); '
            "record one with `wsclient record URL --out FILE`"
        )
    version = record.get("version")
    if version != VERSION:
        raise RecordingError(
            f"{path}: recording format version {version!r}, this wsclient reads version {VERSION}: "
            "read it with the wsclient that wrote it, or record it again"
        )
    return record


def _entry(record: object, path: Path, number: int) -> Entry:
    try:
        if not isinstance(record, dict):
            raise TypeError("not a JSON object")
        kind = record["kind"]
        t, wall = float(record["t"]), float(record["wall"])
        if kind == "text":
            data = record["data"]
            if not isinstance(data, str):
                raise TypeError("text data must be a string")
            return Entry(t, wall, kind, data)
        if kind == "binary":
            return Entry(t, wall, kind, base64.b64decode(record["data"], validate=True))
        if kind == "connected":
            return Entry(t, wall, kind, connection=int(record["connection"]))
        if kind == "disconnected":
            code = record.get("code")
            return Entry(
                t,
                wall,
                kind,
                connection=int(record["connection"]),
                code=None if code is None else int(code),
                reason=str(record.get("reason", "")),
                detail=str(record.get("detail", "")),
            )
        if kind == "end":
            return Entry(t, wall, kind)
        raise ValueError(f"unknown kind {kind!r}")
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        what = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
        raise RecordingError(f"{path}:{number}: malformed entry ({what})") from None
