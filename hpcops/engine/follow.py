"""Following the lab's jobs once they are in Slurm, and settling how each one ended.

  1. the markers the jobs write into their run directories (no Slurm call at all);
  2. every `squeue_interval_s`, or sooner when something needs repair, ONE squeue for the whole
     lab: the safety net for jobs that die without writing, and the lookup by token that adopts
     what a crash left SUBMITTING;
  3. ONE sacct for the jobs that ended, for their final state and accounting (slurmdbd, not ctld);
  4. scancel what users asked to cancel.

Each step gathers its inputs, asks hpcops.lifecycle (hpcops.settling for sacct's records) what
they mean, and records the outcome.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path, PurePath

from hpcops import lifecycle, retries, settling
from hpcops.engine.record import record
from hpcops.engine.state import LoopState, Parts
from hpcops.engine.submit import fault_point
from hpcops.errors import InvalidInput
from hpcops.lifecycle import NOT_STARTED, MarkerTexts
from hpcops.render import STAGING_LOG
from hpcops.retries import RetryRules
from hpcops.rundir import (
    PROGRESS_MAX_BYTES,
    TAIL_MAX_BYTES,
    BadMarker,
    RunDir,
    StartMarker,
    last_lines,
    parse_start_marker,
)
from hpcops.settling import Settle
from hpcops.slurm.parse import AccountingRecord, QueueEntry
from hpcops.spec import parse_spec
from hpcops.states import RunState
from hpcops.store import Run

log = logging.getLogger(__name__)

# --- 1. markers ----------------------------------------------------------------------------------


def read_markers(p: Parts, s: LoopState, runs: Sequence[Run]) -> None:
    """Every marker the runs in Slurm may have written since the last tick, in one read (over
    SSH: one command for all of them, not one per run)."""
    followed = [r for r in runs if r.id is not None and r.slurm_job_id and r.run_dir]
    wanted: list[PurePath] = []
    for run in followed:
        rundir = RunDir(Path(run.run_dir))
        if RunState(run.state) in NOT_STARTED:
            wanted.append(rundir.started_marker)
        if run.state == RunState.STAGING:
            wanted.append(rundir.staged_marker)
        # Read until its code is known: the poll may have noticed the end first.
        if run.marker_exit_code is None:
            wanted.append(rundir.exit_marker)
    if not wanted:
        return
    try:
        texts = p.files.read_small_files(wanted)
    except OSError as exc:
        log.warning("cannot read the runs' markers: %s", exc)
        return
    now = p.clock()
    for run in followed:
        rundir = RunDir(Path(run.run_dir))
        found = MarkerTexts(
            staged=texts.get(rundir.staged_marker),
            started=texts.get(rundir.started_marker),
            exit=texts.get(rundir.exit_marker),
        )
        try:
            for outcome in lifecycle.on_markers(run, found, now):
                record(p, s, run, outcome)
        except Exception:
            # The markers are the job's to write: whatever they do costs this run alone,
            # never the other runs' markers or the rest of the tick.
            log.exception("run %s: its markers could not be taken in", run.id)


# --- 2. the safety net ---------------------------------------------------------------------------


def safety_net(p: Parts, s: LoopState) -> None:
    now = p.clock()
    s.next_squeue_at = now + p.config.slurm.squeue_interval_s  # also if this fails
    entries = p.slurm.queue()
    s.ctld_answered = True
    s.last_queue, s.last_queue_at = entries, now
    s.dirty = True  # jobs submitted by hand may have come or gone
    by_id = {e.job_id: e for e in entries}
    # A token speaks only on the daemon's own jobs: a member can submit a job by hand under the
    # lab's account with any --comment, and it must never be adopted as another member's run.
    own = p.slurm_user
    # By (token, array task): the points of one array share its token (engine/arrays.py).
    by_token = {
        (e.token, e.array_task): e for e in entries if e.token and (not own or e.user == own)
    }
    orphans: list[Run] = []
    for run in p.store.in_slurm():
        if run.state == RunState.SUBMITTING:
            entry = by_token.get((run.token, run.array_task)) if run.token else None
            if entry is None:
                orphans.append(run)
                continue
            stager = by_token.get((lifecycle.stage_token(run.token), None))
            adopted = lifecycle.adopt(
                run,
                entry.job_id,
                entry.state,
                entry.submitted_at,
                now,
                staging_job=stager.job_id if stager is not None else None,
            )
            _adopt(p, s, run, adopted)
            continue
        if run.slurm_job_id is None:
            continue
        outcome = lifecycle.on_queue_row(run, by_id.get(run.slurm_job_id), now)
        if outcome is not None:
            record(p, s, run, outcome)
    if orphans:
        _reconcile_orphans(p, s, orphans, by_token)
    # Orphans or adoptions pending repair: look again soon; otherwise at the sparse interval.
    soon = any(r.state == RunState.SUBMITTING for r in p.store.in_slurm())
    s.next_squeue_at = now + (5.0 if soon else p.config.slurm.squeue_interval_s)


def _adopt(p: Parts, s: LoopState, run: Run, outcome: lifecycle.Outcome) -> None:
    record(p, s, run, outcome)
    log.info("run %s: adopted job %s found by token", run.id, outcome.fields["slurm_job_id"])


def _reconcile_orphans(
    p: Parts,
    s: LoopState,
    orphans: Sequence[Run],
    live_by_token: dict[tuple[str, int | None], QueueEntry],
) -> None:
    """SUBMITTING runs that squeue does not know: finished already, or never submitted."""
    earliest = min(r.claimed_at or r.created_at for r in orphans)
    since = datetime.fromtimestamp(earliest) - timedelta(minutes=5)
    finished = {(j.token, j.array_task): j for j in p.slurm.finished_jobs(since) if j.token}
    markers = p.files.read_small_files(
        [RunDir(Path(r.run_dir)).started_marker for r in orphans if r.run_dir]
    )
    now = p.clock()
    for run in orphans:
        text = markers.get(RunDir(Path(run.run_dir)).started_marker) if run.run_dir else None
        stage_token = (lifecycle.stage_token(run.token), None)
        live_stager = live_by_token.get(stage_token)
        stager = live_stager or finished.get(stage_token)
        outcome = lifecycle.settle_orphan(
            run,
            finished=finished.get((run.token, run.array_task)) if run.token else None,
            started=_start_marker(text),
            stager_id=stager.job_id if stager is not None else None,
            live_stager_id=live_stager.job_id if live_stager is not None else None,
            now=now,
            grace_s=p.config.slurm.submit_grace_s,
        )
        if outcome is not None and "slurm_job_id" in outcome.fields:
            _adopt(p, s, run, outcome)
        elif outcome is not None:
            record(p, s, run, outcome)


def _start_marker(text: str | None) -> StartMarker | None:
    """A start marker's content for orphan repair; a garbled one says nothing."""
    try:
        return parse_start_marker(text) if text is not None else None
    except BadMarker:
        return None


# --- 3. final state ------------------------------------------------------------------------------


def finalize_ended(p: Parts, s: LoopState) -> None:
    now = p.clock()
    due = [
        r
        for r in p.store.in_slurm()
        if r.slurm_job_id is not None
        and r.id is not None
        and (r.end_seen_at is not None or r.id in s.cancel_sent)
        and s.next_sacct_at.get(r.id, 0.0) <= now
    ]
    if not due:
        return
    records = p.slurm.accounting([r.slurm_job_id for r in due if r.slurm_job_id])
    dbd_answered(s)
    for run in due:
        assert run.id is not None and run.slurm_job_id is not None
        found = records.get(run.slurm_job_id)
        gone = settling.gone_from_squeue(run, now, s.last_queue, s.last_queue_at)
        verdict = settling.settle(run, found, now, gone=gone)
        if verdict is Settle.FINISH:
            assert found is not None
            _finish(p, s, run, found, now)
        elif verdict is Settle.REQUEUED:
            assert found is not None
            record(p, s, run, lifecycle.back_to_pending(run, found.slurm_state, found.reason))
        elif verdict is Settle.FROM_MARKER:
            code = run.marker_exit_code
            tail = _tail(p, RunDir(Path(run.run_dir)).stderr) if code != 0 else None
            end_attempt(p, s, run, settling.finish_from_marker(run, tail))
        elif verdict is Settle.VANISHED:
            end_attempt(p, s, run, settling.vanished(run, now))
        elif verdict is Settle.CANCELLED_PENDING:
            record(p, s, run, settling.cancelled_pending(run, now))
        else:
            misses = s.sacct_misses.get(run.id, 0) + 1
            s.sacct_misses[run.id] = misses
            s.next_sacct_at[run.id] = now + settling.sacct_retry_s(misses)


def _finish(p: Parts, s: LoopState, run: Run, final: AccountingRecord, now: float) -> None:
    if settling.may_be_requeued(final):
        # Costs one squeue, only for a PREEMPTED or NODE_FAIL record.
        entry = lifecycle.live_entry(p.slurm.queue(), run.slurm_job_id)
        if entry is not None:
            record(p, s, run, lifecycle.back_to_pending(run, final.slurm_state, entry.reason))
            return
    rundir = RunDir(Path(run.run_dir))
    staging_error = None
    if settling.staging_may_have_failed(run, final):
        staging_error = settling.staging_failure(run, _progress_text(p, rundir))
    wanted = settling.finish_log(final, staging_error)
    tail = None
    if wanted == "staging":
        tail = _tail(p, rundir.path / STAGING_LOG)
    elif wanted == "stderr":
        tail = _tail(p, rundir.stderr)
    outcome = settling.finish(run, final, now, staging_error=staging_error, log_tail=tail)
    outcome = end_attempt(p, s, run, outcome)
    log.info("run %s: job %s ended %s", run.id, run.slurm_job_id, outcome.to)


def end_attempt(p: Parts, s: LoopState, run: Run, end: lifecycle.Outcome) -> lifecycle.Outcome:
    """The run's job ended as `end` says: record the run's end, or its next attempt queued
    (retries.retry_or_end), with the ended attempt's row in the same transaction."""
    assert run.id is not None
    rules, limit_s = _retry_rules(run)
    previous = p.store.attempts(run.id)[-1:] if rules.on else []
    outcome = retries.retry_or_end(
        run,
        end,
        rules,
        previous[0] if previous else None,
        time_limit_s=limit_s,
        now=p.clock(),
        keep_place=p.config.retry.keep_place,
    )
    updated = record(p, s, run, outcome)
    # The stored run, not the decision: a run that moved meanwhile (record gave None) had no next
    # attempt queued, and neither the log nor the fault point may say it had.
    if updated is not None and updated.state == RunState.QUEUED and updated.cancel_requested_by:
        # Cancelled while this decision was made (engine/requests.py `cancel` saw the job).
        record(p, s, updated, retries.cancelled_before_next_attempt(updated, p.clock()))
    elif updated is not None and updated.state == RunState.QUEUED:
        log.info("run %s: %s", run.id, outcome.reason)
        if p.tracker is not None:
            p.tracker.wake.set()  # take the attempt's logs before its successor's job starts
        # A crash here: the run is QUEUED with its ended attempt recorded; the next daemon
        # releases the next attempt as any queued run (tests/unit/engine/test_engine_retries.py).
        fault_point(p, "after_attempt_ended")
    return outcome


def _retry_rules(run: Run) -> tuple[RetryRules, float | None]:
    """The run's retry rules and time limit, from its stored spec (a spec that no longer
    parses retries nothing: the run ends as its job did)."""
    try:
        spec = parse_spec(run.spec_yaml, f"run {run.id}")
    except InvalidInput:
        log.warning("run %s: its stored spec does not parse; its job's end ends it", run.id)
        return RetryRules(), None
    return RetryRules.of(spec), float(spec.resources.time_limit_s)


def _progress_text(p: Parts, rundir: RunDir) -> str | None:
    """The stager's progress file, as written (None: unreadable)."""
    try:
        chunk = p.files.read_chunk(rundir.staging_progress, 0, PROGRESS_MAX_BYTES + 1)
    except OSError:
        return None
    return chunk.data.decode("utf-8", errors="replace")


def _tail(p: Parts, path: PurePath) -> str:
    """The last lines of a log, read from its end (one request over SSH)."""
    try:
        chunk = p.files.read_chunk(path, -TAIL_MAX_BYTES, TAIL_MAX_BYTES)
    except OSError as exc:
        log.warning("cannot read %s: %s", path, exc)
        return ""
    return last_lines(chunk.data, max_lines=20)


def dbd_answered(s: LoopState) -> None:
    """sacct answered: slurmdbd's outage, if there was one, is over."""
    if s.dbd_health.answered():
        log.info("slurmdbd (sacct) answers again")


# --- 4. cancellations ----------------------------------------------------------------------------


def send_cancels(p: Parts, s: LoopState) -> None:
    wanted = [
        r
        for r in p.store.in_slurm()
        if r.cancel_requested_by and r.slurm_job_id and r.id not in s.cancel_sent
    ]
    if not wanted:
        return
    jobs = [r.slurm_job_id for r in wanted if r.slurm_job_id]
    # A staging job too, while its run still waits for it (it may already have ended).
    jobs += [r.staging_job_id for r in wanted if r.staging_job_id and r.state == RunState.STAGING]
    p.slurm.cancel(jobs)
    for run in wanted:
        assert run.id is not None
        s.cancel_sent.add(run.id)
        s.next_sacct_at[run.id] = p.clock() + 0.5
    if any(r.array_task is not None and r.started_at is None for r in wanted):
        # A pending array task leaves no accounting record when cancelled: only squeue can
        # say it is gone (settling.Settle.CANCELLED_PENDING). Look soon, not in 30 s.
        s.next_squeue_at = min(s.next_squeue_at, p.clock() + 1.0)
