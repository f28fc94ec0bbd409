"""Commands that take spec files: validate, render, submit; and rerun, a spec from a record."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from hpcops.cli.context import Context, json_option, pass_ctx
from hpcops.cli.parsing import command
from hpcops.cli.queued import per_spec, queued_lines, quick_submit, sweep_queued

if TYPE_CHECKING:
    from hpcops.config import Config
    from hpcops.jobcontext import Placement
    from hpcops.pipeline import Pipeline as LoadedPipeline
    from hpcops.spec import Spec


@command()
@click.argument("specs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--offline",
    is_flag=True,
    help="Check only the spec itself; skip the daemon's checks against the cluster.",
)
@json_option
@pass_ctx
def validate(obj: Context, specs: tuple[Path, ...], offline: bool, as_json: bool) -> None:
    """Check spec files (and pipeline files) without queueing anything.

    Every problem names its field and what is allowed. With a daemon running, also checks the
    partition and time limit against the cluster. Exit status 2 if any spec is invalid.

    A sweep spec lists its points: how many, and each point's values (the first ones; --json
    lists them all: {"path", "valid", "name", "sweep": {"n_points", "points"}} per spec).

    A pipeline file (a file with steps:) is checked with every spec file its steps name, and
    its steps are listed in the order they run: name, kind (run, sweep or register), what each
    waits for. --json: {"path", "valid", "type": "pipeline", "name", "steps": [{"name",
    "kind", "spec", "after", "inputs", "n_points"}]}.
    """
    from hpcops.errors import InvalidInput, NotRunning
    from hpcops.specfile import spec_file_item

    failed = False
    cluster_checked = not offline
    answers: list[dict[str, Any]] = []

    def ask_daemon(spec: Spec, source: str) -> None:
        from hpcops.spec import spec_to_yaml

        nonlocal cluster_checked
        if offline:
            return
        try:
            obj.call("validate", yaml=spec_to_yaml(spec), source=source)
        except NotRunning:
            cluster_checked = False

    for path in specs:
        is_pipeline = False
        # The daemon validates a plain spec's text itself: no pydantic here (issue 16).
        item = None if offline or not cluster_checked else spec_file_item(path)
        try:
            if item is not None:
                try:
                    answer = obj.call("validate", **item)
                    name, sweep = answer["name"], answer["sweep"]
                except NotRunning:
                    cluster_checked, item = False, None
            if item is None:
                from hpcops.api.sweeps import sweep_preview
                from hpcops.pipeline import is_pipeline_file, load_pipeline_file
                from hpcops.spec import load_spec_file

                is_pipeline = is_pipeline_file(path)
                if is_pipeline:
                    pipeline = load_pipeline_file(path)
                    for step, step_spec in pipeline.specs.items():
                        ask_daemon(step_spec, f"{path}, step {step}")
                else:
                    spec = load_spec_file(path)
                    ask_daemon(spec, str(path))
                    name, sweep = spec.name, sweep_preview(spec)
        except InvalidInput as exc:
            answers.append({"path": str(path), "valid": False, "error": str(exc)})
            if not as_json:
                click.echo(str(exc), err=True)
            failed = True
            continue
        if is_pipeline:
            answers.append(pipeline_preview(path, pipeline))
            if not as_json:
                click.echo(pipeline_preview_text(answers[-1]))
            continue
        answers.append({"path": str(path), "valid": True, "name": name, "sweep": sweep})
        if as_json:
            continue
        if sweep is None:
            click.echo(f"{path}: ok ({name})")
        else:
            click.echo(f"{path}: ok ({name}): a sweep of {sweep['n_points']} points")
            points = sweep["points"]
            click.echo(points_table(points) if points is not None else f"  points {sweep['note']}")
    if as_json:
        from hpcops.cli.output import print_json

        print_json(answers[0] if len(answers) == 1 else answers)
    if not cluster_checked and not offline:
        click.echo(
            "note: no daemon answered, so partitions and time limits were not checked", err=True
        )
    if failed:
        sys.exit(2)


def pipeline_preview(path: Path, pipeline: LoadedPipeline) -> dict[str, Any]:
    """What `validate` says of a pipeline file: its steps in the order they run."""
    from hpcops.pipeline import topological_order

    steps = []
    for name in topological_order(pipeline.graph):
        step, spec = pipeline.steps[name], pipeline.specs.get(name)
        kind = "register" if spec is None else ("sweep" if spec.sweep is not None else "run")
        steps.append(
            {
                "name": name,
                "kind": kind,
                "spec": step.spec,
                "after": list(step.after),
                "inputs": dict(step.inputs),
                "n_points": spec.sweep.n_points if spec is not None and spec.sweep else None,
            }
        )
    return {
        "path": str(path),
        "valid": True,
        "type": "pipeline",
        "name": pipeline.name,
        "steps": steps,
    }


def pipeline_preview_text(preview: dict[str, Any]) -> str:
    """`pipeline.yaml: ok (pipeline digits-retrain): 4 steps` and a line per step."""
    from hpcops.cli.output import table

    steps = preview["steps"]
    rows = [
        [
            step["name"],
            step["kind"] + (f" of {step['n_points']} points" if step["n_points"] else ""),
            step["spec"] or "-",
            ", ".join(step["after"]) or "-",
            " ".join(f"{k}={v}" for k, v in step["inputs"].items()),
        ]
        for step in steps
    ]
    head = f"{preview['path']}: ok (pipeline {preview['name']}): {len(steps)} steps"
    return head + "\n" + table(["STEP", "KIND", "SPEC", "AFTER", "INPUTS"], rows, shrink=4)


POINTS_SHOWN = 20  # validate's table of a sweep's points shows the first ones


def points_table(points: list[dict[str, Any]]) -> str:
    """The first POINTS_SHOWN points, one column per key (as the sweep names them)."""
    from hpcops.cli.groups import value_text
    from hpcops.cli.output import table

    keys: list[str] = []
    for point in points:
        keys += [key for key in point if key not in keys]
    rows = [
        [str(index), *(value_text(point[k]) if k in point else "-" for k in keys)]
        for index, point in enumerate(points[:POINTS_SHOWN])
    ]
    text = table(["POINT", *(k.upper() for k in keys)], rows)
    if len(points) > POINTS_SHOWN:
        text += f"\n... and {len(points) - POINTS_SHOWN} more points (--json lists them all)"
    return text


@command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(path_type=Path))
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    help="Daemon config to render with (default: $HPCOPS_HOME/config.yaml).",
)
@click.option(
    "--point",
    type=click.IntRange(min=0),
    help="For a sweep: print this point's own script (what its array task runs) instead of "
    "the array's script.",
)
@pass_ctx
def render(obj: Context, spec_path: Path, config_path: Path | None, point: int | None) -> None:
    """Print the exact sbatch script SPEC would be submitted as.

    The run id and token are placeholders until the daemon queues the run. For a sweep, the
    script of the Slurm array its first points go in (those sharing point 0's resources), which
    sends each task to its point's own script; --point N prints that script.
    """
    from hpcops.config import load_config
    from hpcops.jobcontext import Placement, build_job_context
    from hpcops.render import render_script
    from hpcops.spec import load_spec_file

    config = load_config(config_path, obj.home)
    spec = load_spec_file(spec_path)
    placement = Placement.of(config, obj.home)
    if spec.sweep is None:
        if point is not None:
            raise click.UsageError(f"{spec_path} is not a sweep: it has no points")
        context = build_job_context(spec, config, placement, 0, "0" * 16)
        click.echo(render_script(spec, context, config.template_dirs), nl=False)
        return
    click.echo(_render_sweep(spec, config, placement, point), nl=False)


def _render_sweep(spec: Spec, config: Config, placement: Placement, point: int | None) -> str:
    """A sweep's array script, or one point's script, with placeholder run ids (point i is run
    i) and token; a random search without a seed renders with seed 0."""
    from pathlib import PurePosixPath

    from hpcops.arrayscript import ArrayTask, render_array_script
    from hpcops.jobcontext import array_dir_path, build_job_context, run_dir_path
    from hpcops.render import render_script
    from hpcops.rundir import RunDir
    from hpcops.slurm.arrays import DEFAULT_MAX_ARRAY_SIZE
    from hpcops.spec import pin_sweep_seed, point_specs

    token = "0" * 16
    points = point_specs(pin_sweep_seed(spec, 0))
    if point is not None:
        if point >= len(points):
            raise click.UsageError(f"--point {point}: the sweep has points 0 to {len(points) - 1}")
        ctx = build_job_context(points[point], config, placement, point, token)
        return render_script(points[point], ctx, config.template_dirs)
    first = points[0]
    same = [
        i
        for i, one in enumerate(points[:DEFAULT_MAX_ARRAY_SIZE])
        if one.resources == first.resources
    ]
    tasks = [ArrayTask(i, RunDir(run_dir_path(placement.run_root, i))) for i in same]
    ctx = build_job_context(first, config, placement, 0, token)
    array_dir = PurePosixPath(array_dir_path(placement.run_root, token))
    return render_array_script(first, ctx, tasks, array_dir)


@command()
@click.argument("specs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--allow-dirty",
    is_flag=True,
    help="Ship uncommitted changes of a spec's code repository as a snapshot commit on top "
    "of HEAD; the run is marked dirty. Without it, a dirty tree is refused.",
)
@json_option
@pass_ctx
def submit(obj: Context, specs: tuple[Path, ...], allow_dirty: bool, as_json: bool) -> None:
    """Queue one or more specs, or one pipeline; print each new run's id (a sweep's: `queued
    sweep s7: ...`, a pipeline's: `queued pipeline p3: ...` and a line per step).

    All specs are checked first: if any is invalid, none is queued (exit 2). The daemon releases
    queued runs into Slurm in priority order, up to the lab's limits.

    A spec with `code: {repo: ., commit: HEAD}` runs that exact commit: hpcops resolves it here,
    refuses uncommitted changes (unless --allow-dirty), and ships only the git objects the lab's
    mirror lacks. The job checks the commit out into its run directory.

    A pipeline file (name: and steps:, each step a spec file or a register: promotion) is
    submitted on its own: every step is queued at once, and each is released only when the
    steps in its after: COMPLETED. Each step's code is shipped as a spec's is.

    \b
      hpcops submit configs/examples/pipeline/pipeline.yaml
      queued pipeline p3: digits-retrain, 4 steps
        prepare   run       run 12
        train     sweep     sweep s4 (runs 13-16)
        ...

    \b
    --json prints {"type": "run", "id": N, "name": ..., "code": {...}} for one spec, a list of
    those for several; "code" (specs with code: only) has repo, commit, dirty and bundle_bytes.
    A sweep spec's is {"type": "sweep", "id": "s7", "sweep_id": 7, "n_points", "runs": [...]}.
    A pipeline's is {"type": "pipeline", "id": "p3", "pipeline_id": 3, "name", "state",
    "steps": [{"name", "kind", "run_id", "sweep", "runs"}], "code": {step: {...}}}.
    """
    queued = quick_submit(specs, lambda items: obj.call("submit", specs=items))
    if queued is not None:
        _print_queued(queued, as_json)
        return
    from hpcops.client.ship import prepare
    from hpcops.errors import InvalidInput
    from hpcops.pipeline import is_pipeline_file
    from hpcops.spec import load_spec_file

    pipelines = [path for path in specs if is_pipeline_file(path)]
    if pipelines and len(specs) > 1:
        raise InvalidInput(
            f"{pipelines[0]} is a pipeline: submit it on its own (hpcops submit "
            f"{pipelines[0]}); nothing was queued"
        )
    if pipelines:
        _submit_pipeline(obj, pipelines[0], allow_dirty, as_json)
        return
    loaded, problems = [], []
    for path in specs:
        try:
            spec = load_spec_file(path)
            loaded.append((spec, str(path)))
        except InvalidInput as exc:
            problems.append(str(exc))
            continue
        if spec.schedule is not None:
            click.echo(
                f"note: {path} has a schedule: block; submit queues it once, now. "
                f"`hpcops schedule add {path}` schedules it.",
                err=True,
            )
    if problems:
        raise InvalidInput("\n".join(problems) + "\nnothing was queued")
    prepared = prepare(obj.client(), loaded, allow_dirty=allow_dirty, quiet=as_json)
    result = obj.call("submit", specs=[p.request_item() for p in prepared])
    queued = per_spec(result)
    for entry, item in zip(queued, prepared, strict=True):
        if item.shipped:
            entry["code"] = item.shipped
    _print_queued(queued, as_json)


def _print_queued(queued: list[dict[str, Any]], as_json: bool) -> None:
    for line in queued_lines(queued, as_json):
        click.echo(line)


def _submit_pipeline(obj: Context, path: Path, allow_dirty: bool, as_json: bool) -> None:
    """Load the pipeline and its steps' specs here (exit 2 on any problem, nothing sent), ship
    each step's code as a spec's, and queue it in one request."""
    from hpcops.client.ship import prepare
    from hpcops.errors import InvalidInput
    from hpcops.pipeline import Pipeline, load_pipeline_file, pipeline_to_wire

    try:
        loaded = load_pipeline_file(path)
    except InvalidInput as exc:
        raise InvalidInput(f"{exc}\nnothing was queued") from None
    names = list(loaded.specs)
    prepared = prepare(
        obj.client(),
        [(loaded.specs[name], f"{path}, step {name}") for name in names],
        allow_dirty=allow_dirty,
        quiet=as_json,
    )
    by_step = dict(zip(names, prepared, strict=True))
    pinned = Pipeline(loaded.source, loaded.definition, {n: p.spec for n, p in by_step.items()})
    code = {name: p.code for name, p in by_step.items() if p.code is not None}
    result = obj.call("submit_pipeline", pipeline=pipeline_to_wire(pinned), code=code)
    shipped = {name: p.shipped for name, p in by_step.items() if p.shipped}
    if shipped:
        result["code"] = shipped
    if as_json:
        from hpcops.cli.output import print_json

        print_json(result)
        return
    click.echo(pipeline_queued(result))


def pipeline_queued(result: dict[str, Any]) -> str:
    """`queued pipeline p3: digits-retrain, 4 steps` and a line per step with its run(s)."""
    from hpcops.cli.output import table
    from hpcops.describe import id_ranges

    rows = []
    for step in result["steps"]:
        if step["sweep"]:
            what = f"sweep {step['sweep']} (runs {id_ranges(step['runs'])})"
        elif step["run_id"] is not None:
            what = f"run {step['run_id']}"
        else:
            what = "no job: a promotion, once the steps before it COMPLETED"
        rows.append([f"  {step['name']}", step["kind"], what])
    head = f"queued pipeline {result['id']}: {result['name']}, {len(rows)} steps"
    lines = table(["", "", ""], rows).splitlines()[1:]  # no header: the lines say it
    return "\n".join([head, *lines])


@command()
@click.argument("run", metavar="RUN|SWEEP|PIPELINE.STEP")
@click.option(
    "--set",
    "assignments",
    multiple=True,
    metavar="KEY=VALUE",
    help="Change one field of the recorded spec (repeatable): params.NAME, tags.NAME, "
    "resources.FIELD, priority or name. Values are read like YAML: 0.01, 3, true, text.",
)
@click.option(
    "--downstream",
    is_flag=True,
    help="With a pipeline's step (p3.train): also run again every step after it.",
)
@json_option
@pass_ctx
def rerun(
    obj: Context, run: str, assignments: tuple[str, ...], downstream: bool, as_json: bool
) -> None:
    """Run an experiment again from its record; print the new run's id.

    RUN is an hpcops run id (12), a sweep (s7: all its points again, as a new sweep; no
    --set) or an MLflow run id (32 hex digits, from `hpcops show` or the MLflow UI). A point of
    a sweep is rerun into the same sweep. The spec is rebuilt from the record: the same command,
    code commit, data and params, unless --set changes them. The new run is yours, and the two
    MLflow records are linked both ways (tags hpcops.rerun_of and hpcops.rerun_by).

    A pipeline's step is PIPELINE.STEP (p3.train): that step runs again in its pipeline, from
    the spec it was queued with (same code commit and data), waiting for its parents as at
    first; --downstream runs every step after it again too (evaluate, promote). The step must
    have ended (cancel it first). The pipeline's owner or a lead only; no --set.

    \b
      hpcops rerun 12
      hpcops rerun 12 --set params.lr=0.01 --set params.seed=3
      hpcops rerun 4f1c0a9e2b6d4f7e8a1b2c3d4e5f6a7b --json
      hpcops rerun p3.train --downstream
    """
    from hpcops.errors import InvalidInput
    from hpcops.tracking.rerun import parse_assignments

    step = _pipeline_step(run)
    if step is not None:
        if assignments:
            raise InvalidInput(
                f"--set changes one run's spec; {run} runs again as it was queued. Submit an "
                "edited copy of the pipeline instead"
            )
        result = obj.call("rerun_step", pipeline=step[0], step=step[1], downstream=downstream)
        if as_json:
            from hpcops.cli.output import print_json

            print_json(result)
            return
        click.echo(result["message"])
        return
    if downstream:
        raise InvalidInput(
            f"--downstream goes with a pipeline's step, e.g. hpcops rerun p3.train "
            f"--downstream; {run!r} is not one"
        )
    source: int | str
    if run[:1] in ("s", "S"):
        from hpcops.cli.parsing import RUN_OR_SWEEP

        source = RUN_OR_SWEEP.convert(run, None, None)
    elif run.removeprefix("-").isdigit():
        source = int(run)
        if source < 1:
            raise InvalidInput(f"RUN {run!r}: a run id is a positive integer")
    elif len(run) == 32 and all(c in "0123456789abcdef" for c in run):
        source = run
    else:
        raise InvalidInput(
            f"RUN {run!r} is neither an hpcops run id (a number) nor an MLflow run id "
            "(32 hex digits)"
        )
    result = obj.call("rerun", run=source, set=parse_assignments(list(assignments)))
    if as_json:
        from hpcops.cli.output import print_json

        print_json(result)
        return
    if result.get("type") == "sweep":
        click.echo(f"queued {sweep_queued(result)}, a rerun of {result['rerun_of']}")
        return
    click.echo(result["id"])


_PIPELINE_STEP = re.compile(r"[pP]([1-9][0-9]{0,18})(?:\.(.*))?", re.DOTALL)


def _pipeline_step(word: str) -> tuple[str, str] | None:
    """`p3.train` as ("p3", "train"); None for a word that names no pipeline. A pipeline without
    its step is refused: rerun runs a step of it again, never the whole of it."""
    from hpcops.errors import InvalidInput

    found = _PIPELINE_STEP.fullmatch(word)
    if found is None:
        return None
    ref = f"p{int(found.group(1))}"
    if not found.group(2):
        raise InvalidInput(
            f"{word} is a pipeline: name the step to run again, e.g. hpcops rerun {ref}.train "
            f"(--downstream: and every step after it); hpcops show {ref} lists its steps"
        )
    return ref, found.group(2)


COMMANDS = (validate, render, submit, rerun)
