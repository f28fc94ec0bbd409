"""Slurm through its commands: pure builders and parsers joined to a transport.

The backend's whole surface is a handful of verbs; anything more is a function over them.
"""

from __future__ import annotations

import getpass
import logging
from collections.abc import Sequence
from datetime import datetime
from pathlib import PurePosixPath
from typing import Protocol

from hpcops.errors import SlurmError, SlurmRejected, SlurmUnreachable
from hpcops.names import is_job_id
from hpcops.slurm import commands, parse
from hpcops.slurm.parse import (
    AccountingRecord,
    FinishedJob,
    Partition,
    QueueEntry,
    UsageRecord,
)
from hpcops.transport.base import CommandResult, Transport, TransportError

log = logging.getLogger(__name__)


class SlurmLimited(SlurmRejected):
    """Slurm refused a submission because an association/QOS limit is full: wait, do not fail."""

    kind = "slurm_limited"


class SlurmBackend(Protocol):
    def submit(self, script_path: PurePosixPath, *, array: str | None = None) -> str:
        """The job id; for `array` (an `--array` value, arrays.array_option) the array's id,
        whose tasks are `<id>_<index>`."""
        ...

    def max_array_size(self) -> int:
        """slurm.conf's MaxArraySize: an array's indices must stay below it. One RPC; the
        caller caches it."""
        ...

    def queue(self) -> list[QueueEntry]: ...
    def accounting(self, job_ids: Sequence[str]) -> dict[str, AccountingRecord]: ...
    def finished_jobs(self, since: datetime) -> list[FinishedJob]: ...
    def usage(self, since: datetime) -> list[UsageRecord]: ...
    def cancel(self, job_ids: Sequence[str]) -> None: ...
    def partitions(self) -> dict[str, Partition]: ...


class CommandBackend:
    """Slurm's CLI (sbatch, squeue, sacct, scancel, sinfo) over any transport."""

    def __init__(
        self,
        transport: Transport,
        *,
        account: str | None,
        user: str | None = None,
        timeout_s: float = 60.0,
    ) -> None:
        self.transport = transport
        self.account = account
        self.user = user or getpass.getuser()
        self.timeout_s = timeout_s

    def _run(self, argv: list[str]) -> CommandResult:
        try:
            result = self.transport.run(argv, timeout_s=self.timeout_s)
        except TransportError as exc:
            raise SlurmUnreachable(str(exc), argv=argv) from exc
        if result.returncode != 0:
            message = f"{argv[0]} failed"
            if parse.is_unreachable(result.stderr):
                raise SlurmUnreachable(
                    f"{argv[0]}: slurmctld did not answer",
                    argv=argv,
                    returncode=result.returncode,
                    stderr=result.stderr,
                )
            if parse.is_limit(result.stderr):
                raise SlurmLimited(
                    f"{argv[0]}: a Slurm limit is full",
                    argv=argv,
                    returncode=result.returncode,
                    stderr=result.stderr,
                )
            raise SlurmRejected(
                message, argv=argv, returncode=result.returncode, stderr=result.stderr
            )
        return result

    def submit(self, script_path: PurePosixPath, *, array: str | None = None) -> str:
        argv = commands.sbatch_argv(str(script_path), array=array)
        result = self._run(argv)
        try:
            return parse.parse_sbatch_parsable(result.stdout)
        except ValueError as exc:
            raise SlurmError(str(exc), argv=argv, stderr=result.stderr) from exc

    def queue(self) -> list[QueueEntry]:
        argv = commands.squeue_argv(account=self.account, user=self.user)
        return parse.parse_squeue(self._run(argv).stdout)

    def accounting(self, job_ids: Sequence[str]) -> dict[str, AccountingRecord]:
        job_ids = _only_job_ids(job_ids)
        if not job_ids:
            return {}
        return parse.parse_sacct(self._run(commands.sacct_argv(job_ids)).stdout)

    def finished_jobs(self, since: datetime) -> list[FinishedJob]:
        argv = commands.sacct_finished_argv(account=self.account, user=self.user, since=since)
        return parse.parse_sacct_finished(self._run(argv).stdout)

    def usage(self, since: datetime) -> list[UsageRecord]:
        argv = commands.sacct_usage_argv(account=self.account, user=self.user, since=since)
        return parse.parse_sacct_usage(self._run(argv).stdout)

    def cancel(self, job_ids: Sequence[str]) -> None:
        job_ids = _only_job_ids(job_ids)
        if job_ids:
            self._run(commands.scancel_argv(job_ids))

    def partitions(self) -> dict[str, Partition]:
        return parse.parse_sinfo_partitions(self._run(commands.sinfo_argv()).stdout)

    def max_array_size(self) -> int:
        argv = commands.scontrol_config_argv()
        result = self._run(argv)
        size = parse.parse_max_array_size(result.stdout)
        if size is None:
            raise SlurmError("scontrol show config printed no MaxArraySize", argv=argv)
        return size


def _only_job_ids(job_ids: Sequence[str]) -> list[str]:
    """The ids that are Slurm job ids. The rest came from a file a job wrote or a record gone
    wrong: logged and left out, so one bad id never costs the lab its sacct or scancel."""
    good = [job_id for job_id in job_ids if is_job_id(job_id)]
    if len(good) != len(job_ids):
        bad = [job_id for job_id in job_ids if not is_job_id(job_id)]
        log.warning("not Slurm job ids, left out: %s", ", ".join(repr(b[:40]) for b in bad[:5]))
    return good
