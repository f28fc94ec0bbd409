"""Accepting specs: what the cluster and the config say about them, and pinning each moving
reference (a code branch, a data rev) to what a run of it will use, so the run can be repeated.

A spec arrives parsed (the API parsed it once); intake resolves its code commit through the lab's
code mirror, reads its data versions at that commit, checks it against the cluster's partitions
and renders it once, then stores it as QUEUED in its canonical YAML.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from collections.abc import Sequence
from typing import Any

from hpcops.access import Caller
from hpcops.code.git import GitError
from hpcops.code.mirror import MirrorError, Shipment
from hpcops.data.versions import DataVersion, DataVersionError, read_version
from hpcops.engine.state import LoopState, Parts
from hpcops.errors import FieldProblem, InvalidInput, SlurmError, SpecError
from hpcops.jobcontext import build_job_context
from hpcops.render import JobContext, render_script
from hpcops.retries import RetryRules
from hpcops.slurm.parse import Partition
from hpcops.spec import (
    FULL_COMMIT_RE,
    Code,
    Spec,
    pin_sweep_seed,
    point_specs,
    spec_to_yaml,
    sweep_points,
)
from hpcops.states import RunState
from hpcops.store import Run, Sweep

log = logging.getLogger(__name__)

# A random search without a seed gets one at submission, recorded in the stored spec.
_SEED_BOUND = 2**31


def partitions(p: Parts, s: LoopState) -> dict[str, Partition]:
    """Partition limits, cached; the old ones (or none) while Slurm does not answer.

    Called from the API thread too: while Slurm is known to be down it asks nothing, so a
    submission is not held up by a command that takes 9 s to fail (Slurm 22.05)."""
    with s.lock:
        fresh = (
            s.partitions_at is not None
            and p.clock() - s.partitions_at < p.config.slurm.partition_cache_s
        )
        if fresh or not s.health.reachable:
            return dict(s.partitions)
        try:
            s.partitions = p.slurm.partitions()
            s.partitions_at = p.clock()
        except SlurmError as exc:
            log.warning("cannot read partition limits: %s", exc)
        return dict(s.partitions)


def check_spec(p: Parts, s: LoopState, spec: Spec, source: str) -> None:
    """What only the cluster and the config can say about a spec, before it is queued; for a
    sweep, about each of its points' headers (points differ only where they set resources)."""
    if spec.sweep is not None:
        _point_specs(p, s, pin_sweep_seed(spec, 0), source)
        return
    check_cluster_limits(p, s, spec, source)
    # Render once now so an unknown template or a bad directive is the submitter's error today,
    # not a failed run tomorrow.
    render_script(spec, job_context(p, spec, run_id=0, token="0" * 16), p.config.template_dirs)


def check_cluster_limits(p: Parts, s: LoopState, spec: Spec, source: str) -> None:
    partition_name = spec.resources.partition or p.config.slurm.default_partition
    known = partitions(p, s)
    if not known or partition_name is None:
        return
    part = known.get(partition_name)
    if part is None:
        raise _problem(
            source,
            "resources.partition",
            f"no partition {partition_name!r} on this cluster; it has: {', '.join(sorted(known))}",
        )
    if part.max_time_s is not None and spec.resources.time_limit_s > part.max_time_s:
        raise _problem(
            source,
            "resources.time",
            f"{spec.resources.time} is over the time limit of partition {partition_name!r} "
            f"({format_s(part.max_time_s)}); Slurm would accept it and leave it pending forever "
            "(PartitionTimeLimit)",
        )


def job_context(
    p: Parts,
    spec: Spec,
    run_id: int,
    token: str,
    mlflow_env: tuple[tuple[str, str], ...] = (),
    *,
    checkout: str | None = None,
    attempt: int = 1,
    pipeline_env: tuple[tuple[str, str], ...] = (),
) -> JobContext:
    """A submission's JobContext; `attempt` is the run's attempt it submits (HPCOPS_ATTEMPT),
    `pipeline_env` a pipeline step's variables (pipelines.job_env)."""
    return build_job_context(
        spec,
        p.config,
        p.placement,
        run_id,
        token,
        mlflow_env=mlflow_env,
        checkout=checkout,
        attempt=attempt,
        pipeline_env=pipeline_env,
    )


def enqueue(
    p: Parts,
    s: LoopState,
    specs: Sequence[tuple[Spec, str]],
    caller: Caller,
    shipments: Sequence[Shipment | None] | None = None,
) -> list[Run]:
    """Queue specs given as (spec, source name): all of them, or none.

    `shipments` say, per spec, what the submitter's client did about its code (see hpcops.code);
    a spec's code commit must be in the lab's mirror once its shipment is in."""
    singles: list[Run] = []
    sweeps: list[tuple[Sweep, list[Run]]] = []
    for i, (spec, source) in enumerate(specs):
        shipment = shipments[i] if shipments else None
        spec, fields = pin(p, spec, shipment, source, caller)
        if spec.sweep is not None:
            sweeps.append(build_sweep(p, s, spec, fields, source, caller))
            continue
        check_spec(p, s, spec, source)
        singles.append(new_run(p, spec, caller, **fields))
    runs = p.store.add_runs(singles, actor=caller.name, sweeps=sweeps)
    s.changed()
    if p.tracker is not None:
        p.tracker.wake.set()  # create the records now, so release need not wait
    return runs


def build_sweep(
    p: Parts,
    s: LoopState,
    spec: Spec,
    fields: dict[str, Any],
    source: str,
    caller: Caller,
) -> tuple[Sweep, list[Run]]:
    """A pinned sweep spec's Sweep row and one run per point, checked, not yet stored.

    The spec is pinned once (code commit, data versions, and here a random search's seed), and
    every point's spec is derived from the pinned one: all points run the same code on the same
    data and differ only in their values. A point's run stores the point's own spec, so the
    engine follows it like any run; only its release differs (engine/arrays.py).
    """
    spec = pin_sweep_seed(spec, secrets.randbelow(_SEED_BOUND))
    sweep = spec.sweep
    assert sweep is not None
    points = sweep_points(spec)
    runs: list[Run] = []
    for index, one in enumerate(_point_specs(p, s, spec, source)):
        run = new_run(p, one, caller, **fields)
        run.name = point_name(spec.name, index)
        run.sweep_index = index
        runs.append(run)
    objective = sweep.objective
    row = Sweep(
        name=spec.name,
        experiment=spec.experiment,
        owner=caller.name,
        owner_uid=caller.uid,
        spec_yaml=spec_to_yaml(spec),
        kind=sweep.kind,
        n_points=len(points),
        points_json=json.dumps(points),
        objective_metric=objective.metric if objective is not None else None,
        objective_mode=objective.mode if objective is not None else None,
        max_parallel=sweep.max_parallel,
        created_at=p.clock(),
        updated_at=p.clock(),
    )
    return row, runs


def _point_specs(p: Parts, s: LoopState, spec: Spec, source: str) -> list[Spec]:
    """Each point's own spec, checked against the cluster and rendered once per distinct
    header: points differ there only where they set resources, so a 1,000-point grid over
    params renders once."""
    specs = point_specs(spec, source=source)
    checked: set[str] = set()
    for index, one in enumerate(specs):
        header = one.resources.model_dump_json()
        if header not in checked:
            check_spec(p, s, one, f"{source}, point {index}")
            checked.add(header)
    return specs


def point_name(sweep_name: str, index: int) -> str:
    """How a point's run is named to people: resnet-lr[3] (Slurm gets the sweep's name)."""
    return f"{sweep_name}[{index}]"


def prepare_run(p: Parts, s: LoopState, spec: Spec, source: str, caller: Caller) -> Run:
    """A run of the spec for `caller`, checked as `enqueue` checks it, not yet stored: a
    schedule's firing stores it together with its firing record (scheduling/service.py)."""
    if spec.sweep is not None:
        raise _problem(
            source,
            "sweep",
            "a schedule fires a spec without a sweep: block for now; queue the sweep with "
            "`hpcops submit`",
        )
    spec, fields = pin(p, spec, None, source, caller)
    check_spec(p, s, spec, source)
    return new_run(p, spec, caller, **fields)


def current_data(p: Parts, spec: Spec, source: str, caller: Caller) -> list[DataVersion]:
    """The data versions a run of the spec queued now would stage: its moving references (code
    branch, data revs) resolved through the mirror exactly as `prepare_run` resolves them, the
    .dvc files read; nothing queued, no data moved. An on-data-change schedule's check. Each
    commit it sees keeps a ref in the mirror, as a submission's does."""
    _, fields = pin(p, spec, None, source, caller)
    return [DataVersion.from_json(item) for item in json.loads(fields.get("data_json", "[]"))]


def new_run(p: Parts, spec: Spec, caller: Caller, **code_fields: Any) -> Run:
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
        partition=spec.resources.partition or p.config.slurm.default_partition,
        gpus=spec.resources.gpus * spec.resources.nodes,
        cpus=spec.resources.cpus_per_task * spec.resources.ntasks,
        max_attempts=RetryRules.of(spec).max_attempts,
        created_at=p.clock(),
        updated_at=p.clock(),
    )


def pin(
    p: Parts, spec: Spec, shipment: Shipment | None, source: str, caller: Caller
) -> tuple[Spec, dict[str, Any]]:
    """The spec with every moving reference resolved (code commit, data revs), and the run's
    code_* and data_json fields: what a run records so it can be run again."""
    spec, fields = _pin_code(p, spec, shipment, source, caller)
    spec, data_fields = _pin_data(p, spec, fields, source)
    return spec, {**fields, **data_fields}


def _pin_code(
    p: Parts, spec: Spec, shipment: Shipment | None, source: str, caller: Caller
) -> tuple[Spec, dict[str, Any]]:
    """The spec with its code commit resolved, and the run's code_* fields.

    Takes in the submitter's bundle, or fetches a repository URL, into the mirror; refuses a
    commit the mirror does not hold, since the job could not check it out."""
    shipment = shipment or Shipment()
    mirror = p.code_mirror
    if p.config.slurm.transport == "ssh" and (spec.code is not None or spec.data):
        # The mirror and the data cache live beside the daemon; jobs on the cluster could not
        # read them. Refused now rather than failing every job later.
        raise _problem(
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
            commit = _fetch(p, code.repo, code.commit)
            checkout = commit
        elif not FULL_COMMIT_RE.fullmatch(code.commit) and not shipment.bundle:
            # A branch of a repository on the cluster's disk (a schedule's firing, or the API):
            # the daemon fetches it itself, so the run gets the commit current now.
            commit = _fetch_local(p, code.repo, code.commit, source)
            checkout = commit
        else:
            if not FULL_COMMIT_RE.fullmatch(code.commit):
                raise _problem(
                    source, "code.commit", f"must be a full commit id; got {code.commit!r}"
                )
            commit = code.commit
            checkout = shipment.checkout or commit
            if shipment.bundle:
                mirror.receive_bundle(shipment.bundle, caller.uid, checkout)
            _check_checkout(p, commit, checkout, shipment.dirty, source)
        mirror.keep(checkout)
    except (MirrorError, GitError) as exc:
        raise _problem(source, "code", str(exc)) from None
    pinned = spec.model_copy(update={"code": Code(repo=code.repo, commit=commit)})
    fields = {
        "code_repo": code.repo,
        "code_commit": commit,
        "code_checkout": checkout,
        "code_dirty": shipment.dirty,
    }
    return pinned, fields


def _fetch_local(p: Parts, repo: str, rev: str, source: str) -> str:
    try:
        return p.code_mirror.fetch_url(repo, rev)
    except MirrorError as exc:
        raise _problem(
            source,
            "code.commit",
            f"{rev!r} must be a full commit id, or {repo} a repository the daemon can read "
            f"(`hpcops submit` resolves branches on your machine): {exc}",
        ) from None


def _fetch(p: Parts, repo: str, rev: str) -> str:
    """`rev` of a repository the daemon fetches; no network when it is a full commit id the
    mirror holds already (a rerun, or a schedule pinned to a commit)."""
    if FULL_COMMIT_RE.fullmatch(rev) and p.code_mirror.have([rev]):
        p.code_mirror.keep(rev)
        return rev
    return p.code_mirror.fetch_url(repo, rev)


def _pin_data(
    p: Parts, spec: Spec, code: dict[str, Any], source: str
) -> tuple[Spec, dict[str, Any]]:
    """The data version of each target, read from its .dvc file at the pinned commit; a target
    of another repository gets that commit as its rev in the stored spec."""
    if not spec.data:
        return spec, {}
    versions = []
    targets = []
    for i, target in enumerate(spec.data):
        try:
            if target.repo is not None:
                commit = _fetch(p, target.repo, target.rev or "HEAD")
                target = target.model_copy(update={"rev": commit})
            else:
                commit = code["code_checkout"]
            md5, size, nfiles = read_version(str(p.code_mirror.git_dir), commit, target.path)
        except (MirrorError, DataVersionError, GitError) as exc:
            raise _problem(source, f"data[{i}]", str(exc)) from None
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


def _check_checkout(p: Parts, commit: str, checkout: str, dirty: bool, source: str) -> None:
    mirror = p.code_mirror
    if not FULL_COMMIT_RE.fullmatch(checkout):
        raise _problem(source, "code", f"checkout {checkout!r} is not a full commit id")
    missing = {commit, checkout} - mirror.have({commit, checkout})
    if missing:
        raise _problem(
            source,
            "code.commit",
            f"commit {sorted(missing)[0]} is not in the lab's code mirror; `hpcops submit` "
            "ships it from your repository",
        )
    if dirty != (checkout != commit) or (dirty and mirror.parent_of(checkout) != commit):
        raise _problem(source, "code", f"a dirty snapshot must be a commit on top of {commit}")


def _problem(source: str, location: str, message: str) -> SpecError:
    return SpecError(source, [FieldProblem(location, message)])


def format_s(seconds: int) -> str:
    """Seconds as Slurm writes a time limit: [D-]HH:MM:SS."""
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{hours:02d}:{minutes:02d}:{secs:02d}"
    return f"{days}-{text}" if days else text
