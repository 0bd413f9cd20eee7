"""The log rate limiter, with an explicit clock."""

from __future__ import annotations

import pytest

from wsclient.logs import LogLimiter


def test_a_burst_passes_then_lines_are_counted_and_reported_in_the_next_window() -> None:
    now = [0.0]
    limiter = LogLimiter(burst=3, window=60.0, clock=lambda: now[0])
    assert [limiter.allow("invalid") for _ in range(3)] == [0, 0, 0]
    assert [limiter.allow("invalid") for _ in range(5)] == [None] * 5
    # Other kinds have a budget of their own.
    assert limiter.allow("unknown") == 0
    now[0] = 61.0
    suppressed = limiter.allow("invalid")
    assert suppressed == 5
    assert LogLimiter.suffix(5) == " (5 similar lines suppressed)"
    assert LogLimiter.suffix(1) == " (1 similar line suppressed)"
    assert LogLimiter.suffix(0) == ""


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="burst"):
        LogLimiter(burst=0)
