"""The script of one Slurm job array: the points of a sweep released together, in one sbatch.

Each point keeps its own script, rendered from the lab's template exactly as a single run's is
and written into the point's own run directory (its markers, params, MLflow run and code
checkout are the point's). The array's script only carries the #SBATCH header the points share
and sends each task to its point's script by SLURM_ARRAY_TASK_ID, so a lab template knows
nothing of arrays and `hpcops render` of a point shows what the point runs.

Output: sbatch opens the array's --output/--error itself, before the script runs, and the path
can only vary by the task id (%a), not by the point's run directory. So Slurm writes to
<array dir>/<task>.out|.err, and the script's first act is to send its own output to the
point's run directory. What lands in the array's files is what Slurm itself says about a task
(slurmstepd's "CANCELLED ... DUE TO TIME LIMIT") and nothing of the job's.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Final

from hpcops.render import JobContext, directive_line, sbatch_directives
from hpcops.rundir import RunDir
from hpcops.spec import Spec

ARRAY_SCRIPT: Final = "array.sbatch"
# sbatch expands %a to the task id; the rest of the path obeys render.py's path rule.
_ARRAY_OUTPUT_RE: Final = re.compile(r"/[A-Za-z0-9._/+-]*/%a\.(?:out|err)")
_MAX_TASK = 10**7


@dataclass(frozen=True)
class ArrayTask:
    """One task of the array: its SLURM_ARRAY_TASK_ID and the point's run directory."""

    task: int
    run_dir: RunDir

    def __post_init__(self) -> None:
        if not 0 <= self.task < _MAX_TASK:
            raise ValueError(f"ArrayTask.task {self.task} is not a Slurm array index")


def array_output(array_dir: PurePosixPath, stream: str) -> str:
    """The --output/--error pattern of an array: one file per task in the array's directory."""
    value = f"{array_dir}/%a.{stream}"
    if not _ARRAY_OUTPUT_RE.fullmatch(value):
        raise ValueError(f"{value!r} cannot go on an #SBATCH line (letters, digits, . _ - + /)")
    return value


def render_array_script(
    spec: Spec, ctx: JobContext, tasks: Sequence[ArrayTask], array_dir: PurePosixPath
) -> str:
    """The array's script for points that share `spec`'s #SBATCH header (same resources).

    `ctx` is any one point's context (the token is the array's, shared by every point); the
    header is that point's, with the array's output files. Raises SpecError or ConfigError as
    render.sbatch_directives does for a bad value.
    """
    if not tasks:
        raise ValueError("an array needs at least one task")
    if len({t.task for t in tasks}) != len(tasks):
        raise ValueError("an array's task ids must be unique")
    directives = [
        (option, array_output(array_dir, "out" if option == "output" else "err"))
        if option in ("output", "error")
        else (option, value)
        for option, value in sbatch_directives(spec, ctx)
    ]
    lines = ["#!/bin/bash", *(directive_line(o, v) for o, v in directives)]
    lines += [
        "",
        f"# hpcops: {len(tasks)} points of a sweep of lab {ctx.lab}, one Slurm array. Each task",
        "# runs its point's own script from the point's run directory, output included.",
        'case "${SLURM_ARRAY_TASK_ID:-}" in',
    ]
    for t in sorted(tasks, key=lambda t: t.task):
        rd = t.run_dir
        lines += [
            f"{t.task})",
            f"    hpcops_out={shlex.quote(str(rd.stdout))}",
            f"    hpcops_err={shlex.quote(str(rd.stderr))}",
            f"    hpcops_script={shlex.quote(str(rd.script))} ;;",
        ]
    lines += [
        '*) echo "hpcops: array task ${SLURM_ARRAY_TASK_ID:-?} is not a point of this array" >&2',
        "   exit 1 ;;",
        "esac",
        'exec >>"$hpcops_out" 2>>"$hpcops_err" || exit 1',
        'exec /bin/bash -- "$hpcops_script"',
        "",
    ]
    return "\n".join(lines)
