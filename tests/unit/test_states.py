from __future__ import annotations

import logging

import pytest

from hpcops.states import SLURM_STATE_TABLE, RunState, from_slurm


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
