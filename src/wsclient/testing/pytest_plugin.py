"""pytest fixtures for testing code built on wsclient against a fake feed and a faulty network.

Opt in from a ``conftest.py`` or a test module::

    pytest_plugins = ["wsclient.testing.pytest_plugin"]

Fixtures (function-scoped, async; they need ``pytest-asyncio`` and work in its strict and auto modes):

``feed_server``
    A started :class:`~wsclient.testing.FeedServer` on a free port of 127.0.0.1, stopped after the
    test. Connect to ``feed_server.url``.
``chaos_proxy``
    A started :class:`~wsclient.testing.ChaosProxy` forwarding to ``feed_server``. Connect to
    ``chaos_proxy.url(feed_server.path)`` and switch faults from the test (``blackhole()``,
    ``latency``, ``idle_timeout``, ``reset()``…).
``make_feed_server``
    An async factory for servers with custom options: ``await make_feed_server(rate=100,
    faults=[...])`` takes :class:`~wsclient.testing.FeedServer`'s keyword arguments.
``make_chaos_proxy``
    An async factory for proxies: ``await make_chaos_proxy(server)`` forwards to a FeedServer (or to
    a ``(host, port)`` pair); keyword arguments go to :class:`~wsclient.testing.ChaosProxy`.
``make_replay_server``
    An async factory for :class:`~wsclient.testing.ReplayServer`: ``await
    make_replay_server("tests/data/session.jsonl.gz", speed="max")`` plays a recording made with
    ``wsclient record``; keyword arguments go to ReplayServer.
``replay_server``
    A started ReplayServer of the recording your ``replay_recording`` fixture names (define it in
    your ``conftest.py`` or test module: a path, or a loaded recording), at ``speed="max"``.

Everything a fixture or factory started is stopped when the test ends, proxies before servers, even
when the test fails. Example::

    async def test_bot_survives_a_dead_link(feed_server, chaos_proxy):
        client = Client(chaos_proxy.url(feed_server.path), config=...)
        async with client:
            await client.wait_open(timeout=5)
            chaos_proxy.blackhole(True)
            ...
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any, Protocol

import pytest_asyncio

from wsclient.recording import Recording
from wsclient.testing.feed import FeedServer
from wsclient.testing.proxy import ChaosProxy
from wsclient.testing.replay import ReplayServer

__all__ = [
    "MakeChaosProxy",
    "MakeFeedServer",
    "MakeReplayServer",
    "chaos_proxy",
    "feed_server",
    "make_chaos_proxy",
    "make_feed_server",
    "make_replay_server",
    "replay_server",
]


class MakeFeedServer(Protocol):
    """Type of the ``make_feed_server`` fixture, for annotating tests."""

    async def __call__(self, **options: Any) -> FeedServer:
        """Start and return a FeedServer built with ``options`` (FeedServer's keyword arguments).

        ``host`` defaults to 127.0.0.1 and ``port`` to 0 (a free port).
        """
        ...


class MakeChaosProxy(Protocol):
    """Type of the ``make_chaos_proxy`` fixture, for annotating tests."""

    async def __call__(self, upstream: FeedServer | tuple[str, int], **options: Any) -> ChaosProxy:
        """Start and return a ChaosProxy forwarding to ``upstream``.

        ``upstream`` is a FeedServer (started or not: its port must be known) or a ``(host, port)``
        pair; ``options`` are ChaosProxy's keyword arguments (``host``, ``port``).
        """
        ...


class MakeReplayServer(Protocol):
    """Type of the ``make_replay_server`` fixture, for annotating tests."""

    async def __call__(self, recording: str | os.PathLike[str] | Recording, **options: Any) -> ReplayServer:
        """Start and return a ReplayServer playing ``recording`` (a file or a loaded recording);
        ``options`` are ReplayServer's keyword arguments (``speed``, ``disconnects``, ``start``…)."""
        ...


@pytest_asyncio.fixture
async def make_feed_server() -> AsyncIterator[MakeFeedServer]:
    """Factory fixture: ``await make_feed_server(**options)`` starts a FeedServer; all stop after."""
    servers: list[FeedServer] = []

    async def factory(**options: Any) -> FeedServer:
        server = FeedServer(**options)
        await server.start()
        servers.append(server)
        return server

    try:
        yield factory
    finally:
        # Reverse order: a server started later may depend on an earlier one, never the other way.
        for server in reversed(servers):
            await server.stop()


@pytest_asyncio.fixture
async def make_chaos_proxy(make_feed_server: MakeFeedServer) -> AsyncIterator[MakeChaosProxy]:
    """Factory fixture: ``await make_chaos_proxy(upstream, **options)`` starts a ChaosProxy."""
    # Depending on make_feed_server orders the teardown: proxies stop first, so that no server waits
    # out its close timeout on a connection through a black-holed proxy.
    del make_feed_server
    proxies: list[ChaosProxy] = []

    async def factory(upstream: FeedServer | tuple[str, int], **options: Any) -> ChaosProxy:
        if isinstance(upstream, FeedServer):
            if not upstream.port:
                raise ValueError("the FeedServer has no port yet: start it before proxying to it")
            host, port = upstream.host, upstream.port
        else:
            host, port = upstream
        proxy = ChaosProxy(host, port, **options)
        await proxy.start()
        proxies.append(proxy)
        return proxy

    try:
        yield factory
    finally:
        for proxy in reversed(proxies):
            await proxy.stop()


@pytest_asyncio.fixture
async def feed_server(make_feed_server: MakeFeedServer) -> FeedServer:
    """A started FeedServer with default options on a free port of 127.0.0.1."""
    return await make_feed_server()


@pytest_asyncio.fixture
async def chaos_proxy(make_chaos_proxy: MakeChaosProxy, feed_server: FeedServer) -> ChaosProxy:
    """A started ChaosProxy in front of ``feed_server``; connect to ``chaos_proxy.url(feed_server.path)``."""
    return await make_chaos_proxy(feed_server)


@pytest_asyncio.fixture
async def make_replay_server() -> AsyncIterator[MakeReplayServer]:
    """Factory fixture: ``await make_replay_server(recording, **options)`` starts a ReplayServer; all
    stop after the test."""
    servers: list[ReplayServer] = []

    async def factory(recording: str | os.PathLike[str] | Recording, **options: Any) -> ReplayServer:
        server = ReplayServer(recording, **options)
        await server.start()
        servers.append(server)
        return server

    try:
        yield factory
    finally:
        for server in reversed(servers):
            await server.stop()


@pytest_asyncio.fixture
async def replay_server(
    make_replay_server: MakeReplayServer, replay_recording: str | os.PathLike[str] | Recording
) -> ReplayServer:
    """A started ReplayServer of ``replay_recording`` (a fixture of yours) at ``speed="max"``."""
    return await make_replay_server(replay_recording, speed="max")
