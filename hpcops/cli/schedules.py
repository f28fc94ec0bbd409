"""`hpcops schedule`: queue a spec again and again (scheduled retraining)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from hpcops.cli.context import Context, json_option, pass_ctx
from hpcops.cli.parsing import group


@group()
def schedule() -> None:
    """Queue a spec, or a pipeline, again and again: scheduled retraining.

    Each firing queues a fresh run of the spec (of a pipeline: the whole pipeline, every step),
    owned by the schedule's owner and checked like `hpcops submit` (role, priority range,
    cluster limits; quotas hold it in the queue). The run records its schedule and firing
    (`hpcops show`).

    \b
      hpcops schedule add train.yaml --cron "0 3 * * 1"      # Mondays 03:00, local zone
      hpcops schedule add train.yaml --cron "30 2 * * *" --timezone Europe/Berlin --name nightly
      hpcops schedule add eval.yaml --every 3600             # an interval in seconds
      hpcops schedule add train.yaml --on-data-change        # when its DVC data changes
      hpcops schedule add pipeline.yaml --cron "0 3 * * 1"   # the whole pipeline, each firing
      hpcops schedule ls                                     # status, next firing, last outcome
      hpcops schedule show nightly                           # recent firings and their runs
      hpcops schedule pause nightly / resume nightly / rm nightly
      hpcops schedule run-now nightly                        # one firing now; prints the run id

    A spec may carry the same settings in a schedule: block (cron, every_s or on_data_change with
    check_every_s, timezone, name, catch_up, catch_up_grace_s, allow_overlap); options given
    here win. Only a schedule's owner
    or a lead may pause, resume, remove or run it; every change is audited.
    """


@schedule.command("add")
@click.argument("spec_path", metavar="SPEC", type=click.Path(path_type=Path))
@click.option(
    "--cron",
    metavar="EXPR",
    help="crontab's five fields: minute hour day-of-month month day-of-week, e.g. "
    "'0 3 * * 1' (Mondays 03:00; 0 and 7 are Sunday), '*/15 * * * *', '0 9-17 * * mon-fri'.",
)
@click.option(
    "--every",
    "every_s",
    type=click.IntRange(min=1),
    metavar="SECONDS",
    help="Fire every SECONDS seconds instead of on a cron (at least the config's "
    "schedules.min_interval_s, 60 by default).",
)
@click.option(
    "--on-data-change",
    is_flag=True,
    default=None,
    help="Fire when the spec's DVC-tracked data changes: every --check-every seconds the daemon "
    "resolves the spec's code branch (and each data target's rev) and reads the data's md5 from "
    "its .dvc file; a version its last run did not use queues a run. The spec needs data:.",
)
@click.option(
    "--check-every",
    "check_every_s",
    type=click.IntRange(min=1),
    metavar="SECONDS",
    help="How often an --on-data-change schedule checks (default: the config's "
    "schedules.check_every_s, 300; at least schedules.min_interval_s).",
)
@click.option("--name", help="The schedule's name (default: the spec's name).")
@click.option(
    "--timezone",
    metavar="TZ",
    help="IANA time zone the cron is read in, e.g. Europe/Berlin (default: the config's "
    "schedules.timezone, else the login node's).",
)
@click.option(
    "--catch-up",
    type=click.Choice(["one", "none", "all"]),
    help="Firings missed while the daemon was down: one run for the latest (default), none, "
    "or one for each; only within the grace period.",
)
@click.option(
    "--catch-up-grace",
    "catch_up_grace_s",
    type=click.IntRange(0, 31 * 86400),
    metavar="SECONDS",
    help="A missed firing older than this gets no catch-up run (default: the config's "
    "schedules.catch_up_grace_s, 3600).",
)
@click.option(
    "--allow-overlap/--no-overlap",
    default=None,
    help="Fire even while an earlier firing's run is queued or running (default: skip that "
    "firing and record why).",
)
@json_option
@pass_ctx
def schedule_add(
    obj: Context,
    spec_path: Path,
    cron: str | None,
    every_s: int | None,
    on_data_change: bool | None,
    check_every_s: int | None,
    name: str | None,
    timezone: str | None,
    catch_up: str | None,
    catch_up_grace_s: int | None,
    allow_overlap: bool | None,
    as_json: bool,
) -> None:
    """Schedule SPEC: queue a fresh run of it on a cron, an interval, or when its data changes.

    The spec is checked now as `hpcops submit` checks it (exit 2 if invalid, and nothing is
    scheduled), and stored with the schedule: later edits of the file do not change it.

    SPEC may be a pipeline file (top-level steps:): each firing queues the whole pipeline, and
    the overlap and catch-up rules apply to it as a whole. It fires on --cron or --every only;
    its steps' specs are read and stored now, each checked as a firing would queue it.
    """
    from hpcops.cli.output import print_json

    if cron is not None and every_s is not None:
        raise click.UsageError("give --cron or --every, not both")
    if on_data_change and (cron is not None or every_s is not None):
        raise click.UsageError(
            "--on-data-change is a trigger of its own; give it, --cron or --every, not two"
        )
    params: dict[str, Any] = {
        **_what_to_schedule(spec_path),
        "source": str(spec_path),
        "name": name,
        "cron": cron,
        "every_s": every_s,
        "on_data_change": on_data_change,
        "check_every_s": check_every_s,
        "timezone": timezone,
        "catch_up": catch_up,
        "catch_up_grace_s": catch_up_grace_s,
        "allow_overlap": allow_overlap,
    }
    result = obj.call("schedule_add", **{k: v for k, v in params.items() if v is not None})
    if as_json:
        print_json(result)
        return
    next_what = "next check" if result["on_data_change"] else "next"
    click.echo(
        f"schedule {result['id']} ({result['name']}): {result['cadence']}, "
        f"{next_what} {_when(result['next_fire_at'])}"
    )


def _what_to_schedule(path: Path) -> dict[str, Any]:
    """The spec's canonical YAML, or a pipeline's wire form (its steps' spec files read and
    checked here, each relative to the pipeline's folder); SpecError (exit 2) when invalid."""
    from hpcops.pipeline import PIPELINE, is_pipeline_text, load_pipeline_file, pipeline_to_wire
    from hpcops.spec import load_spec_file, spec_to_yaml
    from hpcops.yamlio import YamlProblems, read_bounded

    try:
        pipeline = is_pipeline_text(read_bounded(path, PIPELINE))
    except (OSError, YamlProblems):
        pipeline = False  # the spec reader says what is wrong with the file
    if pipeline:
        return {"pipeline": pipeline_to_wire(load_pipeline_file(path))}
    return {"yaml": spec_to_yaml(load_spec_file(path))}


def _queued(firing: dict[str, Any]) -> str:
    """What a firing queued, as `hpcops show` takes it: `run 12`, `p3`, or nothing."""
    if firing.get("pipeline_id"):
        return f"p{firing['pipeline_id']}"
    return f"run {firing['run_id']}" if firing["run_id"] else ""


def _when(iso: str | None) -> str:
    from hpcops.cli.output import local_time

    return "-" if iso is None else local_time(iso)


@schedule.command("ls")
@click.option("--all", "show_all", is_flag=True, help="Include removed schedules.")
@json_option
@pass_ctx
def schedule_ls(obj: Context, show_all: bool, as_json: bool) -> None:
    """List the lab's schedules: status (active, paused, broken), next firing, last outcome.

    A schedule is broken when its spec would not be queued now (the cluster or the lab's
    templates changed), or when an on-data-change schedule's last check could not read its data
    (repository unreachable, .dvc file missing); the PROBLEM column says why. The others fire
    regardless. For an on-data-change schedule NEXT is its next check, CHECKED its last one.
    """
    from hpcops.cli.output import print_json, table

    schedules = obj.call("schedule_list", all=show_all)
    if as_json:
        print_json(schedules)
        return
    if not schedules:
        click.echo("no schedules (hpcops schedule add SPEC --cron EXPR)")
        return
    rows = []
    for s in schedules:
        last = s["last_firing"]
        outcome = "-"
        if last is not None:
            outcome = " ".join(filter(None, [last["outcome"], _queued(last)]))
        problem = s["problem"] or s["last_error"] or ""
        check = s["last_check"]
        rows.append(
            [
                str(s["id"]),
                s["name"],
                # What each firing queues: a spec's run, or a whole pipeline.
                f"{s['kind']} {s['spec_name']}",
                s["owner"],
                s["status"],
                s["cadence"],
                _when(s["next_fire_at"]),
                f"{_when(check['at'])} {check['summary']}" if check else "-",
                outcome,
                problem.splitlines()[0] if problem else "",
            ]
        )
    headers = [
        "ID",
        "NAME",
        "FIRES",
        "OWNER",
        "STATUS",
        "WHEN",
        "NEXT",
        "CHECKED",
        "LAST",
        "PROBLEM",
    ]
    click.echo(table(headers, rows))


@schedule.command("show")
@click.argument("ref", metavar="SCHEDULE")
@click.option(
    "--firings",
    "limit",
    type=click.IntRange(1, 10000),
    default=20,
    show_default=True,
    help="How many recent firings to list.",
)
@json_option
@pass_ctx
def schedule_show(obj: Context, ref: str, limit: int, as_json: bool) -> None:
    """One schedule (SCHEDULE: its id or name) and its recent firings with their runs."""
    from hpcops.cli.output import local_time, print_json, table

    data = obj.call("schedule_show", schedule=ref, limit=limit)
    if as_json:
        print_json(data)
        return
    active = "its pipeline has not ended" if data["kind"] == "pipeline" else "a run is active"
    overlap = "allowed" if data["allow_overlap"] else f"skipped while {active}"
    lines = [
        ("schedule", f"{data['id']}  {data['name']}  ({data['kind']} {data['spec_name']})"),
        ("status", data["status"]),
        ("owner", data["owner"]),
        ("when", data["cadence"]),
        ("next check" if data["on_data_change"] else "next", _when(data["next_fire_at"])),
        ("catch-up", f"{data['catch_up']}, within {data['catch_up_grace_s']} s"),
        ("overlap", overlap),
        ("created", local_time(data["created_at"])),
    ]
    if data["on_data_change"]:
        # Missed checks are one check at start-up: the data is what it is now.
        lines = [line for line in lines if line[0] != "catch-up"]
    if data["last_check"]:
        check = data["last_check"]
        lines.append(("last check", f"{local_time(check['at'])}  {check['result']}"))
    if data["removed_at"]:
        lines.append(("removed", f"{local_time(data['removed_at'])} by {data['removed_by']}"))
    if data["problem"]:
        lines.append(("problem", data["problem"]))
    if data["last_error"]:
        lines.append(("last error", data["last_error"]))
    for key, value in lines:
        click.echo(f"{key + ':':<11} {value}")
    firings = data["firings"]
    if not firings:
        click.echo("no firings yet")
        return
    rows = [
        [
            str(f["id"]),
            local_time(f["scheduled_for"]),
            f["kind"],
            f["outcome"],
            f["queued"] or "-",
            f["run_state"] or "-",
            f["reason"] or "",
        ]
        for f in firings
    ]
    queued = "PIPELINE" if data["kind"] == "pipeline" else "RUN"
    click.echo(table(["FIRING", "FOR", "KIND", "OUTCOME", queued, "STATE", "WHY"], rows))


def _schedule_action(obj: Context, method: str, refs: tuple[str, ...], as_json: bool) -> None:
    """One request per schedule, answered with a message each."""
    from hpcops.cli.output import print_results

    print_results([obj.call(method, schedule=ref) for ref in refs], as_json)


@schedule.command("pause")
@click.argument("refs", nargs=-1, required=True, metavar="SCHEDULE...")
@json_option
@pass_ctx
def schedule_pause(obj: Context, refs: tuple[str, ...], as_json: bool) -> None:
    """Stop schedules from firing until `resume` (owner or lead)."""
    _schedule_action(obj, "schedule_pause", refs, as_json)


@schedule.command("resume")
@click.argument("refs", nargs=-1, required=True, metavar="SCHEDULE...")
@json_option
@pass_ctx
def schedule_resume(obj: Context, refs: tuple[str, ...], as_json: bool) -> None:
    """Let paused schedules fire again, from their next time on (owner or lead).

    Firings that fell into the pause are not made up.
    """
    _schedule_action(obj, "schedule_resume", refs, as_json)


@schedule.command("rm")
@click.argument("refs", nargs=-1, required=True, metavar="SCHEDULE...")
@json_option
@pass_ctx
def schedule_rm(obj: Context, refs: tuple[str, ...], as_json: bool) -> None:
    """Remove schedules (owner or lead). Their runs and firings are kept (`ls --all`)."""
    _schedule_action(obj, "schedule_remove", refs, as_json)


@schedule.command("run-now")
@click.argument("ref", metavar="SCHEDULE")
@json_option
@pass_ctx
def schedule_run_now(obj: Context, ref: str, as_json: bool) -> None:
    """Fire a schedule once, now (owner or lead); print the new run's id (a pipeline's
    schedule: the new pipeline's p<id>).

    \b
    It follows the schedule's overlap rule: while an earlier firing's run is still queued or
    running (and overlap is not allowed) the firing is skipped, says why, and exits 1.
      hpcops wait "$(hpcops schedule run-now nightly)"
    """
    from hpcops.cli.output import print_json

    result = obj.call("schedule_run_now", schedule=ref)
    firing = result["firing"]
    if as_json:
        print_json(result)
    elif firing["outcome"] == "submitted":
        click.echo(firing["queued"])
    if firing["outcome"] != "submitted":
        if not as_json:
            click.echo(f"hpcops: {result['message']}", err=True)
        sys.exit(1)
