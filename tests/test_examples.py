"""Every example runs as written, against the embedded feed, and says what it should."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# What each example must print: proof that it did its job, not only that it exited.
EXPECTED = {
    "quickstart.py": ["Connected(", "code=1012", "reconnect=True", "connects=2"],
    "market_data_feeder.py": [
        "connected (reconnect=True)",
        "missed, across a reconnect) -> resync this stream",
        "last prices: BTC-USD ",
        "reconnects=1 ",
        "invalid=0",
    ],
    "trading_bot.py": [
        "first order acknowledged in",
        "paused trading: connection closed with code 1006",
        "resumed trading",
        "pauses=1 ",
        "connects=2 requests_pending=0",
    ],
    "many_streams.py": [
        "shards: [60, 60, 30]",
        "copies delivered=0",
        "every stream exactly once, in order: True",
        "venue: violations=0 age cuts=0",
    ],
    "scaling_out.py": [
        "feeder A crashed:",
        "copies dropped",
        "stream MD: ",
        "every trade exactly once: True",
        "abandoned entries, stored before the crash: ",
        "trades stored after a later one of their subject: ",
    ],
    "threaded_bot.py": [
        "request answered: type=time",
        "connected (reconnect=True)",
        "handled 120 trades on ['wsclient-handlers-1'], in order: True",
        "strategy thread read ",
        "closed from a handler: state=closed connects=2",
        "the feed saw close codes [1012, 1000]",
        "threads left: ['MainThread']",
    ],
    "behind_nginx.py": [
        "disconnected: connection closed with code 1006",
        "with heartbeat: the proxy cut the link 0 time(s), 0 disconnect(s)",
        "refused at construction: heartbeat.interval",
    ],
}


def test_every_example_is_covered() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(name: str) -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for needle in EXPECTED[name]:
        assert needle in result.stdout, (needle, result.stdout)
    assert "Traceback" not in result.stderr
