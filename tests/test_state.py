"""The state machine, exhaustively: every (state, event) pair, legal or not."""

from __future__ import annotations

import itertools

import pytest

from wsclient.state import (
    TRANSITIONS,
    ConnectionState,
    Event,
    IllegalTransitionError,
    StateMachine,
)

S = ConnectionState
E = Event

# Written out independently of the table under test, so a change to the table must change this too.
EXPECTED = {
    (S.IDLE, E.START): S.CONNECTING,
    (S.IDLE, E.CLOSE): S.CLOSING,
    (S.CONNECTING, E.CONNECTED): S.OPEN,
    (S.CONNECTING, E.CONNECT_FAILED): S.RECONNECTING,
    (S.CONNECTING, E.GIVE_UP): S.FAILED,
    (S.CONNECTING, E.CLOSE): S.CLOSING,
    (S.OPEN, E.CONNECTION_LOST): S.RECONNECTING,
    (S.OPEN, E.GIVE_UP): S.FAILED,
    (S.OPEN, E.CLOSE): S.CLOSING,
    (S.RECONNECTING, E.RETRY): S.CONNECTING,
    (S.RECONNECTING, E.GIVE_UP): S.FAILED,
    (S.RECONNECTING, E.CLOSE): S.CLOSING,
    (S.CLOSING, E.CLOSED): S.CLOSED,
}


@pytest.mark.parametrize(("state", "event"), list(itertools.product(S, E)))
def test_every_pair(state: ConnectionState, event: Event) -> None:
    machine = StateMachine(state)
    expected = EXPECTED.get((state, event))
    if expected is None:
        assert not machine.can(event)
        with pytest.raises(IllegalTransitionError) as info:
            machine.handle(event)
        message = str(info.value)
        assert repr(event.value) in message
        assert repr(state.value) in message
        assert info.value.state is state
        assert info.value.event is event
        assert machine.state is state, "an illegal event must not change the state"
    else:
        assert machine.can(event)
        assert machine.handle(event) is expected
        assert machine.state is expected


def test_table_matches_expectation() -> None:
    assert dict(TRANSITIONS) == EXPECTED


def test_terminal_states_have_no_exit() -> None:
    for state in (S.CLOSED, S.FAILED):
        assert state.is_terminal
        assert not any(s is state for s, _ in TRANSITIONS)
    assert not any(s.is_terminal for s in S if s not in (S.CLOSED, S.FAILED))


def test_every_state_is_reachable_from_idle() -> None:
    seen = {S.IDLE}
    frontier = [S.IDLE]
    while frontier:
        state = frontier.pop()
        for (src, _), dst in TRANSITIONS.items():
            if src is state and dst not in seen:
                seen.add(dst)
                frontier.append(dst)
    assert seen == set(S)


def test_listener_sees_each_transition() -> None:
    seen: list[tuple[S, E, S]] = []
    machine = StateMachine(listener=lambda old, ev, new: seen.append((old, ev, new)))
    machine.handle(E.START)
    machine.handle(E.CONNECTED)
    machine.handle(E.CONNECTION_LOST)
    assert seen == [
        (S.IDLE, E.START, S.CONNECTING),
        (S.CONNECTING, E.CONNECTED, S.OPEN),
        (S.OPEN, E.CONNECTION_LOST, S.RECONNECTING),
    ]


def test_message_names_allowed_events() -> None:
    with pytest.raises(IllegalTransitionError, match=r"allowed here: .*start"):
        StateMachine().handle(E.CONNECTED)
    with pytest.raises(IllegalTransitionError, match="terminal"):
        StateMachine(S.CLOSED).handle(E.START)
