"""Commands that take spec files: validate, render, submit; and rerun, a spec from a record."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from hpcops.cli.context import Context, json_option, pass_ctx
from hpcops.cli.parsing import command


@command()
@click.argument("specs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--offline",
    is_flag=True,
    help="Check only the spec itself; skip the daemon's checks against the cluster.",
)
@pass_ctx
def validate(obj: Context, specs: tuple[Path, ...], offline: bool) -> None:
    """Check spec files without queueing anything.

    Every problem names its field and what is allowed. With a daemon running, also checks the
    partition and time limit against the cluster. Exit status 2 if any spec is invalid.
    """
    from hpcops.errors import InvalidInput, NotRunning
    from hpcops.spec import load_spec_file, spec_to_yaml

    failed = False
    cluster_checked = not offline
    for path in specs:
        try:
            spec = load_spec_file(path)
            if not offline:
                try:
                    obj.call("validate", yaml=spec_to_yaml(spec), source=str(path))
                except NotRunning:
                    cluster_checked = False
            click.echo(f"{path}: ok ({spec.name})")
        except InvalidInput as exc:
            click.echo(str(exc), err=True)
            failed = True
    if not cluster_checked and not offline:
        click.echo(
            "note: no daemon answered, so partitions and time limits were not checked", err=True
        )
    if failed:
        sys.exit(2)


@command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(path_type=Path))
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    help="Daemon config to render with (default: $HPCOPS_HOME/config.yaml).",
)
@pass_ctx
def render(obj: Context, spec_path: Path, config_path: Path | None) -> None:
    """Print the exact sbatch script SPEC would be submitted as.

    The run id and token are placeholders until the daemon queues the run.
    """
    from hpcops.config import load_config
    from hpcops.jobcontext import Placement, build_job_context
    from hpcops.render import render_script
    from hpcops.spec import load_spec_file

    config = load_config(config_path, obj.home)
    spec = load_spec_file(spec_path)
    context = build_job_context(spec, config, Placement.of(config, obj.home), 0, "0" * 16)
    click.echo(render_script(spec, context, config.template_dirs), nl=False)


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
    """Queue one or more specs; print each new run's id.

    All specs are checked first: if any is invalid, none is queued (exit 2). The daemon releases
    queued runs into Slurm in priority order, up to the lab's limits.

    A spec with `code: {repo: ., commit: HEAD}` runs that exact commit: hpcops resolves it here,
    refuses uncommitted changes (unless --allow-dirty), and ships only the git objects the lab's
    mirror lacks. The job checks the commit out into its run directory.

    \b
    --json prints {"id": N, "name": ..., "code": {...}} for one spec, a list of those for
    several; "code" (specs with code: only) has repo, commit, dirty and bundle_bytes.
    """
    from hpcops.client.ship import prepare
    from hpcops.errors import InvalidInput
    from hpcops.spec import load_spec_file

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
    runs = result["runs"]
    for run, item in zip(runs, prepared, strict=True):
        if item.shipped:
            run["code"] = item.shipped
    if as_json:
        from hpcops.cli.output import print_json

        print_json(runs[0] if len(runs) == 1 else runs)
        return
    for run in runs:
        click.echo(run["id"] if len(runs) == 1 else f"{run['id']}\t{run['name']}")


@command()
@click.argument("run", metavar="RUN")
@click.option(
    "--set",
    "assignments",
    multiple=True,
    metavar="KEY=VALUE",
    help="Change one field of the recorded spec (repeatable): params.NAME, tags.NAME, "
    "resources.FIELD, priority or name. Values are read like YAML: 0.01, 3, true, text.",
)
@json_option
@pass_ctx
def rerun(obj: Context, run: str, assignments: tuple[str, ...], as_json: bool) -> None:
    """Run an experiment again from its record; print the new run's id.

    RUN is an hpcops run id (12) or an MLflow run id (32 hex digits, from `hpcops show` or the
    MLflow UI). The spec is rebuilt from the record: the same command, code commit, data and
    params, unless --set changes them. The new run is yours, and the two MLflow records are
    linked both ways (tags hpcops.rerun_of and hpcops.rerun_by).

    \b
      hpcops rerun 12
      hpcops rerun 12 --set params.lr=0.01 --set params.seed=3
      hpcops rerun 4f1c0a9e2b6d4f7e8a1b2c3d4e5f6a7b --json
    """
    from hpcops.errors import InvalidInput
    from hpcops.tracking.rerun import parse_assignments

    source: int | str
    if run.removeprefix("-").isdigit():
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
    click.echo(result["id"])


COMMANDS = (validate, render, submit, rerun)
