"""Instructions per message, counted by valgrind: a measure that does not drift with the machine.

Throughput in messages per second moves by ±10 % from one run to the next on a shared virtual
machine, more than the differences worth measuring between two versions of the hot path. The
number of instructions the client process executes does not: this script runs a throughput variant
of ``benchmarks.clients`` under ``valgrind --tool=callgrind`` for two stream lengths and reports the
slope, instructions per message, which leaves out start-up and imports. With ``--base REV`` the same
is measured for another revision (checked out in a temporary git worktree) for comparison.

    python -m benchmarks.instructions --variants wsclient-typed-sync,wsclient-typed-async
    python -m benchmarks.instructions --variants wsclient-typed-async --base e5a3819
    python -m benchmarks.instructions --variants bare,pool-nodedup,pool   # the pool measure's variants

Needs valgrind (Debian: ``apt-get install valgrind``). Slow: a minute or two per variant and tree.
The bare ``websockets`` variants keep websockets' own keepalive on, whose 20 s pong timeout a
process under valgrind (~50× slower) can miss: compare wsclient's variants with each other.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_COLLECTED = re.compile(r"Collected : (\d+)")


@contextlib.contextmanager
def _server(n: int) -> Iterator[int]:
    """The benchmark's stream server with ``n`` frames, in its own process; yields its port."""
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.server", "--n", str(n)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        for _ in range(100):  # bounded: the server prints one "ready" line when it listens
            line = process.stdout.readline()
            if not line:
                break
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict) and event.get("event") == "ready":
                    yield int(event["port"])
                    return
        raise RuntimeError("the benchmark server did not start")
    finally:
        process.kill()
        process.wait(timeout=10)


POOL_VARIANTS = ("bare", "client", "pool-nodedup", "pool")
"""The pool measure's variants (``benchmarks.pool``): 100 streams, one connection or a pool of four."""


def _spec(variant: str, port: int, n: int, run: int) -> dict[str, object]:
    if variant in POOL_VARIANTS:
        per_stream = max(1, n // 100)
        return {
            "measure": "pool_throughput",
            "variant": variant,
            "url": f"ws://127.0.0.1:{port}/trades?streams=100&per_stream={per_stream}&run=i{run}",
            "streams": 100,
            "per_stream": per_stream,
            "timeout": 900,
            "no_keepalive": True,
        }
    return {
        "measure": "throughput",
        "variant": variant,
        "url": f"ws://127.0.0.1:{port}/stream",
        "n": n,
        "timeout": 900,
    }


_runs = iter(range(1, 1_000_000))


def _instructions(tree: Path, variant: str, port: int, n: int) -> int:
    spec = _spec(variant, port, n, next(_runs))
    env = dict(os.environ, PYTHONPATH=f"{tree / 'src'}{os.pathsep}{tree}")
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={tmp}/callgrind.out",
                sys.executable,
                "-m",
                "benchmarks.clients",
                json.dumps(spec),
            ],
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
            timeout=3600,
        )
    match = _COLLECTED.search(result.stderr)
    if match is None or '"ok": true' not in result.stdout:
        raise RuntimeError(
            f"{variant} under valgrind failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
        )
    return int(match.group(1))


def measure(tree: Path, variants: list[str], small: int, large: int) -> dict[str, float]:
    """Instructions per message of each variant in ``tree``: the slope between two stream lengths."""
    counts: dict[str, dict[int, int]] = {v: {} for v in variants}
    for n in (small, large):
        with _server(n) as port:
            for variant in variants:
                counts[variant][n] = _instructions(tree, variant, port, n)
    return {v: (c[large] - c[small]) / (large - small) for v, c in counts.items()}


@contextlib.contextmanager
def _worktree(rev: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="wsclient-base-"))
    subprocess.run(["git", "worktree", "add", "--detach", str(path), rev], cwd=ROOT, check=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, check=False)
        shutil.rmtree(path, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="wsclient-typed-sync,wsclient-typed-async,wsclient-raw-async")
    parser.add_argument("--base", help="a git revision to compare with (the working tree is measured too)")
    parser.add_argument("--small", type=int, default=20_000, help="frames in the short run")
    parser.add_argument("--large", type=int, default=60_000, help="frames in the long run")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        print("valgrind not found: apt-get install valgrind", file=sys.stderr)
        return 2
    variants = [v for v in args.variants.split(",") if v]
    results = {"working tree": measure(ROOT, variants, args.small, args.large)}
    if args.base:
        with _worktree(args.base) as base:
            results[args.base] = measure(base, variants, args.small, args.large)
    width = max(len(v) for v in variants)
    print(f"instructions per message ({args.small:,} → {args.large:,} frames, slope)")
    for variant in variants:
        row = "  ".join(f"{name}: {figures[variant]:>9,.0f}" for name, figures in results.items())
        print(f"{variant:<{width}}  {row}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
