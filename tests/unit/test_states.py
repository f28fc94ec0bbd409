from __future__ import annotations

import logging

import pytest

from hpcops import states
from hpcops.states import (
    INITIAL_STATES,
    SLURM_STATE_TABLE,
    TERMINAL_STATES,
    TRANSITIONS,
    RunState,
    from_slurm,
    may_transition,
)


@pytest.mark.parametrize(
    ("slurm_state", "expected"),
    [
        ("COMPLETED", RunState.COMPLETED),
        ("CANCELLED by 0", RunState.CANCELLED),
        ("CANCELLED+", RunState.CANCELLED),
        ("FAILED", RunState.FAILED),
        ("TIMEOUT", RunState.TIMEOUT),
        ("OUT_OF_MEMORY", RunState.OUT_OF_MEMORY),
        ("NODE_FAIL", RunState.NODE_FAIL),
        ("PREEMPTED", RunState.PREEMPTED),
        ("COMPLETING", RunState.RUNNING),
        ("pending", RunState.PENDING),
    ],
)
def test_slurm_states_map(slurm_state: str, expected: RunState) -> None:
    assert from_slurm(slurm_state) is expected


def test_unmapped_state_is_unknown_and_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert from_slurm("FROBNICATED") is RunState.UNKNOWN
    assert "FROBNICATED" in caplog.text


def test_every_mapped_state_is_a_run_state() -> None:
    assert all(isinstance(v, RunState) for v in SLURM_STATE_TABLE.values())
    assert RunState.COMPLETED.is_terminal and not RunState.RUNNING.is_terminal


def test_transitions_cover_every_state() -> None:
    assert set(TRANSITIONS) == set(RunState)
    for from_state, targets in TRANSITIONS.items():
        assert targets <= set(RunState) and from_state not in targets, from_state


def test_an_ended_run_leaves_its_end_only_for_a_retry_and_every_live_state_can_end() -> None:
    # `hpcops retry` queues an ended run's next attempt; a completed run is never retried.
    assert all(TRANSITIONS[s] <= {RunState.QUEUED} for s in TERMINAL_STATES)
    assert not TRANSITIONS[RunState.COMPLETED]
    for state in set(RunState) - TERMINAL_STATES:
        reachable = {state}
        while True:
            more = {t for s in reachable for t in TRANSITIONS[s]} - reachable
            if not more:
                break
            reachable |= more
        assert reachable & TERMINAL_STATES, f"{state} can never end"


def test_every_state_is_reachable_from_a_new_run() -> None:
    reachable = set(INITIAL_STATES)
    while True:
        more = {t for s in reachable for t in TRANSITIONS[s]} - reachable
        if not more:
            break
        reachable |= more
    assert reachable == set(RunState)


@pytest.mark.parametrize(
    ("from_state", "to_state", "legal"),
    [
        (RunState.QUEUED, RunState.SUBMITTING, True),
        (RunState.SUBMITTING, RunState.QUEUED, True),  # a Slurm limit: wait, not fail
        (RunState.RUNNING, RunState.PENDING, True),  # requeued after preemption
        (RunState.PENDING, RunState.PENDING, True),  # staying is not a change
        (RunState.QUEUED, RunState.RUNNING, False),
        (RunState.HELD, RunState.SUBMITTING, False),
        (RunState.COMPLETED, RunState.RUNNING, False),
        (RunState.RUNNING, RunState.QUEUED, True),  # the attempt ended: the next one queued
        (RunState.PENDING, RunState.QUEUED, True),  # a node lost while the job pended
        (RunState.TIMEOUT, RunState.QUEUED, True),  # `hpcops retry`
        (RunState.COMPLETED, RunState.QUEUED, False),  # rerun, not retried
        (RunState.SUBMITTING, RunState.TIMEOUT, False),
    ],
)
def test_may_transition(from_state: RunState, to_state: RunState, legal: bool) -> None:
    assert may_transition(from_state, to_state) is legal


def test_retry_takes_any_ended_run_but_a_completed_one_in_one_wording() -> None:
    assert TERMINAL_STATES - {RunState.COMPLETED} == states.RETRYABLE_STATES
    assert states.why_not_retryable(7, RunState.TIMEOUT) is None
    assert states.why_not_retryable(7, RunState.COMPLETED) == (
        "run 7 completed; `hpcops rerun 7` runs it again as a new run"
    )
    assert states.why_not_retryable(7, RunState.HELD) == (
        "run 7 is HELD; only an ended run can be retried"
    )
