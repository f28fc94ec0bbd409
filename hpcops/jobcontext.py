"""The one builder of a submission's JobContext, for the daemon's sbatch and for `hpcops render`.

A second builder in the CLI once drifted from the daemon's (it left out the code checkout, so
`hpcops render` printed a script that cd'd into a checkout nothing made). Both now call
`build_job_context`, a pure function of the spec, the config and the run's identity.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from hpcops.code.mirror import mirror_path
from hpcops.config import Config
from hpcops.render import CodeCheckout, JobContext, StagingStep
from hpcops.rundir import STAGING_PLAN, RunDir
from hpcops.spec import FULL_COMMIT_RE, Spec

# A commit any full id renders alike with, for a script shown before its commit is pinned.
PLACEHOLDER_COMMIT = "0" * 40


def run_label(run_id: int) -> str:
    """How a run is named to Slurm and in job environments: r-000042."""
    return f"r-{run_id:06d}"


def run_dir_path(run_root: Path, run_id: int) -> Path:
    """The one naming of a run's directory under the lab's run root."""
    return run_root / f"run-{run_id:06d}"


def array_dir_path(run_root: Path, token: str) -> Path:
    """Where one job array's script and Slurm's own per-task output go (engine/arrays.py)."""
    return run_root / "arrays" / token


@dataclass(frozen=True)
class Placement:
    """Where the daemon keeps what a job needs, as this config places it in this home."""

    run_root: Path
    mirror_objects: str  # the code mirror's object directory (jobs use it as an alternate)
    staging_python: str  # the interpreter that runs `python -m hpcops.data.stage`

    @classmethod
    def of(cls, config: Config, home: Path) -> Placement:
        return cls(
            run_root=config.run_root_in(home),
            mirror_objects=str(mirror_path(config.code_root_in(home)) / "objects"),
            staging_python=str(config.data.python or sys.executable),
        )


def build_job_context(
    spec: Spec,
    config: Config,
    placement: Placement,
    run_id: int,
    token: str,
    *,
    mlflow_env: tuple[tuple[str, str], ...] = (),
    checkout: str | None = None,
    environ: Mapping[str, str] | None = None,
    attempt: int = 1,
    pipeline_env: tuple[tuple[str, str], ...] = (),
) -> JobContext:
    """Everything one submission attempt of `spec` needs that the spec does not say.

    `checkout` is the pinned commit; before pinning (submit-time checks, `hpcops render`) a
    spec's full commit id is used as written, and anything else renders as a placeholder id.
    `environ` is the daemon's environment, of which the job gets what config.jobs.env_passthrough
    lists; None reads this process's own. `attempt` is which attempt of the run the job is,
    from 1 (HPCOPS_ATTEMPT): 1 + the attempts the run has had. `pipeline_env`: a pipeline
    step's variables (engine/pipelines.py's `job_env`).
    """
    code = None
    if spec.code is not None:
        commit = checkout or (
            spec.code.commit if FULL_COMMIT_RE.fullmatch(spec.code.commit) else PLACEHOLDER_COMMIT
        )
        code = CodeCheckout(placement.mirror_objects, commit)
    run_dir = run_dir_path(placement.run_root, run_id)
    staging = None
    if spec.data:
        inline = (spec.staging or config.data.staging) == "inline"
        staging = StagingStep(placement.staging_python, str(run_dir / STAGING_PLAN), inline=inline)
    return JobContext(
        run_id=run_label(run_id),
        token=token,
        run_dir=RunDir(run_dir),
        account=config.slurm.account,
        default_partition=config.slurm.default_partition,
        lab=config.lab,
        code=code,
        staging=staging,
        mlflow_env=mlflow_env,
        passthrough_env=config.jobs.passthrough(os.environ if environ is None else environ),
        attempt=attempt,
        pipeline_env=pipeline_env,
    )
