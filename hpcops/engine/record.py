"""Recording a lifecycle outcome: the one place a decision of hpcops.lifecycle becomes a row in
the store and a change to the loop's bookkeeping."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from hpcops.engine.state import LoopState, Parts
from hpcops.errors import SlurmError
from hpcops.lifecycle import DAEMON, Outcome
from hpcops.retries import attempt_end
from hpcops.rundir import RunDir
from hpcops.store import Run

log = logging.getLogger(__name__)


def record(p: Parts, s: LoopState, run: Run, outcome: Outcome) -> Run | None:
    """Record `outcome` for `run` and do what it asks next; the updated run, or None when the
    run was no longer in a state the outcome expected (what it asks next is done all the same:
    the bookkeeping follows what the decision saw)."""
    assert run.id is not None
    if outcome.drop_staging_job is not None:
        drop_staging_job(p, outcome.drop_staging_job)
    if outcome.clear_markers:
        p.files.remove_files(RunDir(Path(run.run_dir)).markers)
    ended = outcome.ended
    if ended is None and outcome.to is not None and outcome.to.is_terminal:
        # Any end of a run that has a job ends its attempt: its row, with the same change (the
        # store records none for a run that never had a job).
        ended = attempt_end(run, outcome)
    updated = p.store.transition(
        run.id,
        outcome.to,
        actor=DAEMON,
        expect=outcome.expect,
        note=outcome.note,
        ended=ended,
        **outcome.fields,
    )
    _bookkeeping(p, s, run.id, outcome)
    return updated


def record_many(p: Parts, s: LoopState, decided: Sequence[tuple[Run, Outcome]]) -> list[Run]:
    """`record` for many runs (an array's points), their store changes in one transaction per
    kind of change: 1,000 points cost a few commits, not 1,000. For outcomes that ask nothing
    of Slurm or the run directory (no staging job to drop, no markers to clear)."""
    groups: dict[tuple[object, ...], list[tuple[Run, Outcome]]] = {}
    for run, outcome in decided:
        if outcome.drop_staging_job is not None or outcome.clear_markers:
            raise ValueError("record_many takes no outcome that drops a job or clears markers")
        groups.setdefault((outcome.to, outcome.expect), []).append((run, outcome))
    updated: list[Run] = []
    for pairs in groups.values():
        first = pairs[0][1]
        changes = [(run.id or 0, outcome.note, outcome.fields) for run, outcome in pairs]
        updated += p.store.transition_many(
            changes,  # type: ignore[arg-type]  # Outcome.fields holds RunUpdate's keys
            first.to,
            actor=DAEMON,
            expect=first.expect,
        )
        for run, outcome in pairs:
            _bookkeeping(p, s, run.id or 0, outcome)
    return updated


def _bookkeeping(p: Parts, s: LoopState, run_id: int, outcome: Outcome) -> None:
    if outcome.ask_sacct_now:
        s.next_sacct_at.pop(run_id, None)
    if outcome.retry_in_s is not None:
        s.retry_after[run_id] = p.clock() + outcome.retry_in_s
    if outcome.replan:
        s.dirty = True
    if outcome.forget:
        s.forget(run_id)
    elif outcome.changed:
        s.changed()


def drop_staging_job(p: Parts, staging_job: str) -> None:
    """The run's job was refused, or never went in, after its staging job did: the stager is
    not needed, and must not write into the next attempt's directory."""
    try:
        p.slurm.cancel([staging_job])
    except SlurmError as exc:
        log.warning("cannot cancel staging job %s: %s", staging_job, exc)
