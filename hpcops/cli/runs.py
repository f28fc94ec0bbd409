"""Commands that read runs, sweeps and pipelines: ls, show, wait, logs, history, why."""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from hpcops.cli.context import ACTIVE, STATE_NAMES, Context, json_option, pass_ctx
from hpcops.cli.parsing import RUN_OR_SWEEP, command

QUEUED_SHOWN = 30  # plain `hpcops ls` shows the head of the queue


@command("ls")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(STATE_NAMES, case_sensitive=False),
    help="Only runs in this state (repeatable).",
)
@click.option(
    "--all",
    "show_all",
    is_flag=True,
    help="Include ended runs (default: active runs and the 20 most recent ended ones).",
)
@click.option(
    "--limit",
    type=click.IntRange(1, 100000),
    default=None,
    help="At most this many rows (a sweep is one), newest first.",
)
@click.option(
    "--points",
    is_flag=True,
    help="List each point of a sweep and each run of a pipeline as a run of its own "
    "(default: one row per sweep and per pipeline).",
)
@json_option
@pass_ctx
def list_runs(
    obj: Context,
    states: tuple[str, ...],
    show_all: bool,
    limit: int | None,
    points: bool,
    as_json: bool,
) -> None:
    """List the lab's runs, sweeps and pipelines in queue order, with why each waits.

    \b
    Order: running and pending in Slurm, then queued runs in the order hpcops will release
    them (priority, then fair share, then submission time), then held runs, then the most
    recent ended runs. --state and --all list newest first within that order.

    \b
    A sweep is one row in a table of its own (SWEEP s7): its state (derived from its points),
    its progress and the best objective so far. It is listed when one of its points is in
    --state; --points lists the points instead.

    \b
    A pipeline is one row too (PIPELINE p3), its steps' runs folded into it: its state (its
    steps', by the pipeline's rules) and each step in the order they run, marked with its state:
      prepare✓ train▶ evaluate· promote·
    ✓ COMPLETED, ▶ RUNNING, ◦ in Slurm (PENDING, STAGING, SUBMITTING), · QUEUED (or waiting for
    the steps before it), ‖ HELD, ⊘ CANCELLED, ✗ FAILED (or TIMEOUT, OUT_OF_MEMORY, ...).
    `hpcops show p3` draws its graph.
    """
    from hpcops.cli.output import human_duration, print_json, short_time, table

    grouped = not points
    if states:
        found = obj.call("list", states=[s.upper() for s in states], limit=limit, sweeps=grouped)
    elif show_all:
        found = obj.call("list", limit=limit, sweeps=grouped)
    else:
        active = obj.call("list", states=list(ACTIVE), limit=limit, sweeps=grouped)
        ended = obj.call(
            "list",
            states=[s for s in STATE_NAMES if s not in ACTIVE],
            limit=min(limit or 20, 20),
            sweeps=grouped,
        )
        found = active + ended
    # A sweep with active and ended points is in both answers: the first row stands.
    seen: set[object] = set()
    rows_found = []
    for row in found:
        key = (row.get("type", "run"), row["id"])
        if key not in seen:
            seen.add(key)
            rows_found.append(row)
    if as_json:
        print_json(rows_found)
        return
    if not rows_found:
        click.echo("no runs")
        return
    runs = [r for r in rows_found if r.get("type", "run") == "run"]
    sweeps = [r for r in rows_found if r.get("type") == "sweep"]
    pipelines = [r for r in rows_found if r.get("type") == "pipeline"]
    hidden = 0
    if not (states or show_all or limit):
        # A table of 10,000 queued runs helps nobody: show the head of the queue.
        queued = [r for r in runs if r["state"] == "QUEUED"]
        if len(queued) > QUEUED_SHOWN:
            hidden_ids = {r["id"] for r in queued[QUEUED_SHOWN:]}
            runs = [r for r in runs if r["id"] not in hidden_ids]
            hidden = len(hidden_ids)
    rows = [
        [
            str(r["id"]),
            state_text(r),
            r["owner"],
            str(r["priority"]),
            r["slurm_job_id"] or "-",
            short_time(r["created_at"]),
            human_duration(r["elapsed_s"]),
            _exit_text(r),
            r["name"],
            r.get("wait_reason") or "",
        ]
        for r in runs
    ]
    headers = ["ID", "STATE", "OWNER", "PRIO", "JOB", "QUEUED", "ELAPSED", "EXIT", "NAME", "WHY"]
    if rows:
        click.echo(table(headers, rows, shrink=(8, 2), wrap=9))
    if hidden:
        click.echo(f"... and {hidden} more queued runs (hpcops ls --state QUEUED)")
    if sweeps:
        if rows:
            click.echo()
        click.echo(sweep_table(sweeps))
    if pipelines:
        if rows or sweeps:
            click.echo()
        click.echo(pipeline_table(pipelines))


def sweep_table(sweeps: list[dict[str, Any]]) -> str:
    """One row per sweep. When that is wider than the terminal (a sweep's progress alone is up
    to ~50 characters), each row's progress goes on a line of its own under it, and WHY, NAME
    and BEST give way in turn: 80 columns show every sweep's state, progress and best."""
    from hpcops.cli.output import table, terminal_width

    rows = [
        [
            s["id"],
            s["state"],
            s["owner"],
            s["name"],
            progress_text(s),
            best_text(s),
            s.get("wait_reason") or "",
        ]
        for s in sweeps
    ]
    headers = ["SWEEP", "STATE", "OWNER", "NAME", "PROGRESS", "BEST", "WHY"]
    text = table(headers, rows, shrink=6)
    if max(len(line) for line in text.splitlines()) <= terminal_width():
        return text
    narrow = table(
        [h for h in headers if h != "PROGRESS"],
        [[c for i, c in enumerate(row) if i != 4] for row in rows],
        shrink=(5, 3, 4),
    ).splitlines()
    lines = [narrow[0]]
    for line, row in zip(narrow[1:], rows, strict=True):
        lines += [line, f"{'':7}{row[4]}"]
    return "\n".join(lines)


# A step's state in a pipeline's row: a mark after its name (`ls --help` has the legend).
_STEP_MARKS = {
    "COMPLETED": "✓",
    "RUNNING": "▶",
    "PENDING": "◦",
    "STAGING": "◦",
    "SUBMITTING": "◦",
    "QUEUED": "·",
    "HELD": "‖",
    "CANCELLED": "⊘",
}  # every other state is an end that is not a success: ✗


def step_mark(state: str) -> str:
    return _STEP_MARKS.get(state, "✗")


def steps_text(pipeline: dict[str, Any], width: int | None = None) -> str:
    """`prepare✓ train▶ evaluate· promote·`; wider than `width`, the count of each mark:
    `50 steps: 20✓ 2▶ 28·`."""
    steps = pipeline.get("steps") or []
    text = " ".join(f"{step['name']}{step_mark(step['state'])}" for step in steps)
    if width is None or len(text) <= width:
        return text
    counts: dict[str, int] = {}
    for step in steps:
        mark = step_mark(step["state"])
        counts[mark] = counts.get(mark, 0) + 1
    return f"{len(steps)} steps: " + " ".join(f"{n}{mark}" for mark, n in counts.items())


def pipeline_table(pipelines: list[dict[str, Any]]) -> str:
    """One row per pipeline. When that is wider than the terminal, each row's steps go on a
    line of their own under it (counted by state when even that line is too narrow), and WHY
    and NAME give way in turn."""
    from hpcops.cli.output import table, terminal_width

    width = terminal_width()
    rows = [
        [
            p["id"],
            p["state"],
            p["owner"],
            p["name"],
            steps_text(p),
            p.get("wait_reason") or "",
        ]
        for p in pipelines
    ]
    headers = ["PIPELINE", "STATE", "OWNER", "NAME", "STEPS", "WHY"]
    text = table(headers, rows, shrink=5)
    if max(len(line) for line in text.splitlines()) <= width:
        return text
    narrow = table(
        [h for h in headers if h != "STEPS"],
        [[c for i, c in enumerate(row) if i != 4] for row in rows],
        shrink=(4, 3),
    ).splitlines()
    lines = [narrow[0]]
    for line, pipeline in zip(narrow[1:], pipelines, strict=True):
        lines += [line, f"{'':10}{steps_text(pipeline, width - 10)}"]
    return "\n".join(lines)


# The progress buckets, in the API's order (hpcops/api/sweeps.py).
_BUCKETS = ("queued", "held", "pending", "running", "done", "failed", "cancelled")


def progress_text(sweep: dict[str, Any]) -> str:
    """`9 pts: 2 queued 3 running 3 done 1 failed`."""
    counts = sweep.get("progress") or {}
    parts = [f"{counts[name]} {name}" for name in _BUCKETS if counts.get(name)]
    return f"{sweep['n_points']} pts" + (f": {' '.join(parts)}" if parts else "")


def best_text(sweep: dict[str, Any]) -> str:
    """`val_accuracy=0.93 (max)`; `-` before any point has a value or without an objective."""
    objective, found = sweep.get("objective"), sweep.get("best")
    if not objective or not found or found.get("value") is None:
        return "-"
    return f"{objective['metric']}={number_text(found['value'])} ({objective['mode']})"


def number_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def value_text(value: Any) -> str:
    """A point's value as its spec would write it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return str(value)


def params_text(params: dict[str, Any]) -> str:
    return " ".join(f"{key}={value_text(value)}" for key, value in params.items())


def state_text(run: dict[str, Any]) -> str:
    """`RUNNING`, and on a later attempt which one: `RUNNING (2/4)`; past the spec's attempts
    (retried by hand), `FAILED (5)`."""
    number = run.get("attempt_number") or 1
    if number <= 1:
        return str(run["state"])
    limit = run.get("max_attempts") or 1
    return f"{run['state']} ({number}/{limit})" if number <= limit else f"{run['state']} ({number})"


def _exit_text(run: dict[str, Any]) -> str:
    if run["exit_code"] is None:
        return "-"
    if run.get("signal"):
        return f"{run['exit_code']}:{run['signal']}"
    return str(run["exit_code"])


@command()
@click.argument("run", type=RUN_OR_SWEEP, metavar="RUN|SWEEP|PIPELINE")
@json_option
@pass_ctx
def show(obj: Context, run: int | str, as_json: bool) -> None:
    """Everything about one run: state, Slurm job, exit code, accounting, stderr tail.

    A sweep (s7): its definition, progress and best point, and a table of its points (the
    best first when it has an objective, else by index).

    \b
    A pipeline (p3): its steps in the order they run, each drawn under the step it waits for,
    with its kind, state and run (or sweep), what it waits for now, why it ended if it did not
    complete, and a register step's promotion (the version registered, whether the alias moved,
    by what margin):
      ✓ prepare  [run]  COMPLETED  run 12
      └─▶ train  [sweep]  RUNNING  sweep s4: 4 pts: 2 running 2 done
          └─· evaluate  [run]  QUEUED  run 17
              waits for train
    """
    from hpcops.cli.output import human_bytes, human_duration, local_time, print_json

    data = obj.call("show", run=run)
    if as_json:
        print_json(data)
        return
    if data.get("type") == "sweep":
        _show_sweep(data)
        return
    if data.get("type") == "pipeline":
        _show_pipeline(data)
        return
    lines = [
        ("run", f"{data['id']}  {data['name']}  (experiment {data['experiment']})"),
        ("state", data["state"] + (f"  — {data['reason']}" if data["reason"] else "")),
        ("owner", f"{data['owner']}   priority {data['priority']}"),
        ("slurm job", data["slurm_job_id"] or "-"),
        (
            "resources",
            f"partition {data['partition'] or '(default)'}, {data['cpus']} cpu, {data['gpus']} gpu",
        ),
        ("exit code", _exit_text(data)),
        ("queued", local_time(data["created_at"])),
        ("submitted", local_time(data["submitted_at"])),
        ("started", local_time(data["started_at"])),
        ("ended", local_time(data["ended_at"])),
        ("elapsed", human_duration(data["elapsed_s"])),
        ("cpu time", human_duration(data["total_cpu_s"])),
        ("max rss", human_bytes(data["max_rss_bytes"])),
        ("code", _code_text(data.get("code"))),
        ("run dir", data["run_dir"] or "-"),
        *_mlflow_lines(data),
    ]
    if data.get("sweep"):
        point = f"{data['sweep']}, point {data['sweep_index']}"
        if data.get("objective") is not None:
            point += f", objective {number_text(data['objective'])}"
        lines.append(("sweep", point))
    if data.get("pipeline"):
        lines.append(("pipeline", f"{data['pipeline']}, step {data['pipeline_step']}"))
    if data.get("schedule_id"):
        lines.append(
            (
                "schedule",
                f"{data['schedule_id']} ({data.get('schedule_name') or '?'}), "
                f"firing {data['firing_id']}",
            )
        )
    for key, value in lines:
        click.echo(f"{key + ':':<11} {value}")
    for item in data.get("data") or []:
        size = human_bytes(item["size"]) if item["size"] is not None else "?"
        files = f", {item['nfiles']} files" if item["nfiles"] else ""
        click.echo(
            f"{'data:':<11} {item['path']} @ {item['rev'][:12]}  md5 {item['md5']} "
            f"({size}{files}) -> ${item['env']}"
        )
    if data.get("staging_job_id"):
        click.echo(
            f"{'staging job:':<11} {data['staging_job_id']} (hpcops logs {data['id']} --staging)"
        )
    staging = data.get("staging") or {}
    for target, state in (staging.get("targets") or {}).items():
        click.echo(f"{'staging:':<11} {target}: {_staging_text(state)}")
    if staging.get("error"):
        click.echo(f"{'staging:':<11} failed: {staging['error']}")
    _show_attempts(data)
    if data.get("stderr_tail"):
        click.echo("stderr (last lines):")
        for line in data["stderr_tail"].splitlines():
            click.echo(f"  | {line}")


def _show_attempts(data: dict[str, Any]) -> None:
    """The attempts, one line each, when the run has had more than one or may have (a spec
    with retry:); a run that can only have one shows none, its lines above say it all."""
    from hpcops.cli.output import human_duration, short_time, table

    found = data.get("attempts") or []
    limit = data.get("max_attempts") or 1
    if len(found) <= 1 and limit <= 1:
        return
    number = data.get("attempt_number") or len(found)
    click.echo(
        f"{'attempts:':<11} {number} of {limit}"
        + ("" if number <= limit else " (retried by hand past the spec's max_attempts)")
    )
    rows = [
        [
            str(a["number"]) + ("*" if a.get("current") else ""),
            a["slurm_job_id"] or "-",
            a["state"],
            short_time(a["started_at"]),
            short_time(a["ended_at"]),
            human_duration(a["elapsed_s"]),
            "-" if a["restarts"] is None else str(a["restarts"]),
            a["reason"] or "",
        ]
        for a in found
    ]
    headers = ["#", "JOB", "STATE", "START", "END", "ELAPSED", "RESTARTS", "WHY"]
    click.echo(table(headers, rows, wrap=-1))


def _show_sweep(data: dict[str, Any]) -> None:
    from hpcops.cli.output import local_time, table

    objective = data.get("objective")
    best = data.get("best")
    lines = [
        ("sweep", f"{data['id']}  {data['name']}  (experiment {data['experiment']})"),
        ("state", f"{data['state']}  — {progress_text(data)}"),
        ("owner", data["owner"]),
        ("definition", f"{data['kind']}, {data['n_points']} points"),
    ]
    if data.get("seed") is not None:
        lines.append(("seed", str(data["seed"])))
    if objective:
        lines.append(("objective", f"{objective['metric']} ({objective['mode']})"))
    if best and best.get("value") is not None:
        where = f"point {best.get('index')}, run {best['run_id']}"
        values = params_text(best.get("params") or {})
        lines.append(
            ("best", f"{number_text(best['value'])}: {where}" + (f"  {values}" if values else ""))
        )
    if data.get("max_parallel"):
        lines.append(("parallel", f"at most {data['max_parallel']} points at once"))
    if data.get("mlflow_run_id"):
        parent = f"parent run {data['mlflow_run_id']}"
        lines.append(("mlflow", f"{parent}, experiment {data.get('mlflow_experiment_id')}"))
    lines.append(("queued", local_time(data["created_at"])))
    if data.get("closed_at"):
        lines.append(("closed", local_time(data["closed_at"])))
    if data.get("rerun_of"):
        lines.append(("rerun of", data["rerun_of"]))
    for key, value in lines:
        click.echo(f"{key + ':':<11} {value}")
    rows = [
        [
            str(p["index"]),
            str(p["run_id"]),
            state_text(p),
            number_text(p["objective"]),
            params_text(p["params"]),
        ]
        for p in data.get("points") or []
    ]
    if rows:
        click.echo()
        header = objective["metric"].upper() if objective else "OBJECTIVE"
        click.echo(table(["POINT", "RUN", "STATE", header, "PARAMS"], rows, shrink=(4, 3)))


def _show_pipeline(data: dict[str, Any]) -> None:
    from hpcops.cli.output import local_time

    lines = [
        ("pipeline", f"{data['id']}  {data['name']}  (experiment {data['experiment']})"),
        ("state", data["state"]),
        ("owner", data["owner"]),
        ("source", data.get("source") or "-"),
        ("queued", local_time(data["created_at"])),
    ]
    if data.get("ended_at"):
        lines.append(("ended", local_time(data["ended_at"])))
    if data.get("schedule_id"):
        lines.append(("schedule", f"{data['schedule_id']}, firing {data.get('firing_id')}"))
    if data.get("mlflow_run_id"):
        parent = f"parent run {data['mlflow_run_id']}"
        lines.append(("mlflow", f"{parent}, experiment {data.get('mlflow_experiment_id')}"))
    for key, value in lines:
        click.echo(f"{key + ':':<11} {value}")
    click.echo()
    click.echo("\n".join(pipeline_graph(data["steps"])))


def pipeline_graph(steps: list[dict[str, Any]]) -> list[str]:
    """The steps (in the order they run) drawn as a tree: each under the last of the steps it
    waits for, indented one level deeper than the deepest of them; a step that waits for more
    than one names them all. Under each step, what it takes and why it waits or ended."""
    import textwrap

    from hpcops.cli.output import terminal_width

    width = terminal_width()
    depth: dict[str, int] = {}
    lines: list[str] = []
    for step in steps:
        after = step.get("after") or []
        level = 1 + max((depth.get(p, 0) for p in after), default=-1)
        depth[step["name"]] = level
        indent = "    " * max(level - 1, 0) + ("└─" if level else "")
        lines.append(
            f"{indent}{step_mark(step['state'])} {step['name']}  [{step['kind']}]  "
            f"{step['state']}  {_step_what(step)}".rstrip()
        )
        under = " " * (len(indent) + 2)
        for detail in _step_details(step):
            lines += textwrap.wrap(
                detail,
                max(40, width),
                initial_indent=under,
                subsequent_indent=under + "  ",
                break_on_hyphens=False,
            )
    return lines


def _step_what(step: dict[str, Any]) -> str:
    """What the step runs: its run, its sweep and progress, or its promotion's target."""
    if step.get("sweep"):
        text = f"sweep {step['sweep']}"
        if step.get("n_points"):
            text += f": {progress_text(step)}"
        best = best_text(step)
        return text + (f"  best {best}" if best != "-" else "")
    if step.get("run_id") is not None:
        return f"run {step['run_id']}"
    register = step.get("register")
    if register:
        return f"model {register['name']}, alias {register['alias']}"
    return ""


def _step_details(step: dict[str, Any]) -> list[str]:
    details = []
    after = step.get("after") or []
    if len(after) > 1:
        details.append(f"after {', '.join(after)}")
    inputs = step.get("inputs") or {}
    if inputs:
        details.append("inputs " + " ".join(f"{k}={v}" for k, v in inputs.items()))
    register = step.get("register")
    if register:
        rule = register.get("if_better")
        model = f"{register['model']}'s model" + (
            f" (run {step['model_run_id']})" if step.get("model_run_id") else ""
        )
        condition = (
            f"only if its {rule['metric']} ({rule['mode']}) beats the version holding it"
            if rule
            else "always"
        )
        details.append(f"registers {model}; the alias moves {condition}")
    if step.get("wait_reason"):
        details.append(f"waits: {step['wait_reason']}")
    if step.get("reason") and step["state"] != "COMPLETED":
        details.append(f"reason: {step['reason']}")
    result = step.get("result")
    if isinstance(result, dict):
        details.append(f"result: {promotion_text(result)}")
    return details


def promotion_text(result: dict[str, Any]) -> str:
    """A register step's result: `version 3 of digits-classifier; alias champion moved to it
    (margin +0.02 over version 2)`, or kept where it was."""
    version = f"version {result.get('version', '?')} of {result.get('model_name', '?')}"
    alias = result.get("alias", "?")
    margin = result.get("margin")
    holder = result.get("holder_version")
    over = f" over version {holder}" if holder else ""
    by = f" (margin {margin:+.4g}{over})" if isinstance(margin, int | float) else ""
    if result.get("moved"):
        text = f"{version}; alias {alias} moved to it{by}"
    else:
        text = f"{version} registered; alias {alias} kept on version {holder or '?'}{by}"
    return text + (f" — {result['reason']}" if result.get("reason") else "")


def _staging_text(state: dict[str, Any]) -> str:
    text = str(state.get("phase", "?"))
    if state.get("files_total"):
        text += f" {state.get('files_done') or 0}/{state['files_total']} files"
    if state.get("bytes_done"):
        text += f", {state['bytes_done'] / 1048576:.1f} MiB fetched"
    if "fetched_files" in state and text.startswith(("done", "cached")):
        text += f" (fetched {state['fetched_files']} files, {state.get('fetched_bytes', 0)} B)"
    if state.get("error"):
        text += f": {state['error']}"
    return text


def _code_text(code: dict[str, Any] | None) -> str:
    if not code:
        return "-"
    text = f"{code['repo']} @ {code['commit']}"
    if code["dirty"]:
        text += f"  DIRTY: uncommitted changes shipped as snapshot {code['checkout'][:12]}"
    return text


def _mlflow_lines(data: dict[str, Any]) -> list[tuple[str, str]]:
    """`show`'s MLflow lines: the record's URL (or id and store), what is still owed to it."""
    run_id = data.get("mlflow_run_id")
    if run_id is None and not data.get("tracking_pending"):
        return []
    if data.get("mlflow_url"):
        record = data["mlflow_url"]
    elif run_id:
        record = f"run {run_id}, experiment {data.get('mlflow_experiment_id')}"
        if data.get("mlflow_tracking_uri"):
            record += f" in {data['mlflow_tracking_uri']}"
    else:
        record = "being created"
    lines = [("mlflow", record)]
    if data.get("mlflow_relay_dir"):
        lines.append(("relay", data["mlflow_relay_dir"]))
    pending = data.get("tracking_pending") or []
    error = data.get("tracking_error")
    if pending or error:
        owed = ", ".join(pending) or "nothing"
        lines.append(("tracking", f"owed: {owed}" + (f" — {error}" if error else "")))
    if data.get("rerun_of_mlflow") or data.get("rerun_of_run"):
        of = data.get("rerun_of_run") or data.get("rerun_of_mlflow")
        lines.append(("rerun of", str(of)))
    return lines


@command()
@click.argument("run", type=click.IntRange(min=1))
@json_option
@pass_ctx
def history(obj: Context, run: int, as_json: bool) -> None:
    """Every state change of a run: when, who, from, to, why."""
    from hpcops.cli.output import local_time, print_json, table

    events = obj.call("history", run=run)
    if as_json:
        print_json(events)
        return
    rows = [
        [local_time(e["at"]), e["actor"], e["from"] or "-", e["to"] or "-", e["reason"]]
        for e in events
    ]
    # Why a run was requeued or started a new attempt is a sentence: wrapped, never cut.
    click.echo(table(["WHEN", "WHO", "FROM", "TO", "WHY"], rows, wrap=-1))


@command()
@click.argument("run", type=click.IntRange(min=1))
@click.option("--stderr", "stream", flag_value="stderr", help="Show stderr instead of stdout.")
@click.option(
    "--staging",
    "stream",
    flag_value="staging",
    help="Show the log of the run's data staging job (files and bytes as they arrive).",
)
@click.option("--stdout", "stream", flag_value="stdout", default=True, hidden=True)
@click.option("-f", "--follow", is_flag=True, help="Keep printing until the run ends.")
@click.option(
    "--tail", type=click.IntRange(min=0), default=None, help="Start with only the last N bytes."
)
@pass_ctx
def logs(obj: Context, run: int, stream: str, follow: bool, tail: int | None) -> None:
    """Print a run's stdout (or --stderr, or --staging), optionally following it as it grows."""
    offset = -tail if tail else 0
    out = sys.stdout
    while True:
        chunk = obj.call("logs", run=run, stream=stream, offset=offset, max_bytes=262144)
        if chunk["data"]:
            out.write(chunk["data"])
            out.flush()
        offset = chunk["offset"]
        if chunk["data"] and chunk["offset"] < chunk["size"]:
            continue  # more is already there: read it without waiting
        if not follow or chunk["done"]:
            return
        time.sleep(0.5)


@command()
@click.argument("runs", nargs=-1, required=True, type=RUN_OR_SWEEP, metavar="RUN|SWEEP|PIPELINE...")
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0),
    default=None,
    help="Give up after this many seconds (exit 124).",
)
@click.option(
    "--interval",
    "interval_s",
    type=click.FloatRange(min=0.2),
    default=1.0,
    show_default=True,
    help="Seconds between checks.",
)
@json_option
@pass_ctx
def wait(
    obj: Context,
    runs: tuple[int | str, ...],
    timeout_s: float | None,
    interval_s: float,
    as_json: bool,
) -> None:
    """Wait until runs have ended; exit 0 only if all COMPLETED.

    A sweep (s7) has ended when all its points have; it COMPLETED when they all did. A
    pipeline (p3) likewise, by its steps.

    \b
    Exit status: 0 all COMPLETED; 1 some ended otherwise (FAILED, CANCELLED, TIMEOUT, ...);
    124 the --timeout passed first (like timeout(1)). For scripts:
      hpcops wait "$(hpcops submit train.yaml)" && echo trained
    """
    from hpcops.cli.output import print_json

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    pending = list(runs)
    ended: dict[int | str, dict[str, Any]] = {}
    while pending:
        for run in list(pending):
            data = obj.call("show", run=run)
            if data["state"] not in ACTIVE:
                ended[run] = data
                pending.remove(run)
        if not pending:
            break
        if deadline is not None and time.monotonic() >= deadline:
            waiting = ", ".join(str(r) for r in pending)
            click.echo(f"hpcops: still waiting for run(s) {waiting} after {timeout_s} s", err=True)
            sys.exit(124)
        time.sleep(interval_s)
    results = [
        {"id": r, "state": ended[r]["state"], "exit_code": ended[r].get("exit_code")} for r in runs
    ]
    if as_json:
        print_json(results if len(results) > 1 else results[0])
    else:
        for result in results:
            what = "run"
            if isinstance(result["id"], str):
                what = "pipeline" if result["id"].startswith("p") else "sweep"
            click.echo(
                f"{what} {result['id']}: {result['state']}"
                + (f" (exit {result['exit_code']})" if result["exit_code"] else "")
            )
    if any(r["state"] != "COMPLETED" for r in results):
        sys.exit(1)


@command()
@click.argument("run", type=click.IntRange(min=1))
@json_option
@pass_ctx
def why(obj: Context, run: int, as_json: bool) -> None:
    """Say in one line why a run is still waiting (or where it is)."""
    from hpcops.cli.output import print_json

    result = obj.call("why", run=run)
    if as_json:
        print_json(result)
        return
    click.echo(f"run {result['id']} ({result['state']}): {result['why']}")


COMMANDS = (list_runs, show, wait, logs, history, why)
