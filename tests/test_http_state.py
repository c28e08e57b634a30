"""The HTTP front's connection states: one table, every state reachable and every path ending closed."""

from __future__ import annotations

import socket

import pytest

from exporter.httpserver.state import CLOSED, NEW, TRANSITIONS, WAITING, Conn, State, TransitionError


def test_every_state_has_its_transitions_and_all_paths_end_closed() -> None:
    assert set(TRANSITIONS) == set(State)
    reachable, todo = {NEW}, [NEW]
    while todo:
        for nxt in TRANSITIONS[todo.pop()]:
            if nxt not in reachable:
                reachable.add(nxt)
                todo.append(nxt)
    assert reachable == set(State)
    for state in State:
        if state is not CLOSED:
            assert TRANSITIONS[state], f"{state} is a dead end"
    assert TRANSITIONS[CLOSED] == frozenset()


def test_states_read_as_their_plain_names() -> None:
    """Logs say "head timeout"; a dict keyed by state answers to the plain name."""
    assert f"{State.HEAD} timeout" == "head timeout"
    assert {state: 1 for state in WAITING}["handshake"] == 1


def test_a_move_the_table_does_not_list_is_refused() -> None:
    a, b = socket.socketpair()
    try:
        conn = Conn(a, ("127.0.0.1", 1), False, 1024)
        with pytest.raises(TransitionError, match="from new to write"):
            conn.to(State.WRITE)
        conn.to(State.HEAD)
        conn.to(State.BUSY)
        conn.to(State.WRITE)
        conn.to(State.IDLE)
        assert conn.state is State.IDLE
    finally:
        a.close()
        b.close()
