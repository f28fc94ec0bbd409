"""A step's state, from the states of what it runs: pure, for the engine, `ls` and `show`.

A run step is its run's state. A sweep step is one state for all its points: waiting (QUEUED,
or HELD when every waiting point is held) until one is in Slurm, RUNNING while any has not
ended, and once all have ended COMPLETED if any point completed (a sweep is for finding the
best point, and a diverging learning rate should not sink the retraining), else the first of
FAILED, TIMEOUT, OUT_OF_MEMORY, ... that a point ended in, CANCELLED when all were cancelled.
A register step keeps its own state. A pipeline is RUNNING until every step has ended, then
COMPLETED if every step did, else the state of its first step that did not.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from hpcops.states import RunState

__all__ = ["pipeline_state", "sweep_step_state"]

# The order a sweep's failed points are reported in, the job's own faults first.
_FAILURE_ORDER = (
    RunState.FAILED,
    RunState.OUT_OF_MEMORY,
    RunState.TIMEOUT,
    RunState.NODE_FAIL,
    RunState.PREEMPTED,
    RunState.UNKNOWN,
    RunState.CANCELLED,
)


def sweep_step_state(points: Iterable[RunState]) -> RunState:
    """One state for a sweep step, from its points' (latest runs') states."""
    states = list(points)
    if not states:
        return RunState.UNKNOWN
    if all(s.is_terminal for s in states):
        if RunState.COMPLETED in states:
            return RunState.COMPLETED
        return next(s for s in _FAILURE_ORDER if s in states)
    waiting = [s for s in states if not s.is_terminal]
    if all(s in (RunState.QUEUED, RunState.HELD) for s in waiting):
        if any(s.is_terminal for s in states):
            return RunState.RUNNING  # some points ended and the rest wait: it is under way
        return RunState.HELD if all(s is RunState.HELD for s in waiting) else RunState.QUEUED
    return RunState.RUNNING


def pipeline_state(order: Sequence[str], states: Mapping[str, RunState]) -> RunState:
    """The pipeline's state: RUNNING (QUEUED before any step left the queue) until every step
    ended; then COMPLETED, or the ending of its first step (in `order`) that did not complete."""
    ordered = [states.get(step, RunState.UNKNOWN) for step in order]
    if not all(s.is_terminal for s in ordered):
        if all(s in (RunState.QUEUED, RunState.HELD) for s in ordered):
            return RunState.HELD if all(s is RunState.HELD for s in ordered) else RunState.QUEUED
        return RunState.RUNNING
    return next((s for s in ordered if s is not RunState.COMPLETED), RunState.COMPLETED)
