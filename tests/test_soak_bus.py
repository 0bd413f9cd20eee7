"""The bus soak: a short run in the suite, and its stream check shown to catch what it claims to."""

from __future__ import annotations

import array
import logging

import pytest

from wsclient.testing.bus_soak import (
    BUS_FAULT_KINDS,
    SinkSettings,
    _BusSoak,
    default_bus_soak_config,
    main,
    run_bus_soak,
)
from wsclient.testing.nats import find_nats_server

pytestmark = pytest.mark.skipif(find_nats_server() is None, reason="no nats-server binary")

SEED = 3


@pytest.mark.serial
@pytest.mark.timeout(150)
async def test_short_bus_soak(caplog: pytest.LogCaptureFixture) -> None:
    """~15 s of faults on both sides of the client; every trade handed over is stored once, in order."""
    # pytest's log capture keeps every record (the sink warns at each fault, the in-process venue's
    # websockets logs its resets, with tracebacks): keep them out of the memory figures.
    caplog.set_level(logging.CRITICAL)
    caplog.set_level(logging.CRITICAL, logger="wsclient")
    report = await run_bus_soak(15.0, SEED, calm=(0.2, 0.6), slack=4.0)
    print(report.format())
    assert report.failures == [], report.format()
    venue = {k: v for k, v in report.faults.items() if k.startswith("venue_")}
    bus = {k: v for k, v in report.faults.items() if not k.startswith("venue_")}
    assert sum(venue.values()) > 0 and sum(bus.values()) > 0, report.format()
    assert report.sink is not None
    stats = report.sink
    assert stats.abandoned == 0 and stats.reordered == 0 and stats.pending == 0
    assert report.handed == report.in_stream == stats.received > 0
    assert report.copies == report.missing == report.unknown == report.inversions == 0
    # The faults reached the sink: it reconnected, and resent what was unacknowledged.
    assert stats.reconnects > 0 and stats.retries > 0, report.format()
    assert report.client_reconnects > 0
    assert report.client_gaps_reported == report.venue_gaps
    assert report.peak_pending <= report.max_pending + 1
    assert len(report.bus_recover_times) == sum(bus.values())
    assert report.max_bus_recover <= report.bus_recover_bound
    assert len(report.venue_recover_times) == sum(venue.values())
    assert {figure.name for figure in report.resources} >= {"tasks", "traced memory"}


def _soak() -> _BusSoak:
    return _BusSoak(
        10.0,
        0,
        config=default_bus_soak_config(),
        sink=SinkSettings(),
        rate=10.0,
        streams=2,
        calm=(0.1, 0.2),
        slack=1.0,
        task_tolerance=3,
        fd_tolerance=3,
        memory_tolerance=1024,
        faults=BUS_FAULT_KINDS,
    )


def _ids(*ids: int) -> array.array[int]:
    return array.array("q", ids)


def test_stream_check_catches_copies_holes_strangers_and_inversions() -> None:
    soak = _soak()
    handed = {"soak.trades.a": _ids(1, 2, 3, 4), "soak.trades.b": _ids(7, 8, 20, 21)}
    soak.compare(handed, {"soak.trades.a": _ids(1, 2, 3, 4), "soak.trades.b": _ids(7, 8, 20, 21)})
    assert soak.report.failures == []
    soak.compare(handed, {"soak.trades.a": _ids(1, 3, 2, 4, 4, 9), "soak.trades.b": _ids(7, 20)})
    assert soak.report.failures == [
        "soak.trades.a: the stream holds 6 ids, the handler handed 4: 1 copies, 0 missing, 1 never "
        "handed, 1 out of order; first difference at position 1: handed [2, 3, 4], stored [3, 2, 4, 4, 9]",
        "soak.trades.b: the stream holds 2 ids, the handler handed 4: 0 copies, 2 missing, 0 never "
        "handed, 0 out of order; first difference at position 1: handed [8, 20, 21], stored [20]",
    ]
    assert (soak.report.copies, soak.report.missing, soak.report.unknown, soak.report.inversions) == (
        1,
        2,
        1,
        1,
    )


def test_bus_faults_can_be_chosen_but_not_invented(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="faults must be a non-empty selection"):
        _BusSoak(
            1.0,
            0,
            config=default_bus_soak_config(),
            sink=SinkSettings(),
            rate=10.0,
            streams=1,
            calm=(0.1, 0.2),
            slack=1.0,
            task_tolerance=3,
            fd_tolerance=3,
            memory_tolerance=1024,
            faults=("nats_crash", "earthquake"),  # type: ignore[arg-type]
        )
    with pytest.raises(SystemExit):
        main(["--faults", "nats_crash,earthquake"])
    assert "unknown fault kind(s) ['earthquake']" in capsys.readouterr().err
