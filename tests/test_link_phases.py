"""A link's phase table, exhaustively, and the rules that pick a client's events."""

from __future__ import annotations

import itertools

import pytest

from wsclient.state import (
    LINK_TRANSITIONS,
    ConnectionState,
    IllegalTransitionError,
    LinkEvent,
    LinkPhase,
    LinkPhaseMachine,
    StateEvent,
    attempt_ended,
    next_attempt,
)

P = LinkPhase
L = LinkEvent
LIVE = (P.HANDSHAKE, P.HOOKS, P.REPLAY, P.FLUSH, P.OPEN)

# Written out independently of the table under test, so a change to the table must change this too.
EXPECTED = {
    (P.HANDSHAKE, L.OPENED): P.HOOKS,
    (P.HOOKS, L.HOOKED): P.REPLAY,
    (P.REPLAY, L.REPLAYED): P.FLUSH,
    (P.FLUSH, L.FLUSHED): P.OPEN,
    **{(phase, L.CLOSE): P.CLOSING for phase in LIVE},
    **{(phase, L.LOST): P.CLOSED for phase in (*LIVE, P.CLOSING)},
    (P.CLOSING, L.CLOSED): P.CLOSED,
}


@pytest.mark.parametrize(("phase", "event"), list(itertools.product(P, L)))
def test_every_pair(phase: LinkPhase, event: LinkEvent) -> None:
    machine = LinkPhaseMachine(phase)
    expected = EXPECTED.get((phase, event))
    assert machine.can(event) is (expected is not None)
    if expected is None:
        with pytest.raises(IllegalTransitionError, match=f"event '{event.value}' in state '{phase.value}'"):
            machine.handle(event)
        assert machine.state is phase
    else:
        assert machine.handle(event) is expected


def test_the_table_is_exactly_the_expected_one() -> None:
    assert dict(LINK_TRANSITIONS) == EXPECTED


def test_a_link_opens_in_order_and_closed_is_terminal() -> None:
    machine = LinkPhaseMachine()
    for event in (L.OPENED, L.HOOKED, L.REPLAYED, L.FLUSHED):
        machine.handle(event)
    assert machine.state is P.OPEN and machine.state.replayed
    machine.handle(L.CLOSE)
    machine.handle(L.CLOSED)
    assert not any(machine.can(event) for event in L)


def test_phase_properties() -> None:
    assert [p for p in P if p.is_live] == list(LIVE)
    assert [p for p in P if p.replayed] == [P.FLUSH, P.OPEN]


def test_the_rules_that_pick_client_events() -> None:
    assert next_attempt(ConnectionState.CONNECTING) is None  # start() applied START
    assert next_attempt(ConnectionState.RECONNECTING) is StateEvent.RETRY
    with pytest.raises(IllegalTransitionError):
        next_attempt(ConnectionState.OPEN)
    assert attempt_ended(opened=True, retry=True) is StateEvent.CONNECTION_LOST
    assert attempt_ended(opened=False, retry=True) is StateEvent.CONNECT_FAILED
    assert attempt_ended(opened=True, retry=False) is StateEvent.GIVE_UP
    assert attempt_ended(opened=False, retry=False) is StateEvent.GIVE_UP
