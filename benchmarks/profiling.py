"""Run a function under pyinstrument; save the text profile and a summary of where the time went.

The summary (``<profile>.json``) splits the sampled time by component (wsclient, pydantic, the
WebSocket library, asyncio, the benchmark's handler, I/O wait) and lists wsclient's own hottest
functions, so the report can say where a missed goal's time goes without reading the whole tree.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable
from typing import Any

__all__ = ["profiled"]

_IO_WAIT = {"select", "poll", "control", "sleep"}
_PYDANTIC_BUILTINS = {"validate_json", "validate_python", "validate_strings"}


def _builtin(name: str) -> str:
    return name.rsplit(".", 1)[-1]  # "epoll.poll" -> "poll"


def _component(path: str) -> str | None:
    if "/wsclient/" in path:
        return "wsclient"
    if "pydantic" in path:
        return "pydantic"
    for lib in ("websockets", "picows", "aiohttp", "websocket", "nats", "redis"):
        if f"/{lib}/" in path:
            return lib
    if "/asyncio/" in path or "selectors.py" in path:
        return "asyncio"
    if "/benchmarks/" in path:
        return "benchmark handler"
    return None


def summarize(root: Any) -> dict[str, Any]:
    components: dict[str, float] = defaultdict(float)
    functions: dict[str, float] = defaultdict(float)

    def walk(frame: Any, owner: tuple[str, str]) -> None:
        path = frame.file_path or ""
        name = frame.function or "?"
        if frame.is_synthetic:
            # "[self]" and friends: time spent in ``owner`` itself.
            components[owner[0]] += frame.time
            if owner[0] == "wsclient":
                functions[owner[1]] += frame.time
            return
        if path == "<built-in>" or path.startswith("<"):
            if _builtin(name) in _PYDANTIC_BUILTINS:
                owner = ("pydantic", name)
            elif _builtin(name) in _IO_WAIT:
                owner = ("I/O wait (select)", name)
            # other builtins (deque.append, len, ...) count for their caller
        else:
            comp = _component(path) or "other"
            short = path.rsplit("/", 1)[-1]
            owner = (comp, f"{name} ({short}:{frame.line_no})")
        if not frame.children:
            components[owner[0]] += frame.time
            if owner[0] == "wsclient":
                functions[owner[1]] += frame.time
            return
        for child in frame.children:
            walk(child, owner)

    walk(root, ("other", "?"))
    total = sum(components.values()) or 1.0
    return {
        "total_s": total,
        "components": dict(sorted(components.items(), key=lambda kv: -kv[1])),
        "wsclient_functions": sorted(functions.items(), key=lambda kv: -kv[1])[:12],
    }


def profiled(path: str | None, run: Callable[[], None]) -> None:
    """Call ``run()``; under pyinstrument when ``path`` is given (text to ``path``, summary to .json)."""
    if not path:
        run()
        return
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.001, async_mode="disabled")
    profiler.start()
    try:
        run()
    finally:
        session = profiler.stop()
        with open(path, "w") as f:
            f.write(profiler.output_text(unicode=True, color=False))
        root = session.root_frame()
        if root is not None:
            with open(path.rsplit(".", 1)[0] + ".json", "w") as f:
                json.dump(summarize(root), f, indent=1)
