"""Liveness rules with an explicit clock: no sockets, no sleeps."""

from __future__ import annotations

from wsclient import Heartbeat
from wsclient.heartbeat import Liveness, PongWatch, Verdict


def test_always_mode_pings_every_interval_regardless_of_traffic() -> None:
    live = Liveness(Heartbeat(interval=1.0, timeout=0.5), now=100.0)
    live.last_inbound = 100.9
    assert live.next_ping_at() == 101.0


def test_idle_mode_traffic_postpones_the_ping() -> None:
    live = Liveness(Heartbeat(interval=1.0, timeout=0.5, when="idle"), now=100.0)
    live.last_inbound = 100.9
    assert live.next_ping_at() == 101.9


def test_overdue_pong_without_any_sign_of_life_is_dead() -> None:
    live = Liveness(Heartbeat(), now=0.0)
    live.frames_in = 10
    assert live.pong_overdue(frames_at_ping=10, wbuf_at_ping=0, wbuf_now=0) is Verdict.DEAD


def test_frames_after_the_ping_prove_life() -> None:
    live = Liveness(Heartbeat(), now=0.0)
    live.frames_in = 11
    assert live.pong_overdue(frames_at_ping=10, wbuf_at_ping=0, wbuf_now=0) is Verdict.ALIVE


def test_draining_send_buffer_proves_life() -> None:
    live = Liveness(Heartbeat(), now=0.0)
    assert live.pong_overdue(0, wbuf_at_ping=5_000_000, wbuf_now=4_000_000) is Verdict.ALIVE
    assert live.pong_overdue(0, wbuf_at_ping=5_000_000, wbuf_now=5_000_000) is Verdict.DEAD


def test_full_inbound_queue_suspends_the_verdict() -> None:
    live = Liveness(Heartbeat(receive_timeout=2.0), now=0.0)
    live.blocked = True
    assert live.pong_overdue(0, 0, 0) is Verdict.SUSPENDED
    verdict, again = live.silence(now=10.0)
    assert verdict is Verdict.SUSPENDED and again == 12.0


def test_silence_watchdog() -> None:
    live = Liveness(Heartbeat(receive_timeout=2.0), now=0.0)
    assert live.silence(now=1.0) == (Verdict.ALIVE, 2.0)
    live.last_inbound = 1.5
    assert live.silence(now=3.0) == (Verdict.ALIVE, 3.5)
    assert live.silence(now=3.5)[0] is Verdict.DEAD


async def test_pong_watch_matches_and_consumes() -> None:
    watch = PongWatch(lambda frame: frame == "pong")
    assert not watch.waiting
    future = watch.arm()
    assert watch.waiting
    assert not watch.check("trade")
    assert watch.check("pong")
    assert not watch.waiting
    assert future.done() and future.result() >= 0


async def test_pong_watch_survives_a_raising_predicate() -> None:
    def boom(frame: str | bytes) -> bool:
        raise ValueError("bad predicate")

    watch = PongWatch(boom)
    watch.arm()
    assert not watch.check("anything")


def test_frames_do_not_excuse_a_peer_that_reads_nothing() -> None:
    """A server that streams but no longer reads: the client's send buffer is full and does not
    drain, the pong does not come. Frames arriving are no excuse then."""
    live = Liveness(Heartbeat(), now=0.0)
    live.frames_in = 11
    assert live.pong_overdue(10, 0, 0) is Verdict.ALIVE
    assert live.pong_overdue(10, 900_000, 900_000, send_blocked=True) is Verdict.DEAD
    assert live.pong_overdue(11, 900_000, 900_000, inbound_waiting=500, send_blocked=True) is Verdict.DEAD
    # Draining (the ping is behind our own upload) excuses it, blocked or not.
    assert live.pong_overdue(10, 900_000, 800_000, send_blocked=True) is Verdict.ALIVE
    assert live.pong_overdue(11, 0, 0, inbound_waiting=500) is Verdict.ALIVE


def test_a_late_timer_extends_instead_of_killing() -> None:
    """A timeout that fired 0.4 s late (the loop was blocked by a handler) is not the link's fault."""
    live = Liveness(Heartbeat(timeout=0.1), now=0.0)
    assert live.pong_overdue(0, 0, 0, lag=0.4) is Verdict.EXTEND
    assert live.pong_overdue(0, 0, 0, lag=0.001) is Verdict.DEAD
    # The queue-full suspension and a live link still come first.
    live.blocked = True
    assert live.pong_overdue(0, 0, 0, lag=0.4) is Verdict.SUSPENDED


def test_bytes_waiting_in_the_kernel_are_not_silence() -> None:
    live = Liveness(Heartbeat(receive_timeout=2.0), now=0.0)
    assert live.silence(now=3.0)[0] is Verdict.DEAD
    assert live.silence(now=3.0, inbound_waiting=120)[0] is Verdict.ALIVE
