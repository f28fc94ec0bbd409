"""The daemon's loop: follow the lab's jobs, repair what a crash left, release queued runs.

One tick, in order:
  1. read the markers the jobs write into their run directories (no Slurm call at all);
  2. every `squeue_interval_s`, or sooner when something needs repair, ONE squeue for the whole lab
     (the safety net for jobs that die without writing, and the lookup by token after a crash);
  3. ONE sacct for the jobs that ended, for their final state and accounting (slurmdbd, not ctld);
  4. scancel what users asked to cancel;
  5. release queued runs into Slurm up to `max_active`.

Submission is idempotent (DESIGN.md, decision 3): a run is committed as SUBMITTING with a fresh
token before sbatch, and the token rides in the job's --comment. After a crash a SUBMITTING run is
found again by its token in squeue or sacct and adopted; one that Slurm never saw is submitted
again only after `submit_grace_s`, by which time an sbatch orphaned by the crash has returned.

Slurm unreachable means back off and retry; it never marks a run failed (decision 4).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import secrets
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path, PurePath, PurePosixPath
from typing import TYPE_CHECKING, Any

from hpcops import policy
from hpcops.access import Caller
from hpcops.backoff import backoff_s
from hpcops.code.git import GitError
from hpcops.code.mirror import CodeMirror, MirrorError, Shipment
from hpcops.config import Config
from hpcops.data.cache import ContentCache
from hpcops.data.versions import DataVersion, DataVersionError, read_version
from hpcops.errors import (
    FieldProblem,
    InvalidInput,
    SlurmError,
    SlurmRejected,
    SlurmUnreachable,
    SpecError,
)
from hpcops.jobcontext import Placement, build_job_context, run_dir_path
from hpcops.render import (
    STAGING_LOG,
    STAGING_SCRIPT,
    JobContext,
    StagingJob,
    data_view,
    render_script,
    render_staging_script,
)
from hpcops.rundir import (
    TAIL_MAX_BYTES,
    RunDir,
    last_lines,
    parse_exit_marker,
    parse_start_marker,
)
from hpcops.slurm.backend import SlurmBackend, SlurmLimited
from hpcops.slurm.parse import (
    AccountingRecord,
    Partition,
    QueueEntry,
    parse_gpus,
    parse_tres_cpus,
)
from hpcops.spec import (
    FULL_COMMIT_RE,
    Code,
    Spec,
    parse_mem_mb,
    parse_slurm_time,
    parse_spec,
    spec_to_yaml,
)
from hpcops.states import RunState
from hpcops.store import Run, Store
from hpcops.transport.base import Transport, TransportError
from hpcops.transport.local import LocalTransport

if TYPE_CHECKING:
    from hpcops.tracking.worker import JobTracking, Tracker

log = logging.getLogger(__name__)

DAEMON = "daemon"
_OOM_TEXT = "Exceeded job memory limit"
# Without an accounting record this long after the job's end marker, trust the marker.
_ACCOUNTING_PATIENCE_S = 120.0
# A job that left squeue without a marker and without a record this long is UNKNOWN.
_VANISHED_PATIENCE_S = 600.0
_BACKOFF_MAX_S = 60.0
# After Slurm refused a submission for a full association/QOS limit, try again this much later.
_LIMIT_RETRY_S = 30.0
# In Slurm, not started yet: the start marker or squeue moves these to RUNNING.
_NOT_STARTED = (RunState.PENDING.value, RunState.STAGING.value)
STAGING_PROGRESS = "hpcops.staging"
STAGING_MARKER = "hpcops.staged"  # "<exit code> <epoch>", written by the stager at its end
_REPLAN_S = 30.0
_UNLIMITED = 10**12


@dataclass
class SlurmHealth:
    reachable: bool = True
    failures: int = 0
    retry_at: float = 0.0
    last_error: str = ""
    since: float | None = None


@dataclass(frozen=True)
class EngineStatus:
    """What the engine can tell about itself, for `hpcops status`/`ls`/`quota` (read-only)."""

    health: SlurmHealth
    last_poll_at: float | None  # the last squeue that answered
    decision: policy.Decision | None  # the last release plan: the queue's order and reasons
    usage: dict[str, float]  # fair-share usage by user, as last read


class Orchestrator:
    def __init__(
        self,
        store: Store,
        slurm: SlurmBackend,
        config: Config,
        home: Path,
        *,
        files: Transport | None = None,
        clock: Callable[[], float] = time.time,
        fault: str | None = None,
        tracker: Tracker | None = None,
    ) -> None:
        self.store = store
        # MLflow records (hpcops/tracking): None when tracking is off. Its own thread talks to
        # the server; the loop only asks it what a job's environment is and whether to wait.
        self.tracker = tracker
        self.slurm = slurm
        # The run directories' files, where the jobs see them: this machine's filesystem, or the
        # cluster's over the same SSH connection as Slurm's commands.
        self.files: Transport = files if files is not None else LocalTransport()
        self.config = config
        self.home = home
        self.run_root = config.run_root_in(home)
        self.code_mirror = CodeMirror(
            config.code_root_in(home),
            group=config.access.socket_group,
            fetch_timeout_s=config.code.fetch_timeout_s,
        )
        self.data_cache = ContentCache(config.data_cache_in(home))
        self.placement = Placement.of(config, home)
        self.staging_python = self.placement.staging_python
        self.clock = clock
        # A test-only fault point (HPCOPS_FAULT): the daemon kills itself with SIGKILL there.
        self.fault = fault
        self.health = SlurmHealth()
        self.wake = threading.Event()
        # Set once a tick has run: the first is the start-up reconciliation, after which the
        # database says which runs are really still active (schedules wait for it).
        self.ticked = threading.Event()
        self.last_queue: list[QueueEntry] = []
        self.last_queue_at: float | None = None
        self._next_squeue_at = 0.0  # 0: the first tick polls, which is the start-up reconciliation
        self._next_sacct_at: dict[int, float] = {}
        self._sacct_misses: dict[int, int] = {}
        self._cancel_sent: set[int] = set()
        # Runs that a full Slurm limit refused: not before this time (back-off per run, so one
        # run Slurm keeps refusing does not hold up the lab's other runs).
        self._retry_after: dict[int, float] = {}
        self._limit_refusals: dict[int, int] = {}
        # The release plan is recomputed only when something it depends on changed (a run was
        # queued, changed or ended; the poll saw other jobs; usage was re-read), and at least
        # every _REPLAN_S: an idle daemon with 10,000 queued runs must stay idle.
        self._dirty = True
        self._generation = 0  # bumped by every change; a plan knows which one it saw
        self._planned_at = 0.0
        self.last_decision: policy.Decision | None = None
        self.usage: dict[str, float] = {}
        self._usage_at: float | None = None
        self._partitions: dict[str, Partition] = {}
        self._partitions_at: float | None = None
        self._lock = threading.Lock()  # partitions cache, shared with the API thread

    # --- requests from the API --------------------------------------------------------------

    def status(self) -> EngineStatus:
        return EngineStatus(
            health=dataclasses.replace(self.health),
            last_poll_at=self.last_queue_at,
            decision=self.last_decision,
            usage=dict(self.usage),
        )

    def check_spec(self, spec: Spec, source: str) -> None:
        """What only the cluster and the config can say about a spec, before it is queued."""
        self._check_cluster_limits(spec, source)
        # Render once now so an unknown template or a bad directive is the submitter's error
        # today, not a failed run tomorrow.
        render_script(
            spec, self._context(spec, run_id=0, token="0" * 16), self.config.template_dirs
        )

    def _check_cluster_limits(self, spec: Spec, source: str) -> None:
        partition_name = spec.resources.partition or self.config.slurm.default_partition
        partitions = self.partitions()
        if partitions and partition_name is not None:
            part = partitions.get(partition_name)
            if part is None:
                raise SpecError(
                    source,
                    [
                        FieldProblem(
                            "resources.partition",
                            f"no partition {partition_name!r} on this cluster; "
                            f"it has: {', '.join(sorted(partitions))}",
                        )
                    ],
                )
            if part.max_time_s is not None and spec.resources.time_limit_s > part.max_time_s:
                raise SpecError(
                    source,
                    [
                        FieldProblem(
                            "resources.time",
                            f"{spec.resources.time} is over the time limit of partition "
                            f"{partition_name!r} ({_format_s(part.max_time_s)}); Slurm would "
                            "accept it and leave it pending forever (PartitionTimeLimit)",
                        )
                    ],
                )

    def enqueue(
        self,
        specs: Sequence[tuple[Spec, str]],
        caller: Caller,
        shipments: Sequence[Shipment | None] | None = None,
    ) -> list[Run]:
        """Queue specs given as (parsed spec, source name): all of them, or none.

        `shipments` say, per spec, what the submitter's client did about its code (see
        hpcops.code); a spec's code commit must be in the lab's mirror once its shipment is in."""
        parsed = []
        for i, (spec, source) in enumerate(specs):
            shipment = shipments[i] if shipments else None
            spec, fields = self._pin(spec, shipment, source, caller)
            self.check_spec(spec, source)
            parsed.append((spec, fields))
        runs = [self._new_run(spec, caller, **fields) for spec, fields in parsed]
        runs = self.store.add_runs(runs, actor=caller.name)
        self.changed()
        if self.tracker is not None:
            self.tracker.wake.set()  # create the records now, so release need not wait
        return runs

    def _pin_code(
        self, spec: Spec, shipment: Shipment | None, source: str, caller: Caller
    ) -> tuple[Spec, dict[str, Any]]:
        """The spec with its code commit resolved, and the run's code_* fields.

        Takes in the submitter's bundle, or fetches a repository URL, into the mirror; refuses a
        commit the mirror does not hold, since the job could not check it out."""
        shipment = shipment or Shipment()
        if self.config.slurm.transport == "ssh" and (spec.code is not None or spec.data):
            # The mirror and the data cache live beside the daemon; jobs on the cluster could
            # not read them. Refused now rather than failing every job later.
            raise _code_problem(
                source,
                "code" if spec.code is not None else "data",
                "not available with a daemon off the cluster (slurm.transport: ssh): the code "
                "mirror and the data cache must be on storage the jobs see",
            )
        if spec.code is None:
            if shipment.bundle or shipment.dirty:
                raise InvalidInput(f"{source}: code was shipped for a spec without code:")
            return spec, {}
        code = spec.code
        try:
            if code.is_url:
                if shipment.bundle or shipment.dirty:
                    raise InvalidInput(f"{source}: a repository URL is fetched, not shipped")
                commit = self._fetch(code.repo, code.commit)
                checkout = commit
            elif not FULL_COMMIT_RE.fullmatch(code.commit) and not shipment.bundle:
                # A branch of a repository on the cluster's disk (a schedule's firing, or the
                # API): the daemon fetches it itself, so the run gets the commit current now.
                commit = self._fetch_local(code.repo, code.commit, source)
                checkout = commit
            else:
                if not FULL_COMMIT_RE.fullmatch(code.commit):
                    raise _code_problem(
                        source, "code.commit", f"must be a full commit id; got {code.commit!r}"
                    )
                commit = code.commit
                checkout = shipment.checkout or commit
                if shipment.bundle:
                    self.code_mirror.receive_bundle(shipment.bundle, caller.uid, checkout)
                self._check_checkout(commit, checkout, shipment.dirty, source)
            self.code_mirror.keep(checkout)
        except (MirrorError, GitError) as exc:
            raise _code_problem(source, "code", str(exc)) from None
        pinned = spec.model_copy(update={"code": Code(repo=code.repo, commit=commit)})
        fields = {
            "code_repo": code.repo,
            "code_commit": commit,
            "code_checkout": checkout,
            "code_dirty": shipment.dirty,
        }
        return pinned, fields

    def _fetch_local(self, repo: str, rev: str, source: str) -> str:
        try:
            return self.code_mirror.fetch_url(repo, rev)
        except MirrorError as exc:
            raise _code_problem(
                source,
                "code.commit",
                f"{rev!r} must be a full commit id, or {repo} a repository the daemon can read "
                f"(`hpcops submit` resolves branches on your machine): {exc}",
            ) from None

    def _pin(
        self, spec: Spec, shipment: Shipment | None, source: str, caller: Caller
    ) -> tuple[Spec, dict[str, Any]]:
        """The spec with every moving reference resolved (code commit, data revs), and the
        run's code_* and data_json fields: what a run records so it can be run again."""
        spec, fields = self._pin_code(spec, shipment, source, caller)
        spec, data_fields = self._pin_data(spec, fields, source)
        return spec, {**fields, **data_fields}

    def _fetch(self, repo: str, rev: str) -> str:
        """`rev` of a repository the daemon fetches; no network when it is a full commit id
        the mirror holds already (a rerun, or a schedule pinned to a commit)."""
        if FULL_COMMIT_RE.fullmatch(rev) and self.code_mirror.have([rev]):
            self.code_mirror.keep(rev)
            return rev
        return self.code_mirror.fetch_url(repo, rev)

    def _pin_data(
        self, spec: Spec, code: dict[str, Any], source: str
    ) -> tuple[Spec, dict[str, Any]]:
        """The data version of each target, read from its .dvc file at the pinned commit; a
        target of another repository gets that commit as its rev in the stored spec."""
        if not spec.data:
            return spec, {}
        versions = []
        targets = []
        for i, target in enumerate(spec.data):
            try:
                if target.repo is not None:
                    commit = self._fetch(target.repo, target.rev or "HEAD")
                    target = target.model_copy(update={"rev": commit})
                else:
                    commit = code["code_checkout"]
                md5, size, nfiles = read_version(str(self.code_mirror.path), commit, target.path)
            except (MirrorError, DataVersionError, GitError) as exc:
                raise _code_problem(source, f"data[{i}]", str(exc)) from None
            versions.append(
                DataVersion(
                    path=target.path,
                    repo=target.repo or code["code_repo"],
                    rev=commit,
                    md5=md5,
                    size=size,
                    nfiles=nfiles,
                    dest=target.where,
                    env=target.env_name,
                )
            )
            targets.append(target)
        pinned = spec.model_copy(update={"data": targets})
        return pinned, {"data_json": json.dumps([v.to_json() for v in versions])}

    def _write_staging_plan(self, spec: Spec, run: Run, ctx: JobContext) -> None:
        """The plan the job's stager follows: each version, and where the job will read it."""
        assert run.data_json is not None and ctx.staging is not None
        targets = []
        for item in json.loads(run.data_json):
            item["dest"] = data_view(ctx, item["dest"])
            targets.append(item)
        plan = {
            "cache": str(self.data_cache.root),
            "mirror": str(self.code_mirror.path),
            "progress": str(ctx.run_dir.path / STAGING_PROGRESS),
            "marker": str(ctx.run_dir.path / STAGING_MARKER),
            # The attempt's token: a stray stager of an earlier attempt (a crash between the two
            # sbatch calls) writes markers the daemon can tell from this attempt's.
            "token": ctx.token,
            "targets": targets,
        }
        self.files.write_file(PurePosixPath(ctx.staging.plan), json.dumps(plan, indent=1))

    def _check_checkout(self, commit: str, checkout: str, dirty: bool, source: str) -> None:
        if not FULL_COMMIT_RE.fullmatch(checkout):
            raise _code_problem(source, "code", f"checkout {checkout!r} is not a full commit id")
        missing = {commit, checkout} - self.code_mirror.have({commit, checkout})
        if missing:
            raise _code_problem(
                source,
                "code.commit",
                f"commit {sorted(missing)[0]} is not in the lab's code mirror; `hpcops submit` "
                "ships it from your repository",
            )
        if dirty != (checkout != commit) or (
            dirty and self.code_mirror.parent_of(checkout) != commit
        ):
            raise _code_problem(
                source, "code", f"a dirty snapshot must be a commit on top of {commit}"
            )

    def prepare_run(self, spec: Spec, source: str, caller: Caller) -> Run:
        """A run of the spec for `caller`, checked as `enqueue` checks it, not yet stored: a
        schedule's firing stores it together with its firing record (scheduling/service.py)."""
        spec, fields = self._pin(spec, None, source, caller)
        self.check_spec(spec, source)
        return self._new_run(spec, caller, **fields)

    def current_data(self, spec: Spec, source: str, caller: Caller) -> list[DataVersion]:
        """The data versions a run of the spec queued now would stage: its moving references
        (code branch, data revs) resolved through the mirror exactly as `prepare_run` resolves
        them, the .dvc files read; nothing queued, no data moved. An on-data-change schedule's
        check. Each commit it sees keeps a ref in the mirror, as a submission's does."""
        _, fields = self._pin(spec, None, source, caller)
        return [DataVersion.from_json(item) for item in json.loads(fields.get("data_json", "[]"))]

    def _new_run(self, spec: Spec, caller: Caller, **code_fields: Any) -> Run:
        canonical = spec_to_yaml(spec)
        return Run(
            **code_fields,
            name=spec.name,
            experiment=spec.experiment,
            owner=caller.name,
            owner_uid=caller.uid,
            priority=spec.priority,
            state=RunState.QUEUED,
            spec_yaml=canonical,
            spec_hash=hashlib.sha256(canonical.encode()).hexdigest()[:16],
            partition=spec.resources.partition or self.config.slurm.default_partition,
            gpus=spec.resources.gpus * spec.resources.nodes,
            cpus=spec.resources.cpus_per_task * spec.resources.ntasks,
            created_at=self.clock(),
            updated_at=self.clock(),
        )

    def cancel(self, run_id: int, caller: Caller) -> tuple[Run, str]:
        run = self.store.get(run_id)
        state = RunState(run.state)
        if state.is_terminal:
            return run, f"run {run_id} already ended ({state})"
        if state in (RunState.QUEUED, RunState.HELD):
            done = self.store.transition(
                run_id,
                RunState.CANCELLED,
                actor=caller.name,
                note="cancelled before release",
                expect=(RunState.QUEUED, RunState.HELD),
                ended_at=self.clock(),
                cancel_requested_by=caller.name,
            )
            if done is not None:
                self.changed()
                return done, f"run {run_id} cancelled"
        updated = self.store.transition(
            run_id,
            None,
            actor=caller.name,
            note="cancel requested",
            cancel_requested_by=caller.name,
        )
        self.changed()
        assert updated is not None
        return updated, f"run {run_id}: cancel sent to Slurm job {run.slurm_job_id or '(pending)'}"

    def partitions(self) -> dict[str, Partition]:
        """Partition limits, cached; the old ones (or none) while Slurm does not answer.

        Called from the API thread too: while Slurm is known to be down it asks nothing, so a
        submission is not held up by a command that takes 9 s to fail (Slurm 22.05)."""
        with self._lock:
            fresh = (
                self._partitions_at is not None
                and self.clock() - self._partitions_at < self.config.slurm.partition_cache_s
            )
            if fresh or not self.health.reachable:
                return dict(self._partitions)
            try:
                self._partitions = self.slurm.partitions()
                self._partitions_at = self.clock()
            except SlurmError as exc:
                log.warning("cannot read partition limits: %s", exc)
            return dict(self._partitions)

    # --- the loop ---------------------------------------------------------------------------

    def run_forever(self, stop: threading.Event) -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.tick()
            except Exception:
                # One bad tick must not end the daemon that every lab member depends on.
                log.exception("tick failed; the next one tries again")
            self.ticked.set()
            elapsed = time.monotonic() - started
            self.wake.wait(max(0.0, self.config.daemon.tick_interval_s - elapsed))
            self.wake.clear()

    def tick(self) -> None:
        now = self.clock()
        try:
            self._read_markers(self.store.in_slurm())
        except TransportError as exc:
            # Off the cluster the markers come over the same connection as Slurm's commands:
            # the cluster is out of reach, and the back-off below says when to try again.
            if self._slurm_callable():
                self._slurm_failed(SlurmUnreachable(str(exc)))
            return
        if not self._slurm_callable():
            return
        steps: list[tuple[str, Callable[[], None]]] = [
            ("poll", lambda: self._safety_net() if now >= self._next_squeue_at else None),
            ("final states", self._finalize_ended),
            ("cancellations", self._send_cancels),
            ("fair-share usage", self._refresh_usage),
            ("release", self._release),
        ]
        for name, step in steps:
            try:
                step()
            except SlurmUnreachable as exc:
                self._slurm_failed(exc)
                return
            except TransportError as exc:  # a run directory's file on an unreachable cluster
                self._slurm_failed(SlurmUnreachable(str(exc)))
                return
            except Exception:
                # One step's surprise (an unexpected Slurm message, a broken marker file) must
                # not starve the others: the rest of the tick still runs.
                log.exception("tick step %r failed; the other steps go on", name)
        self._slurm_ok()

    # --- 1. markers -------------------------------------------------------------------------

    def _read_markers(self, runs: Sequence[Run]) -> None:
        """Every marker the runs in Slurm may have written since the last tick, in one read
        (over SSH: one command for all of them, not one per run)."""
        followed = [r for r in runs if r.id is not None and r.slurm_job_id and r.run_dir]
        wanted: list[PurePath] = []
        for run in followed:
            rundir = RunDir(Path(run.run_dir))
            if run.state in _NOT_STARTED:
                wanted.append(rundir.started_marker)
            if run.state == RunState.STAGING.value:
                wanted.append(rundir.path / STAGING_MARKER)
            # Read until its code is known: the poll may have noticed the end first.
            if run.marker_exit_code is None:
                wanted.append(rundir.exit_marker)
        if not wanted:
            return
        try:
            texts = self.files.read_small_files(wanted)
        except OSError as exc:
            log.warning("cannot read the runs' markers: %s", exc)
            return
        for run in followed:
            self._apply_markers(run, texts)

    def _apply_markers(self, run: Run, texts: dict[PurePath, str]) -> None:
        assert run.id is not None
        run_id = run.id
        rundir = RunDir(Path(run.run_dir))
        if run.state == RunState.STAGING.value:
            # "<exit code> <epoch> <token>": only this attempt's stager speaks for it.
            staged = texts.get(rundir.path / STAGING_MARKER, "").split()
            if staged[:1] == ["0"] and staged[2:3] == [run.token]:
                run = self.store.transition(
                    run_id,
                    RunState.PENDING,
                    actor=DAEMON,
                    note=f"data staged (job {run.staging_job_id})",
                    expect=(RunState.STAGING,),
                ) or self.store.get(run_id)
            # A failed staging: Slurm ends the run's job (kill-on-invalid-dep); _finish says why.
        if run.state in _NOT_STARTED:
            text = texts.get(rundir.started_marker)
            started = parse_start_marker(text) if text is not None else None
            if started is not None and started.slurm_job_id == run.slurm_job_id:
                self.store.transition(
                    run_id,
                    RunState.RUNNING,
                    actor=DAEMON,
                    note=f"started on {started.hostname}",
                    expect=(RunState.PENDING, RunState.STAGING),
                    started_at=started.started_at,
                )
                self._dirty = True  # one fewer pending: the window has room
        if run.marker_exit_code is None:
            text = texts.get(rundir.exit_marker)
            ended = parse_exit_marker(text) if text is not None else None
            if ended is not None:
                self.store.transition(
                    run_id,
                    None,
                    actor=DAEMON,
                    end_seen_at=run.end_seen_at or self.clock(),
                    marker_exit_code=ended.exit_code,
                )
                self._next_sacct_at.pop(run_id, None)

    # --- 2. the safety net ------------------------------------------------------------------

    def _safety_net(self) -> None:
        now = self.clock()
        self._next_squeue_at = now + self.config.slurm.squeue_interval_s  # also if this fails
        entries = self.slurm.queue()
        self.last_queue, self.last_queue_at = entries, now
        self._dirty = True  # jobs submitted by hand may have come or gone
        by_id = {e.job_id: e for e in entries}
        by_token = {e.token: e for e in entries if e.token}
        orphans: list[Run] = []
        for run in self.store.in_slurm():
            assert run.id is not None
            if run.state == RunState.SUBMITTING.value:
                entry = by_token.get(run.token) if run.token else None
                if entry is not None:
                    stager = by_token.get(f"{run.token}:stage")
                    self._adopt(
                        run,
                        entry.job_id,
                        entry.state,
                        entry.submitted_at,
                        staging_job=stager.job_id if stager is not None else None,
                    )
                else:
                    orphans.append(run)
                continue
            if run.slurm_job_id is None:
                continue
            entry = by_id.get(run.slurm_job_id)
            if entry is None:
                if run.end_seen_at is None:
                    # Gone from squeue without an end marker: cancelled, timed out or lost.
                    # sacct will say which.
                    self.store.transition(run.id, None, actor=DAEMON, end_seen_at=now)
                    self._next_sacct_at.pop(run.id, None)
                continue
            fields: dict[str, Any] = {}
            if entry.reason != (run.reason or "") and entry.reason not in ("", "None"):
                fields["reason"] = entry.reason
            if entry.state == RunState.RUNNING and run.state in _NOT_STARTED:
                self.store.transition(
                    run.id,
                    RunState.RUNNING,
                    actor=DAEMON,
                    note="running (squeue)",
                    expect=(RunState.PENDING, RunState.STAGING),
                    started_at=entry.started_at or now,
                    **fields,
                )
            elif fields:
                self.store.transition(run.id, None, actor=DAEMON, **fields)
        if orphans:
            self._reconcile_orphans(orphans, by_token)
        # Orphans or adoptions pending repair: look again soon; otherwise at the sparse interval.
        soon = any(r.state == RunState.SUBMITTING.value for r in self.store.in_slurm())
        self._next_squeue_at = now + (5.0 if soon else self.config.slurm.squeue_interval_s)

    def _adopt(
        self,
        run: Run,
        job_id: str,
        state: RunState,
        submitted_at: float | None,
        *,
        staging_job: str | None = None,
    ) -> None:
        assert run.id is not None
        live: RunState = (
            state if state in (RunState.PENDING, RunState.RUNNING) else RunState.PENDING
        )
        if live is RunState.PENDING and staging_job is not None:
            live = RunState.STAGING  # the staged marker moves it on, or _finish says why not
        fields: dict[str, Any] = {
            "slurm_job_id": job_id,
            "submitted_at": submitted_at or self.clock(),
            "staging_job_id": staging_job,
        }
        if state.is_terminal:
            fields["end_seen_at"] = self.clock()
        self.store.transition(
            run.id,
            live,
            actor=DAEMON,
            expect=(RunState.SUBMITTING,),
            note=f"adopted Slurm job {job_id} by token {run.token}",
            **fields,
        )
        log.info("run %s: adopted job %s found by token", run.id, job_id)

    def _reconcile_orphans(
        self, orphans: Sequence[Run], live_by_token: dict[str, QueueEntry]
    ) -> None:
        """SUBMITTING runs that squeue does not know: finished already, or never submitted."""
        earliest = min(r.claimed_at or r.created_at for r in orphans)
        since = datetime.fromtimestamp(earliest) - timedelta(minutes=5)
        finished = {j.token: j for j in self.slurm.finished_jobs(since) if j.token}
        markers = self.files.read_small_files(
            [RunDir(Path(r.run_dir)).started_marker for r in orphans if r.run_dir]
        )
        now = self.clock()
        for run in orphans:
            assert run.id is not None
            job = finished.get(run.token) if run.token else None
            text = markers.get(RunDir(Path(run.run_dir)).started_marker) if run.run_dir else None
            started = parse_start_marker(text) if text is not None else None
            stage_token = f"{run.token}:stage"
            stager = live_by_token.get(stage_token) or finished.get(stage_token)
            if job is not None:
                self._adopt(
                    run,
                    job.job_id,
                    job.state,
                    None,
                    staging_job=stager.job_id if stager is not None else None,
                )
            elif started is not None:
                # The job ran (it wrote its start marker, with its id) even though neither
                # squeue nor sacct could name it by token: adopt it, never submit it twice.
                self._adopt(run, started.slurm_job_id, RunState.RUNNING, None)
            elif now - (run.claimed_at or run.created_at) > self.config.slurm.submit_grace_s:
                never = (
                    f"no Slurm job carries token {run.token} "
                    f"{self.config.slurm.submit_grace_s:.0f} s after the claim; "
                    "the submission never reached Slurm"
                )
                if stage_token in live_by_token:
                    # Its staging job went in, the run's own job did not: the stager is
                    # not needed, and must not write into the next attempt's directory.
                    self._drop_staging_job(live_by_token[stage_token].job_id)
                if run.cancel_requested_by:
                    self._cancel_unsubmitted(run, f"after the check by token ({never})")
                    continue
                self.store.transition(
                    run.id,
                    RunState.QUEUED,
                    actor=DAEMON,
                    expect=(RunState.SUBMITTING,),
                    note=f"{never}, queued again",
                    token=None,
                )

    # --- 3. final state ---------------------------------------------------------------------

    def _finalize_ended(self) -> None:
        now = self.clock()
        due = [
            r
            for r in self.store.in_slurm()
            if r.slurm_job_id is not None
            and r.id is not None
            and (r.end_seen_at is not None or r.id in self._cancel_sent)
            and self._next_sacct_at.get(r.id, 0.0) <= now
        ]
        if not due:
            return
        records = self.slurm.accounting([r.slurm_job_id for r in due if r.slurm_job_id])
        for run in due:
            assert run.id is not None and run.slurm_job_id is not None
            record = records.get(run.slurm_job_id)
            if record is not None and _is_placeholder(record):
                record = None  # slurmdbd has not recorded the job itself yet
            if record is not None and record.state.is_terminal:
                self._finish(run, record)
                continue
            if (
                record is not None
                and record.state is RunState.PENDING
                and run.state == RunState.RUNNING.value
            ):
                # It wrote its exit marker, yet its job is pending again: Slurm requeued it, and
                # sacct already shows the new attempt (the PREEMPTED record can be gone by the
                # time we ask, seen on 22.05).
                self._back_to_pending(run, record.slurm_state, record.reason)
                continue
            if record is not None and self._gone_from_squeue(run):
                # sacct still says it runs, squeue has not seen it since it ended: a "runaway"
                # record (its end was lost between slurmctld and slurmdbd). Judge as if absent.
                record = None
            if record is None and run.end_seen_at is not None:
                waited = now - run.end_seen_at
                if run.marker_exit_code is not None and waited > _ACCOUNTING_PATIENCE_S:
                    self._finish_from_marker(run)
                    continue
                if run.marker_exit_code is None and waited > _VANISHED_PATIENCE_S:
                    self.store.transition(
                        run.id,
                        RunState.UNKNOWN,
                        actor=DAEMON,
                        expect=(run_state(run),),
                        note=f"job {run.slurm_job_id} left squeue without an exit marker and "
                        "sacct has no record of it",
                        reason="vanished: no exit marker and no accounting record",
                        ended_at=now,
                    )
                    self._forget(run.id)
                    continue
            # Not final yet (sacct lags the job's end by about a second): ask again, backing off.
            misses = self._sacct_misses.get(run.id, 0) + 1
            self._sacct_misses[run.id] = misses
            delay = backoff_s(misses, first_s=1.0, max_s=30.0)
            self._next_sacct_at[run.id] = now + delay

    def _back_to_pending(self, run: Run, seen: str, slurm_reason: str) -> None:
        """Slurm took the job back and queued it again under the same id: follow it."""
        assert run.id is not None
        # The markers speak for the attempt Slurm took back; the next attempt writes its own.
        self.files.remove_files(RunDir(Path(run.run_dir)).markers)
        self.store.transition(
            run.id,
            RunState.PENDING,
            actor=DAEMON,
            expect=(run_state(run),),
            note=f"Slurm requeued job {run.slurm_job_id} ({seen})",
            reason=slurm_reason if slurm_reason not in ("", "None") else "requeued",
            end_seen_at=None,
            marker_exit_code=None,
        )
        self._forget(run.id)

    def _gone_from_squeue(self, run: Run) -> bool:
        """The job ended long ago and no poll since has listed it."""
        if run.end_seen_at is None or self.last_queue_at is None:
            return False
        return (
            self.clock() - run.end_seen_at > _ACCOUNTING_PATIENCE_S
            and self.last_queue_at > run.end_seen_at
            and all(e.job_id != run.slurm_job_id for e in self.last_queue)
        )

    def _requeued(self, run: Run) -> QueueEntry | None:
        """The live entry of a job Slurm requeued (preemption, node failure with requeue), whose
        sacct record already reads PREEMPTED or NODE_FAIL. Costs one squeue, only then."""
        return next(
            (
                e
                for e in self.slurm.queue()
                if e.job_id == run.slurm_job_id and e.state in (RunState.PENDING, RunState.RUNNING)
            ),
            None,
        )

    def _finish(self, run: Run, record: AccountingRecord) -> None:
        assert run.id is not None
        if record.state in (RunState.PREEMPTED, RunState.NODE_FAIL):
            entry = self._requeued(run)
            if entry is not None:
                self._back_to_pending(run, record.slurm_state, entry.reason)
                return
        state = record.state
        tail = None
        staging_error = self._staging_failure(run) if state == RunState.CANCELLED else None
        if staging_error is not None:
            # Slurm cancelled the run's job because its staging job failed (afterok,
            # kill-on-invalid-dep): a failed run, with DVC's words and the stager's log.
            state = RunState.FAILED
            record = dataclasses.replace(record, reason=f"data staging failed: {staging_error}")
            tail = self._tail(RunDir(Path(run.run_dir)).path / STAGING_LOG)
        elif state != RunState.COMPLETED:
            tail = self._stderr_tail(run)
            # Without cgroups, OverMemoryKill ends the job FAILED 0:9 with this line in stderr
            # (Slurm 22.05, NOTES-SLURM); a user asks "did it run out of memory?", so say so.
            if state == RunState.FAILED and _OOM_TEXT in tail:
                state = RunState.OUT_OF_MEMORY
        # sacct's Reason is "None" for most ended jobs; say what a user needs, or nothing at all.
        reason: str | None = record.reason if record.reason not in ("", "None") else None
        if reason is None and state != RunState.COMPLETED:
            reason = f"{record.slurm_state}, exit {record.exit_code}:{record.signal}"
        self.store.transition(
            run.id,
            state,
            actor=DAEMON,
            expect=(run_state(run),),
            note=f"Slurm: {record.slurm_state}, exit {record.exit_code}:{record.signal}",
            exit_code=_exit_code(record, run.marker_exit_code),
            signal=record.signal,
            reason=reason,
            **_drop_none(
                {
                    "submitted_at": record.submitted_at,
                    "started_at": record.started_at,
                    "ended_at": record.ended_at or self.clock(),
                    "elapsed_s": record.elapsed_s,
                    "total_cpu_s": record.total_cpu_s,
                    "max_rss_bytes": record.max_rss_bytes,
                    "stderr_tail": tail,
                    "slurm_state": record.slurm_state,
                    "alloc_cpus": parse_tres_cpus(record.alloc_tres) if record.alloc_tres else None,
                    "alloc_gpus": parse_gpus(record.alloc_tres) if record.alloc_tres else None,
                }
            ),
        )
        self._forget(run.id)
        log.info("run %s: job %s ended %s", run.id, run.slurm_job_id, state)

    def _finish_from_marker(self, run: Run) -> None:
        assert run.id is not None and run.marker_exit_code is not None
        code = run.marker_exit_code
        state = RunState.COMPLETED if code == 0 else RunState.FAILED
        tail = None if code == 0 else self._stderr_tail(run)
        self.store.transition(
            run.id,
            state,
            actor=DAEMON,
            expect=(run_state(run),),
            note=f"no accounting record from sacct after {_ACCOUNTING_PATIENCE_S:.0f} s; "
            "state from the job's exit marker",
            exit_code=code,
            ended_at=run.end_seen_at,
            stderr_tail=tail,
            reason="state from the job's exit marker (no sacct record)",
        )
        self._forget(run.id)

    def _staging_failure(self, run: Run) -> str | None:
        """Why the run's staging job failed, from this attempt's progress file; None if it did
        not fail (or the run had no staging job)."""
        if run.staging_job_id is None or run.cancel_requested_by:
            return None
        path = RunDir(Path(run.run_dir)).path / STAGING_PROGRESS
        try:
            chunk = self.files.read_chunk(path, 0, 256 * 1024)
            progress = json.loads(chunk.data) if chunk.data else {}
        except (OSError, ValueError):
            progress = {}
        if not isinstance(progress, dict) or progress.get("token") != run.token:
            return "the staging job ended before it staged the data (hpcops logs --staging)"
        if progress.get("error"):
            return str(progress["error"])
        targets = progress.get("targets")
        done = isinstance(targets, dict) and all(
            isinstance(t, dict) and t.get("phase") == "done" for t in targets.values()
        )
        return None if done else "the staging job ended before it staged the data"

    def _stderr_tail(self, run: Run) -> str:
        """The last lines of the job's stderr, read from its end (one request over SSH)."""
        return self._tail(RunDir(Path(run.run_dir)).stderr)

    def _tail(self, path: PurePath) -> str:
        try:
            chunk = self.files.read_chunk(path, -TAIL_MAX_BYTES, TAIL_MAX_BYTES)
        except OSError as exc:
            log.warning("cannot read %s: %s", path, exc)
            return ""
        return last_lines(chunk.data, max_lines=20)

    def _forget(self, run_id: int) -> None:
        """A run left Slurm for good: drop its bookkeeping and release into the room it left."""
        self._next_sacct_at.pop(run_id, None)
        self._sacct_misses.pop(run_id, None)
        self._cancel_sent.discard(run_id)
        self._retry_after.clear()  # a job ended, so a full Slurm limit may have room again
        self.changed()  # release now, not at the next replan

    # --- 4. cancellations -------------------------------------------------------------------

    def _send_cancels(self) -> None:
        wanted = [
            r
            for r in self.store.in_slurm()
            if r.cancel_requested_by and r.slurm_job_id and r.id not in self._cancel_sent
        ]
        if not wanted:
            return
        jobs = [r.slurm_job_id for r in wanted if r.slurm_job_id]
        # A staging job too, while its run still waits for it (it may already have ended).
        jobs += [
            r.staging_job_id
            for r in wanted
            if r.staging_job_id and r.state == RunState.STAGING.value
        ]
        self.slurm.cancel(jobs)
        for run in wanted:
            assert run.id is not None
            self._cancel_sent.add(run.id)
            self._next_sacct_at[run.id] = self.clock() + 0.5

    # --- 5. release -------------------------------------------------------------------------

    def _release(self) -> None:
        now = self.clock()
        if not (self._dirty or now - self._planned_at > _REPLAN_S):
            return
        decision = self.plan()
        for run in self.store.runs_by_ids(decision.release):
            if run.state != RunState.QUEUED.value or self._retry_after.get(run.id or 0, 0) > now:
                continue
            if self.tracker is not None and not self.tracker.may_release(run, now):
                self._dirty = True  # its MLflow record is being made: look again next tick
                continue
            if not self._submit(run):
                break
        # What was just released changes what the queue waits for: plan again next tick.
        self._dirty = self._dirty or bool(decision.release)

    def plan(self) -> policy.Decision:
        """The release plan for the queue as it is now (pure policy over fresh inputs)."""
        generation = self._generation
        candidates = [
            policy.Candidate(
                run_id=run_id,
                owner=owner,
                priority=priority,
                queued_at=created_at,
                cpus=cpus,
                gpus=gpus,
                partition=partition,
            )
            for run_id, owner, priority, created_at, cpus, gpus, partition in (
                self.store.queued_summaries()
            )
        ]
        decision = policy.plan_release(
            candidates,
            self.active_jobs(),
            self.quotas(),
            self.usage,
            max_active=self.config.max_active,
            pending_window=self.config.pending_window,
        )
        self.last_decision, self._planned_at = decision, self.clock()
        # A change made by the API while this plan read the store stays pending.
        self._dirty = self._generation != generation
        return decision

    def active_jobs(self) -> list[policy.Active]:
        """The lab's jobs in Slurm: hpcops' own runs, and from the last poll those submitted by
        hand under the lab's account (they count against the quotas too)."""
        ours = self.store.in_slurm()
        active = [
            policy.Active(
                owner=r.owner,
                cpus=r.cpus,
                gpus=r.gpus,
                partition=r.partition,
                pending=r.state != RunState.RUNNING.value,
            )
            for r in ours
        ]
        our_jobs = {r.slurm_job_id for r in ours if r.slurm_job_id}
        our_tokens = {r.token for r in ours if r.token}
        for entry in self.last_queue:
            if entry.job_id in our_jobs or (entry.token and entry.token in our_tokens):
                continue
            if entry.token and entry.user == self.slurm_user:
                continue  # a job of ours that has just ended and left the database's view
            if entry.state.is_terminal:
                continue
            active.append(
                policy.Active(
                    owner=entry.user,
                    cpus=entry.cpus,
                    gpus=entry.gpus,
                    partition=entry.partition or None,
                    pending=entry.state == RunState.PENDING,
                    by_hand=True,
                )
            )
        return active

    @property
    def slurm_user(self) -> str:
        return getattr(self.slurm, "user", "")

    def quotas(self) -> policy.Quotas:
        """The config's quotas with the leads' run-time overrides on top."""
        q = self.config.quotas

        def limits(cfg: Any) -> dict[str, int | None]:
            return {"jobs": cfg.jobs, "cpus": cfg.cpus, "gpus": cfg.gpus}

        scopes: dict[str, dict[str, int | None]] = {
            "lab": limits(q.lab),
            "per_user": limits(q.per_user),
            **{f"user:{name}": limits(v) for name, v in q.users.items()},
            **{f"partition:{name}": limits(v) for name, v in q.partitions.items()},
        }
        for override in self.store.quota_overrides():
            scopes.setdefault(override.scope, {"jobs": None, "cpus": None, "gpus": None})
            value = override.value
            if value is None and override.scope.startswith("user:"):
                # For one user, None would mean "use per_user"; a lead who said "unlimited"
                # means no limit.
                value = _UNLIMITED
            scopes[override.scope][override.resource] = value

        def build(scope: str) -> policy.Limits:
            return policy.Limits(**scopes.get(scope, {}))

        return policy.Quotas(
            lab=build("lab"),
            per_user=build("per_user"),
            users={k.split(":", 1)[1]: build(k) for k in scopes if k.startswith("user:")},
            partitions={k.split(":", 1)[1]: build(k) for k in scopes if k.startswith("partition:")},
        )

    def _refresh_usage(self) -> None:
        """Fair share: each member's GPU- and CPU-hours over the window, from Slurm's accounting
        (sacct asks slurmdbd, not slurmctld). hpcops runs count for their owner, jobs submitted
        by hand for their Slurm user."""
        fair = self.config.fair_share
        now = self.clock()
        if self._usage_at is not None and now - self._usage_at < fair.refresh_s:
            return
        since = datetime.fromtimestamp(now - fair.window_days * 86400)
        records = self.slurm.usage(since)
        owners = self.store.owners_by_job([r.job_id for r in records])
        usage: dict[str, float] = {}
        for r in records:
            owner = owners.get(r.job_id, r.user)
            hours = r.elapsed_s / 3600
            usage[owner] = usage.get(owner, 0.0) + hours * (
                r.gpus * fair.gpu_hour_weight + r.cpus * fair.cpu_hour_weight
            )
        if usage != self.usage:
            self._dirty = True
        self.usage, self._usage_at = usage, now

    # --- requests that change runs -----------------------------------------------------------

    def set_priority(self, run_id: int, priority: int, caller: Caller, note: str = "") -> Run:
        run = self.store.get(run_id)
        updated = self.store.transition(
            run_id,
            None,
            actor=caller.name,
            note=note or f"priority {run.priority} -> {priority}",
            priority=priority,
        )
        assert updated is not None
        self.changed()
        return updated

    def top(self, run_id: int, caller: Caller) -> Run:
        """The run goes next: above every queued run's priority."""
        run = self.store.get(run_id)
        highest = self.store.max_queued_priority()
        # Strictly above every queued run (a tie would leave fair share to decide), capped at
        # the top of the allowed range.
        priority = min(1000, max(run.priority, (highest if highest is not None else 0) + 1))
        note = f"moved to the top by {caller.name}: priority {run.priority} -> {priority}"
        return self.set_priority(run_id, priority, caller, note)

    def hold(self, run_id: int, caller: Caller) -> Run:
        run = self.store.get(run_id)
        if run.state == RunState.HELD.value:
            return run
        if run.state != RunState.QUEUED.value:
            raise InvalidInput(
                f"run {run_id} is {run.state}: only a run still in hpcops' queue can be held"
                + ("; cancel it instead" if run.state in ("STAGING", "PENDING", "RUNNING") else "")
            )
        updated = self.store.transition(
            run_id,
            RunState.HELD,
            actor=caller.name,
            expect=(RunState.QUEUED,),
            note=f"held by {caller.name}",
            held_by=caller.name,
        )
        if updated is None:
            raise InvalidInput(f"run {run_id} left the queue meanwhile; see `hpcops show {run_id}`")
        self.changed()
        return updated

    def release_hold(self, run_id: int, caller: Caller) -> Run:
        run = self.store.get(run_id)
        if run.state != RunState.HELD.value:
            raise InvalidInput(f"run {run_id} is {run.state}, not HELD")
        updated = self.store.transition(
            run_id,
            RunState.QUEUED,
            actor=caller.name,
            expect=(RunState.HELD,),
            note=f"released by {caller.name}",
            held_by=None,
        )
        assert updated is not None
        self.changed()
        return updated

    # --- rerun (hpcops/tracking) ---------------------------------------------------------------

    def rerun(
        self,
        source: int | str,
        overrides: dict[str, str],
        caller: Caller,
        check: Callable[[Spec], None] | None = None,
    ) -> Run:
        """Queue a run again from its record: an hpcops run id, or an MLflow run id (this
        daemon's, or any run on the tracking server that hpcops recorded). Same spec, same code
        commit, same params unless `overrides` change them; the two records are linked."""

        from hpcops.tracking.records import MLFLOW_RUN_ID_RE
        from hpcops.tracking.rerun import apply_overrides

        original: Run | None = None
        if isinstance(source, int):
            original = self.store.get(source)
        elif MLFLOW_RUN_ID_RE.fullmatch(source):
            original = self.store.find_by_mlflow_run(source)
        else:
            raise InvalidInput(
                f"{source!r} is neither an hpcops run id (a number) nor an MLflow run id "
                "(32 hex digits)"
            )
        tags: dict[str, str] = {}
        if original is not None:
            spec_yaml, mlflow_id = original.spec_yaml, original.mlflow_run_id
        else:
            assert isinstance(source, str)
            if self.tracker is None:
                raise InvalidInput("tracking is off (tracking.enabled: false): no MLflow records")
            spec_yaml, tags = self.tracker.recorded_spec(source)
            mlflow_id = source
        label = f"rerun of {source}"
        spec = parse_spec(json.dumps(apply_overrides(spec_yaml, overrides)), label)
        # The same code: the recorded spec names the full commit, and a dirty original's
        # snapshot is checked out again from the mirror; the data, read at that commit, is the
        # same version.
        if original is not None:
            shipment = Shipment(checkout=original.code_checkout, dirty=original.code_dirty)
        else:
            dirty = tags.get("hpcops.git.dirty") == "true"
            shipment = Shipment(checkout=tags.get("hpcops.git.snapshot"), dirty=dirty)
        spec, fields = self._pin(spec, shipment, label, caller)
        self.check_spec(spec, label)
        if check is not None:
            check(spec)  # the caller's own limits (a member's priority range), before queueing
        run = self._new_run(spec, caller, **fields)
        run.rerun_of_mlflow = mlflow_id
        run.rerun_of_run = original.id if original is not None else None
        [added] = self.store.add_runs([run], actor=caller.name)
        self.changed()
        if self.tracker is not None:
            self.tracker.wake.set()
        return added

    def why(self, run: Run) -> str:
        """One line: why the run is where it is."""
        state = RunState(run.state)
        if state is RunState.QUEUED:
            decision = self.last_decision
            if decision is None or run.id is None:
                return "just queued; the daemon is planning its release"
            retry_at = self._retry_after.get(run.id, 0.0)
            if retry_at > self.clock():
                return (
                    f"{run.reason or 'Slurm refused it for a limit'}; trying again in "
                    f"{retry_at - self.clock():.0f} s"
                )
            if run.id in decision.release:
                return "being released into Slurm now"
            if run.id not in decision.waiting:
                return "just queued; the daemon is planning its release"
            return decision.waiting[run.id]
        if state is RunState.HELD:
            return f"held by {'lead ' if run.held_by != run.owner else ''}{run.held_by}"
        if state is RunState.SUBMITTING:
            return "being submitted to Slurm"
        if state is RunState.STAGING:
            return (
                f"staging its data (Slurm job {run.staging_job_id}); its job "
                f"{run.slurm_job_id} starts when that succeeds"
            )
        if state is RunState.PENDING:
            return f"Slurm: {run.reason or 'pending'}"
        if state is RunState.RUNNING:
            return "running"
        return f"ended {state}" + (f": {run.reason}" if run.reason else "")

    def changed(self) -> None:
        self._generation += 1
        self._dirty = True
        self.wake.set()

    def _submit(self, run: Run) -> bool:
        """Submit one run; False when releasing should stop for this tick."""
        assert run.id is not None
        source = f"run {run.id}"
        token = secrets.token_hex(8)
        tracking = self._job_tracking(run)
        mlflow_env = tracking.env if tracking is not None else ()
        try:
            spec = parse_spec(run.spec_yaml, source)
            self._check_cluster_limits(spec, source)
            # Rendered before the claim: a template that broke since the run was queued fails the
            # run here rather than leaving it SUBMITTING.
            ctx = self._context(spec, run.id, token, mlflow_env, checkout=run.code_checkout)
            script = render_script(spec, ctx, self.config.template_dirs)
        except InvalidInput as exc:
            # The cluster or the lab's templates changed since the run was queued.
            self.store.transition(
                run.id,
                RunState.FAILED,
                actor=DAEMON,
                expect=(RunState.QUEUED,),
                note=str(exc),
                reason=str(exc),
                ended_at=self.clock(),
            )
            return True
        claimed = self.store.transition(
            run.id,
            RunState.SUBMITTING,
            actor=DAEMON,
            expect=(RunState.QUEUED,),
            note=f"attempt {run.attempt + 1}, token {token}",
            token=token,
            attempt=run.attempt + 1,
            claimed_at=self.clock(),
            # Set with the claim, in one transaction: the directory exists only for released runs.
            run_dir=str(self._run_dir(run.id)),
            # Where the job logs its MLflow data (a relay store), committed with the claim.
            **(tracking.fields if tracking is not None else {}),
        )
        if claimed is None:
            return True  # cancelled or changed by a user since it was read
        if claimed.cancel_requested_by:
            self._cancel_unsubmitted(claimed, "before sbatch")
            return True
        rundir = RunDir(Path(claimed.run_dir))
        # A TransportError here leaves the run SUBMITTING with no job: the check by token
        # queues it again after submit_grace_s.
        self.files.make_dir(rundir.path)
        staged = [rundir.path / STAGING_MARKER, rundir.path / STAGING_PROGRESS]
        self.files.remove_files([*rundir.markers, *staged])
        self.files.write_file(rundir.spec, claimed.spec_yaml)
        if claimed.data_json:
            self._write_staging_plan(spec, claimed, ctx)
        self.files.write_file(rundir.script, script)
        self._fault_point("before_sbatch")
        staging_job: str | None = None
        try:
            if ctx.staging is not None and not ctx.staging.inline:
                # A staging job of its own first; the run's job then waits for it (afterok).
                # A crash between the two leaves a staging job whose token ends in ":stage":
                # the check by token never takes it for the run's job, so the run is submitted
                # again after submit_grace_s, and the stray stager only warms the cache.
                staging_job = self._submit_staging_job(spec, ctx)
                self._fault_point("after_staging_sbatch")
                ctx = dataclasses.replace(ctx, after=staging_job)
                script = render_script(spec, ctx, self.config.template_dirs)
                self.files.write_file(rundir.script, script)
            job_id = self.slurm.submit(PurePosixPath(rundir.script))
        except SlurmUnreachable:
            # The request may have reached slurmctld: the run stays SUBMITTING and is settled by
            # token once Slurm answers again.
            raise
        except SlurmLimited as exc:
            self._drop_staging_job(staging_job)
            if self.store.get(run.id).cancel_requested_by:
                self._cancel_unsubmitted(self.store.get(run.id), "after Slurm refused it")
                return True
            self.store.transition(
                run.id,
                RunState.QUEUED,
                actor=DAEMON,
                expect=(RunState.SUBMITTING,),
                token=None,
                note=f"waiting: {exc.stderr.strip() or exc.message}",
                reason=f"Slurm limit: {exc.stderr.strip() or exc.message}",
            )
            # Each try costs an sbatch RPC: this run waits (doubling, up to 10 min) while the
            # others may still go.
            refusals = self._limit_refusals.get(run.id, 0) + 1
            self._limit_refusals[run.id] = refusals
            delay = backoff_s(refusals, first_s=_LIMIT_RETRY_S, max_s=600.0)
            self._retry_after[run.id] = self.clock() + delay
            return False
        except SlurmRejected as exc:
            self._drop_staging_job(staging_job)
            self.store.transition(
                run.id,
                RunState.FAILED,
                actor=DAEMON,
                expect=(RunState.SUBMITTING,),
                ended_at=self.clock(),
                note=f"Slurm refused the job: {exc.stderr.strip()}",
                reason=f"Slurm refused the job: {exc.stderr.strip()}",
            )
            return True
        self._fault_point("after_sbatch")
        self.store.transition(
            run.id,
            RunState.STAGING if staging_job is not None else RunState.PENDING,
            actor=DAEMON,
            expect=(RunState.SUBMITTING,),
            note=f"Slurm job {job_id}"
            + (f" after staging job {staging_job}" if staging_job is not None else ""),
            slurm_job_id=job_id,
            staging_job_id=staging_job,
            submitted_at=self.clock(),
        )
        return True

    def _submit_staging_job(self, spec: Spec, ctx: JobContext) -> str:
        cfg = self.config.data.staging_job
        job = StagingJob(
            partition=cfg.partition,
            qos=cfg.qos,
            cpus=cfg.cpus,
            mem_mb=parse_mem_mb(cfg.mem),
            time_min=max(1, parse_slurm_time(cfg.time) // 60),
        )
        path = ctx.run_dir.path / STAGING_SCRIPT
        self.files.write_file(path, render_staging_script(spec, ctx, job))
        return self.slurm.submit(PurePosixPath(path))

    def _drop_staging_job(self, staging_job: str | None) -> None:
        """The run's job was refused after its staging job went in: the stager is not needed."""
        if staging_job is None:
            return
        try:
            self.slurm.cancel([staging_job])
        except SlurmError as exc:
            log.warning("cannot cancel staging job %s: %s", staging_job, exc)

    def _run_dir(self, run_id: int) -> Path:
        return run_dir_path(self.run_root, run_id)

    def _cancel_unsubmitted(self, run: Run, when: str) -> None:
        """A cancel that arrived while the run was SUBMITTING, honoured before any job exists."""
        assert run.id is not None
        self.store.transition(
            run.id,
            RunState.CANCELLED,
            actor=DAEMON,
            expect=(RunState.SUBMITTING,),
            note=f"cancelled {when}, as {run.cancel_requested_by} asked",
            ended_at=self.clock(),
        )
        self.changed()

    def _context(
        self,
        spec: Spec,
        run_id: int,
        token: str,
        mlflow_env: tuple[tuple[str, str], ...] = (),
        *,
        checkout: str | None = None,
    ) -> JobContext:
        return build_job_context(
            spec,
            self.config,
            self.placement,
            run_id,
            token,
            mlflow_env=mlflow_env,
            checkout=checkout,
        )

    def _job_tracking(self, run: Run) -> JobTracking | None:
        """The MLflow environment for this submission. A relay store that cannot be made (say,
        scratch is full) must not stop the job: it runs untracked, and the record still gets
        hpcops' own part (creation, Slurm's accounting, the logs)."""
        if self.tracker is None:
            return None
        assert run.id is not None
        try:
            return self.tracker.job_tracking(run, self._run_dir(run.id))
        except Exception:
            log.exception("run %s: no MLflow environment for its job; it runs untracked", run.id)
            return None

    # --- Slurm health -----------------------------------------------------------------------

    def _slurm_callable(self) -> bool:
        return self.health.reachable or self.clock() >= self.health.retry_at

    def _slurm_failed(self, exc: SlurmUnreachable) -> None:
        h = self.health
        h.failures += 1
        delay = backoff_s(h.failures, first_s=2.0, max_s=_BACKOFF_MAX_S)
        h.retry_at = self.clock() + delay
        h.last_error = exc.message.splitlines()[0]
        if h.reachable:
            h.since = self.clock()
            log.warning("Slurm unreachable, retrying with back-off: %s", exc)
        h.reachable = False

    def _slurm_ok(self) -> None:
        h = self.health
        if not h.reachable:
            log.info("Slurm reachable again after %d failed attempts", h.failures)
            self._next_squeue_at = 0.0  # catch up on everything that happened meanwhile
        h.reachable, h.failures, h.since, h.last_error = True, 0, None, ""

    def _fault_point(self, name: str) -> None:
        if self.fault == name:
            log.warning("fault point %s: killing the daemon with SIGKILL (HPCOPS_FAULT)", name)
            os.kill(os.getpid(), signal.SIGKILL)


def _code_problem(source: str, location: str, message: str) -> SpecError:
    return SpecError(source, [FieldProblem(location, message)])


def _is_placeholder(record: AccountingRecord) -> bool:
    """For about a second after a job starts, sacct shows a row named `allocation` with no
    comment (Slurm 22.05, tests/fixtures/slurm/sacct_first_second.txt); our jobs always carry a
    comment once they have ended, so such a row is not the job's final record yet."""
    return record.name == "allocation" and record.token is None


def _exit_code(record: AccountingRecord, marker: int | None) -> int | None:
    """sacct reduces exit codes modulo 128 (`exit 143` shows as 15:0, measured on 22.05); the
    script's own exit marker has the real one. Use it when the two agree modulo 128."""
    if marker is None or record.exit_code is None or record.signal:
        return record.exit_code
    return marker if marker % 128 == record.exit_code % 128 else record.exit_code


def run_state(run: Run) -> RunState:
    return RunState(run.state)


def _drop_none(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


def _format_s(seconds: int) -> str:
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}-{text}" if days else text
