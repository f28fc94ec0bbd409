"""Release decisions, as pure functions of the queue, the jobs in Slurm and the config."""

from __future__ import annotations


def release_budget(*, active: int, max_active: int) -> int:
    """How many queued runs may go to Slurm now: only a small window sits pending in Slurm, so a
    priority change in hpcops' queue still matters (DESIGN.md, decision 5)."""
    return max(0, max_active - active)
