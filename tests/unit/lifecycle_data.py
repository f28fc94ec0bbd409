"""The lifecycle tests' plain data (test_lifecycle_decisions.py, test_lifecycle_retries.py): one
run of job 42 and one sacct record of it, each test setting the fields it is about."""

from __future__ import annotations

from typing import Any

from hpcops.slurm.parse import AccountingRecord
from hpcops.states import RunState
from hpcops.store import Run

NOW = 1_800_000_000.0
TOKEN = "0123456789abcdef"


def a_run(state: RunState = RunState.PENDING, **fields: Any) -> Run:
    values: dict[str, Any] = {
        "id": 7,
        "name": "train",
        "experiment": "exp",
        "owner": "ada",
        "owner_uid": 1000,
        "state": state.value,
        "spec_yaml": "name: train\n",
        "spec_hash": "0" * 16,
        "run_dir": "/scratch/runs/run-000007",
        "token": TOKEN,
        "slurm_job_id": "42",
        "created_at": NOW - 3600,
        "updated_at": NOW - 3600,
    }
    values.update(fields)
    return Run(**values)


def a_record(state: RunState, slurm_state: str | None = None, **fields: Any) -> AccountingRecord:
    values: dict[str, Any] = {
        "job_id": "42",
        "state": state,
        "slurm_state": slurm_state or state.value,
        "exit_code": 0,
        "signal": 0,
        "reason": "None",
        "submitted_at": NOW - 600,
        "started_at": NOW - 500,
        "ended_at": NOW - 10,
        "elapsed_s": 490,
        "total_cpu_s": 480.0,
        "max_rss_bytes": 1 << 20,
        "alloc_tres": "cpu=2,mem=1G,node=1,billing=2,gres/gpu=1",
        "partition": "debug",
        "comment": f"hpcops:{TOKEN}",
        "name": "r-000007",
    }
    values.update(fields)
    return AccountingRecord(**values)
