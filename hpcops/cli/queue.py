"""Commands that change the lab's queue: cancel, priority, hold, release, top, retry; quotas;
audit."""

from __future__ import annotations

from typing import Any

import click

from hpcops.cli.context import Context, json_option, pass_ctx
from hpcops.cli.parsing import RUN_OR_SWEEP, command, group

Target = int | str  # a run id, a sweep's "s7" or a pipeline's "p3"


@command()
@click.argument("runs", nargs=-1, required=True, type=RUN_OR_SWEEP, metavar="RUN|SWEEP|PIPELINE...")
@json_option
@pass_ctx
def cancel(obj: Context, runs: tuple[Target, ...], as_json: bool) -> None:
    """Cancel runs: queued ones at once, ones in Slurm with scancel.

    A sweep (s7) cancels every point of it that has not ended. A pipeline (p3) cancels its
    steps' runs that have not ended and its register steps that have not run; the steps after
    a cancelled one end CANCELLED ("waits for train, which CANCELLED"). Members cancel their
    own runs, sweeps and pipelines; leads any.
    """
    _run_action(obj, "cancel", runs, as_json)


def _run_action(
    obj: Context, method: str, runs: tuple[Target, ...], as_json: bool, **params: Any
) -> None:
    """One request per run or sweep, answered with a message each."""
    from hpcops.cli.output import print_results

    print_results([obj.call(method, run=run, **params) for run in runs], as_json)


@command()
@click.argument("run", type=RUN_OR_SWEEP, metavar="RUN|SWEEP|PIPELINE")
@click.argument("value", type=click.IntRange(-1000, 1000), metavar="PRIORITY")
@json_option
@pass_ctx
def priority(obj: Context, run: Target, value: int, as_json: bool) -> None:
    """Set a run's priority in the lab's queue (higher goes first).

    A sweep (s7) sets it on every point still in hpcops' queue (QUEUED or HELD), a pipeline
    (p3) on its steps' runs still there, those waiting for earlier steps too. Members may set
    their own runs within the lab's member range; leads any run, any value.
    """
    _run_action(obj, "priority", (run,), as_json, priority=value)


@command()
@click.argument("runs", nargs=-1, required=True, type=RUN_OR_SWEEP, metavar="RUN|SWEEP|PIPELINE...")
@json_option
@pass_ctx
def hold(obj: Context, runs: tuple[Target, ...], as_json: bool) -> None:
    """Keep queued runs from being released until `hpcops release`.

    A sweep (s7) holds every QUEUED point of it; a pipeline (p3) its steps' QUEUED runs, those
    waiting for earlier steps too (a held step is not released when they complete).
    """
    _run_action(obj, "hold", runs, as_json)


@command()
@click.argument("runs", nargs=-1, required=True, type=RUN_OR_SWEEP, metavar="RUN|SWEEP|PIPELINE...")
@json_option
@pass_ctx
def release(obj: Context, runs: tuple[Target, ...], as_json: bool) -> None:
    """Let held runs be released again (they keep their place in the queue).

    A sweep (s7) releases every HELD point of it; a pipeline (p3) its steps' HELD runs.
    """
    _run_action(obj, "release", runs, as_json)


@command()
@click.argument("run", type=RUN_OR_SWEEP, metavar="RUN|SWEEP|PIPELINE")
@json_option
@pass_ctx
def top(obj: Context, run: Target, as_json: bool) -> None:
    """Move a run to the top of the lab's queue: it goes next (leads only).

    A sweep (s7): its QUEUED points go next, in their order; a pipeline (p3): its steps'
    QUEUED runs (each step still released only when the steps before it COMPLETED).
    """
    _run_action(obj, "top", (run,), as_json)


@command()
@click.argument("runs", nargs=-1, required=True, type=RUN_OR_SWEEP, metavar="RUN|SWEEP|PIPELINE...")
@json_option
@pass_ctx
def retry(obj: Context, runs: tuple[Target, ...], as_json: bool) -> None:
    """Queue a new attempt of an ended run: the same run id, run directory and checkpoint
    directory ($HPCOPS_CHECKPOINT_DIR), so a job that saved a checkpoint resumes from it.

    For a run that FAILED, TIMEOUT, was CANCELLED, PREEMPTED, ... (a COMPLETED run is run again
    as a new run with `hpcops rerun`). A sweep (s7) retries each point that ended otherwise
    than COMPLETED. Members retry their own runs and sweeps; leads any. `hpcops show RUN`
    lists a run's attempts. A pipeline is not retried: `hpcops rerun p3.STEP --downstream`
    runs a step again and the steps after it.
    """
    _run_action(obj, "retry", runs, as_json)


@group()
def quota() -> None:
    """Show the lab's quotas and what is in use; leads change them."""


@quota.command("show")
@json_option
@pass_ctx
def quota_show(obj: Context, as_json: bool) -> None:
    """Quotas in force (the config's, with leads' changes) beside current use."""
    from hpcops.cli.output import print_json, table

    data = obj.call("quota_show")
    if as_json:
        print_json(data)
        return

    def cell(in_use: dict[str, int] | None, limit: dict[str, int | None], key: str) -> str:
        cap = "∞" if limit[key] is None else str(limit[key])
        return f"{in_use[key]}/{cap}" if in_use is not None else cap

    rows = [
        [
            "lab",
            *(
                cell(data["lab"]["in_use"], data["lab"]["limit"], k)
                for k in ("jobs", "cpus", "gpus")
            ),
            "-",
        ]
    ]
    rows.append(
        [
            "per user (default)",
            *(cell(None, data["per_user"]["limit"], k) for k in ("jobs", "cpus", "gpus")),
            "-",
        ]
    )
    for name, entry in data["users"].items():
        rows.append(
            [
                f"user {name}",
                *(cell(entry["in_use"], entry["limit"], k) for k in ("jobs", "cpus", "gpus")),
                f"{entry['usage']:.2f}",
            ]
        )
    for name, entry in data["partitions"].items():
        rows.append(
            [
                f"partition {name}",
                *(cell(entry["in_use"], entry["limit"], k) for k in ("jobs", "cpus", "gpus")),
                "-",
            ]
        )
    click.echo(table(["SCOPE", "JOBS", "CPUS", "GPUS", "FAIR-SHARE USAGE"], rows, shrink=0))


@quota.command("set")
@click.argument("scope", metavar="SCOPE")
@click.argument("resource", type=click.Choice(["jobs", "cpus", "gpus"]))
@click.argument("value", metavar="N|none")
@json_option
@pass_ctx
def quota_set(obj: Context, scope: str, resource: str, value: str, as_json: bool) -> None:
    """Set a quota (leads only): SCOPE is lab, per_user, user:NAME or partition:NAME.

    \b
    Examples:
      hpcops quota set lab gpus 4            # the lab uses at most 4 GPUs at once
      hpcops quota set user:alice gpus 2
      hpcops quota set partition:gpu jobs 8
      hpcops quota set per_user cpus none    # no per-user CPU limit
    """
    from hpcops.cli.output import print_json
    from hpcops.errors import InvalidInput

    if value.lower() in ("none", "unlimited"):
        number: int | None = None
    elif value.isdigit():
        number = int(value)
    elif value.startswith("-") and value[1:].isdigit():
        raise InvalidInput(
            f"a quota cannot be negative ({value}): give 0 to allow none, or 'none' for no limit"
        )
    else:
        raise InvalidInput(f"a quota is a whole number or 'none', not {value!r}")
    result = obj.call("quota_set", scope=scope, resource=resource, value=number)
    if as_json:
        print_json(result)
        return
    click.echo(result["message"])


@command()
@click.option("--limit", type=click.IntRange(1, 10000), default=50, show_default=True)
@json_option
@pass_ctx
def audit(obj: Context, limit: int, as_json: bool) -> None:
    """The audit log: every change and every refusal, newest first."""
    from hpcops.cli.output import local_time, print_json, table

    entries = obj.call("audit", limit=limit)
    if as_json:
        print_json(entries)
        return
    rows = [
        [
            local_time(e["at"]),
            e["actor"],
            e["role"],
            e["action"],
            e["target"],
            "ok" if e["allowed"] else "REFUSED",
            f"{e['before']} -> {e['after']}" if e["before"] or e["after"] else e["detail"],
        ]
        for e in entries
    ]
    click.echo(table(["WHEN", "WHO", "ROLE", "ACTION", "TARGET", "", "CHANGE"], rows))


COMMANDS = (cancel, priority, hold, release, top, retry, quota, audit)
