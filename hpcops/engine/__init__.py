"""The run engine: follows the lab's jobs in Slurm, repairs what a crash left, releases queued
runs under the lab's policy, and accepts specs and members' requests about runs.

    core.py      Engine: the public methods, and nothing else
    loop.py      the tick, and Slurm's health (back-off while it does not answer)
    intake.py    accepting specs: cluster checks, pinning code and data, new runs
    requests.py  cancel, priority, top, hold, release, rerun, why
    follow.py    markers, the squeue safety net, adoption by token, final states from sacct
    release.py   the release policy's inputs (queue, active jobs, quotas, usage), and release
    submit.py    render, claim as SUBMITTING, sbatch (after a staging job), Slurm's answer
    record.py    recording a lifecycle outcome
    state.py     the collaborators (Parts) and the loop's mutable state (LoopState)

What a marker, a squeue row, a sacct record or an sbatch error means for a run is decided in
hpcops.lifecycle, on plain data; the engine gathers the inputs and records the outcome.
"""

from hpcops.engine.core import Engine
from hpcops.engine.state import EngineStatus, SlurmHealth
from hpcops.lifecycle import DAEMON

__all__ = ["DAEMON", "Engine", "EngineStatus", "SlurmHealth"]
