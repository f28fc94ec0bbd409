"""A sweep's array script: the points' shared header, and a dispatch that sends each task to its
point's own script with the point's own output files (run for real with bash)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path, PurePosixPath

import pytest

from hpcops import policy
from hpcops.arrayscript import ArrayTask, array_output, render_array_script
from hpcops.engine.arrays import array_throttle
from hpcops.render import JobContext
from hpcops.rundir import RunDir
from hpcops.spec import parse_spec

SPEC = parse_spec(
    "name: lr\nexperiment: e\ncommand: python train.py\nresources: {gpus: 1, mem: 2G}\n", "lr.yaml"
)


def _ctx(run_dir: Path) -> JobContext:
    return JobContext(
        run_id="r-000007",
        token="ab" * 8,
        run_dir=RunDir(run_dir),
        account="lab",
        default_partition="gpu",
        lab="vision",
    )


def _tasks(root: Path, indices: list[int]) -> list[ArrayTask]:
    return [ArrayTask(i, RunDir(root / f"run-{100 + i:06d}")) for i in indices]


def test_the_header_is_the_points_with_the_arrays_output_files(tmp_path: Path) -> None:
    array_dir = PurePosixPath("/scratch/runs/arrays/abab")
    script = render_array_script(
        SPEC, _ctx(tmp_path / "run-000007"), _tasks(tmp_path, [0, 3]), array_dir
    )
    header = [line for line in script.splitlines() if line.startswith("#SBATCH")]
    assert "#SBATCH --output=/scratch/runs/arrays/abab/%a.out" in header
    assert "#SBATCH --error=/scratch/runs/arrays/abab/%a.err" in header
    assert "#SBATCH --comment=hpcops:abababababababab" in header
    assert "#SBATCH --gres=gpu:1" in header and "#SBATCH --mem=2048M" in header
    assert "#SBATCH --export=NONE" in header
    # sbatch reads #SBATCH lines up to the first command: all of them come first.
    first_command = next(i for i, line in enumerate(script.splitlines()) if line.startswith("case"))
    assert all(script.splitlines().index(h) < first_command for h in header)


@pytest.mark.parametrize("task", [0, 3])
def test_each_task_runs_its_points_script_with_the_points_output(tmp_path: Path, task: int) -> None:
    tasks = _tasks(tmp_path, [0, 3])
    for t in tasks:
        t.run_dir.path.mkdir()
        t.run_dir.script.write_text(
            f'#!/bin/bash\necho "point {t.task} out"\necho "point {t.task} err" >&2\nexit 7\n'
        )
    array = tmp_path / "array.sbatch"
    array.write_text(
        render_array_script(SPEC, _ctx(tmp_path), tasks, PurePosixPath(tmp_path / "arrays"))
    )
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": str(task)}
    done = subprocess.run(
        ["bash", str(array)], env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 7  # the point script's own status is the task's
    assert done.stdout == "" and done.stderr == ""  # all of it went to the point's files
    mine = next(t for t in tasks if t.task == task)
    assert mine.run_dir.stdout.read_text() == f"point {task} out\n"
    assert mine.run_dir.stderr.read_text() == f"point {task} err\n"
    other = next(t for t in tasks if t.task != task)
    assert not other.run_dir.stdout.exists()


def test_a_task_that_is_no_point_of_the_array_fails_loudly(tmp_path: Path) -> None:
    array = tmp_path / "array.sbatch"
    array.write_text(
        render_array_script(SPEC, _ctx(tmp_path), _tasks(tmp_path, [1]), PurePosixPath(tmp_path))
    )
    env = {**os.environ, "SLURM_ARRAY_TASK_ID": "2"}
    done = subprocess.run(["bash", str(array)], env=env, capture_output=True, text=True)
    assert done.returncode == 1
    assert "array task 2 is not a point of this array" in done.stderr


def test_run_directories_are_quoted_in_the_dispatch(tmp_path: Path) -> None:
    odd = tmp_path / "a dir;touch x"
    script = render_array_script(
        SPEC, _ctx(tmp_path), [ArrayTask(0, RunDir(odd))], PurePosixPath("/runs/arrays/t")
    )
    assert f"hpcops_out='{odd}/stdout.log'" in script


def test_bad_arrays_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one task"):
        render_array_script(SPEC, _ctx(tmp_path), [], PurePosixPath("/runs/a"))
    with pytest.raises(ValueError, match="unique"):
        render_array_script(SPEC, _ctx(tmp_path), _tasks(tmp_path, [1, 1]), PurePosixPath("/a"))
    with pytest.raises(ValueError, match="not a Slurm array index"):
        ArrayTask(-1, RunDir(tmp_path))
    with pytest.raises(ValueError, match="cannot go on an #SBATCH line"):
        array_output(PurePosixPath("/runs/with space"), "out")


def test_the_throttle_is_the_tightest_limit_that_applies_to_a_point() -> None:
    unlimited = policy.Limits()
    assert array_throttle(10, 1, 0, [unlimited], None) is None  # nothing to tell Slurm
    assert array_throttle(10, 1, 0, [policy.Limits(gpus=2)], None) is None  # no GPU asked
    assert array_throttle(10, 1, 0, [unlimited], 4) == 4
    # A lab GPU quota of 2 and one GPU per point: Slurm itself runs at most 2 at once.
    assert array_throttle(10, 1, 1, [policy.Limits(gpus=2), unlimited], None) == 2
    assert array_throttle(10, 4, 0, [policy.Limits(cpus=10)], None) == 2
    assert array_throttle(10, 1, 0, [policy.Limits(jobs=3)], 5) == 3
    # Never 0: a limit smaller than one point still lets Slurm run the array, one at a time
    # (the policy, which released the points, already found room for them).
    assert array_throttle(3, 8, 0, [policy.Limits(cpus=4)], None) == 1
