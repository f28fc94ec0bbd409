"""Sweeps on the real cluster: specs with a `sweep:` block submitted by lab members through the
CLI, their points read back from `hpcops show s<N> --json`, and Slurm's own view of the array
(sacct, squeue) read with Slurm's commands.

The JSON shapes a sweep is read from are in this module only (`sweep_ref`, `points`, `counts`,
`find_sweep`), so the tests say what must hold, not where a key is.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conftest import sacct_rows_named
from lab import SERVICE, Lab

ENDED = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "UNKNOWN"}
_TASK = re.compile(r"^(\d+)_(\d+)$")


@dataclass(frozen=True)
class Point:
    """One point of a sweep as `hpcops show s<N> --json` lists it."""

    index: int
    run: int
    state: str
    params: dict[str, Any]
    slurm_job_id: str | None
    objective: float | None


def sweep_spec(
    lab: Lab, owner: str, name: str, command: str, sweep: dict[str, Any], **extra: Any
) -> str:
    """A sweep spec file the owner can read; its name (the array's job name) is unique."""
    return lab.spec(owner, name, command, sweep=sweep, **extra)


def spec_name(path: str) -> str:
    return Path(path).stem


def sweep_ref(submitted: dict[str, Any]) -> str:
    """The `s<N>` id in what `hpcops submit SWEEP --json` printed."""
    assert submitted["type"] == "sweep", submitted
    ref = submitted["id"]
    assert isinstance(ref, str) and ref == f"s{submitted['sweep_id']}", submitted
    return ref


def submit_sweep(lab: Lab, owner: str, path: str) -> str:
    return sweep_ref(lab.json(owner, "submit", path))


def show(lab: Lab, user: str, ref: str) -> dict[str, Any]:
    shown: dict[str, Any] = lab.json(user, "show", ref)
    return shown


def points(shown: dict[str, Any]) -> list[Point]:
    """The sweep's points, by index (show sorts them by the objective when there is one)."""
    found = [
        Point(
            index=p["index"],
            run=p["run_id"],
            state=p["state"],
            params=p["params"],
            slurm_job_id=p["slurm_job_id"],
            objective=p["objective"],
        )
        for p in shown["points"]
    ]
    return sorted(found, key=lambda p: p.index)


def counts(shown: dict[str, Any]) -> dict[str, int]:
    """How many of the sweep's points are in each state, as show or ls reports it."""
    return {state: n for state, n in shown["counts"].items() if n}


def sweep_row(lab: Lab, ref: str) -> dict[str, Any]:
    """The sweep's one row in `hpcops ls --all --json`."""
    rows = [r for r in lab.json(SERVICE, "ls", "--all") if r["type"] == "sweep" and r["id"] == ref]
    assert len(rows) == 1, f"one row for {ref} in ls: {rows}"
    row: dict[str, Any] = rows[0]
    return row


def find_sweep(lab: Lab, name: str) -> str:
    """The `s<N>` of the sweep whose spec is named `name`, from `hpcops ls --all --json`."""
    rows = lab.json(SERVICE, "ls", "--all")
    found = [r["id"] for r in rows if r["type"] == "sweep" and r["name"] == name]
    assert len(found) == 1, f"one sweep named {name} in ls, got {found}: {rows}"
    return str(found[0])


def wait_points(
    lab: Lab, user: str, ref: str, predicate: Any, timeout: float, what: str
) -> list[Point]:
    """Poll `show s<N>` until predicate(points) holds; the points then."""
    deadline = time.monotonic() + timeout
    while True:
        current = points(show(lab, user, ref))
        if predicate(current):
            return current
        if time.monotonic() > deadline:
            states = [(p.index, p.run, p.state) for p in current]
            raise AssertionError(f"{what}: not within {timeout} s; points: {states}")
        time.sleep(0.5)


def wait_ended(lab: Lab, user: str, ref: str, timeout: float = 120) -> list[Point]:
    return wait_points(
        lab, user, ref, lambda ps: all(p.state in ENDED for p in ps), timeout, f"{ref} ends"
    )


# --- Slurm's own view ------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    array_id: str
    task: int
    state: str
    exit_code: str
    comment: str


def sacct_tasks(name: str, *, at_least: int = 0, timeout: float = 30) -> list[Task]:
    """Every array task Slurm's accounting holds under this job name, one per allocation.

    slurmdbd lags (a row is a placeholder for about a second, a pending array is one `123_[..]`
    row), so wait up to `timeout` for `at_least` task rows, then look once more for a late
    duplicate."""
    deadline = time.monotonic() + timeout
    while True:
        rows = _sacct_named(name)
        tasks = [t for t in rows if t is not None]
        if len(tasks) >= at_least or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    if at_least:
        time.sleep(2)
        tasks = [t for t in _sacct_named(name) if t is not None]
    return tasks


def _sacct_named(name: str) -> list[Task | None]:
    rows: list[Task | None] = []
    for row in sacct_rows_named(name):
        match = _TASK.match(row["job_id"])
        rows.append(
            Task(
                match.group(1),
                int(match.group(2)),
                row["state"].split()[0],
                row["exit_code"],
                row["comment"],
            )
            if match
            else None
        )
    return rows


def assert_one_array(name: str, n: int) -> list[Task]:
    """Slurm ran the n points as ONE array job with tasks 0..n-1, each exactly once."""
    tasks = sacct_tasks(name, at_least=n)
    assert len({t.array_id for t in tasks}) == 1, f"one array job, got {tasks}"
    assert sorted(t.task for t in tasks) == list(range(n)), f"tasks 0..{n - 1} once each: {tasks}"
    return tasks


def squeue_ids(names: list[str]) -> list[str]:
    """Job ids (array tasks one per line) Slurm still holds under these job names."""
    if not names:
        return []
    out = subprocess.run(
        ["squeue", "--noheader", "--array", "--format=%i", f"--name={','.join(names)}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.split()


def running_gpus(names: list[str]) -> int:
    """GPUs the lab's running jobs of these names hold now (squeue, array tasks one a line)."""
    from hpcops.slurm.parse import parse_gpus

    out = subprocess.run(
        [
            "squeue",
            "--noheader",
            "--array",
            "--account=lab",
            "--states=RUNNING",
            "--format=%b",
            f"--name={','.join(names)}",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return sum(parse_gpus(line) for line in out.splitlines())


# --- the daemon's process --------------------------------------------------------------------


def daemon_pid(lab: Lab) -> int:
    return int((lab.home / "daemon.pid").read_text())


def wait_dead(pid: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists():
        assert time.monotonic() < deadline, f"daemon {pid} still alive after {timeout} s"
        time.sleep(0.1)


def kill9(lab: Lab) -> None:
    pid = daemon_pid(lab)
    os.kill(pid, signal.SIGKILL)
    wait_dead(pid)
    (lab.home / "daemon.pid").unlink(missing_ok=True)
