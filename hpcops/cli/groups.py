"""How groups of runs are drawn for `ls` and `show`: a sweep's table and detail, a pipeline's
one-line steps and its graph, and the state text a run shows in both (cli/runs.py's commands
call these)."""

from __future__ import annotations

from typing import Any

import click


def state_text(run: dict[str, Any]) -> str:
    """`RUNNING`, and on a later attempt which one: `RUNNING (2/4)`; past the spec's attempts
    (retried by hand), `FAILED (5)`."""
    number = run.get("attempt_number") or 1
    if number <= 1:
        return str(run["state"])
    limit = run.get("max_attempts") or 1
    return f"{run['state']} ({number}/{limit})" if number <= limit else f"{run['state']} ({number})"


def exit_text(run: dict[str, Any]) -> str:
    if run["exit_code"] is None:
        return "-"
    if run.get("signal"):
        return f"{run['exit_code']}:{run['signal']}"
    return str(run["exit_code"])


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


def show_sweep(data: dict[str, Any]) -> None:
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


def show_pipeline(data: dict[str, Any]) -> None:
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
