"""`hpcops`: the command line. It talks only to the daemon's API, never to the database.

Exit codes scripts can rely on: 0 success; 1 an operation failed; 2 invalid input (spec, config,
argument); 3 no daemon answers; 4 no such run or schedule; 5 permission denied. For
`hpcops wait`-style checks use `hpcops show RUN --json` and read `state`.

Heavy modules (pydantic, jinja2, SQLAlchemy) are imported inside the commands that need them so
that `hpcops --help` stays fast.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from hpcops import __version__

if TYPE_CHECKING:
    from hpcops.client.client import Client
    from hpcops.client.remote import RemoteClient

STATE_NAMES = (
    "QUEUED",
    "HELD",
    "STAGING",
    "SUBMITTING",
    "PENDING",
    "RUNNING",
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "OUT_OF_MEMORY",
    "NODE_FAIL",
    "PREEMPTED",
    "UNKNOWN",
)
ACTIVE = ("QUEUED", "HELD", "STAGING", "SUBMITTING", "PENDING", "RUNNING")
QUEUED_SHOWN = 30  # plain `hpcops ls` shows the head of the queue


class Context:
    def __init__(self, home: Path | None, debug: bool, remote: str | None) -> None:
        self.explicit_home = home
        self.debug = debug
        self.remote_name = remote
        self._client: Client | RemoteClient | None = None

    @property
    def home(self) -> Path:
        from hpcops.home import default_home

        return self.explicit_home or default_home()

    def client(self) -> Client | RemoteClient:
        """The daemon's API: over SSH when a remote is named (--remote, or the client config's
        default_remote), else the local socket. Either way one connection serves the call."""
        if self._client is None:
            from hpcops.client.config import load_client_config

            chosen = load_client_config().remote(self.remote_name)
            if chosen is not None and self.explicit_home is None:
                from hpcops.transport.lean_paramiko import skip_invoke_unless_needed

                skip_invoke_unless_needed()  # before paramiko is imported: every call pays it
                from hpcops.client.remote import RemoteClient

                self._client = RemoteClient(*chosen)
            else:
                from hpcops.client.client import Client
                from hpcops.home import HomePaths

                self._client = Client(HomePaths(self.home).socket)
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def call(self, method: str, **params: Any) -> Any:
        return self.client().call(method, **params)


pass_ctx = click.make_pass_decorator(Context)
json_option = click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print JSON (a stable interface, see the README) instead of text.",
)


class HpcopsGroup(click.Group):
    """Turns hpcops errors into one clear line and their exit code; --debug shows the traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        from hpcops.errors import HpcopsError

        try:
            return super().invoke(ctx)
        except HpcopsError as exc:
            obj = ctx.obj
            if isinstance(obj, Context) and obj.debug:
                raise
            _fail(str(exc), exc.exit_code)


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"hpcops: {message}", err=True)
    sys.exit(code)


@click.group(
    cls=HpcopsGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="hpcops")
@click.option(
    "--home",
    # No readability check: a member's shell cannot list the daemon's home, and the socket's
    # own "permission denied" is the message that explains it.
    type=click.Path(path_type=Path, readable=False),
    envvar="HPCOPS_HOME",
    help="The daemon's home (socket, database, logs). Default: $HPCOPS_HOME or ~/.hpcops.",
)
@click.option(
    "--remote",
    envvar="HPCOPS_REMOTE",
    metavar="NAME",
    help="Talk to the daemon on this remote (from the client config, ~/.config/hpcops/"
    "config.yaml) over SSH. Default: the config's default_remote, else this machine.",
)
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
@click.pass_context
def cli(ctx: click.Context, home: Path | None, remote: str | None, debug: bool) -> None:
    """hpcops: the lab's experiment queue in front of Slurm.

    \b
    Write a spec (YAML), check it, submit it, follow it:
      hpcops validate train.yaml
      hpcops render train.yaml        # the exact sbatch script
      hpcops submit train.yaml        # prints the run id
      hpcops ls                       # the lab's runs
      hpcops show 12                  # state, Slurm job, exit code, accounting
      hpcops logs 12 --follow
      hpcops wait 12                  # exit 0 once it COMPLETED, 1 if it ended otherwise
      hpcops cancel 12
      hpcops rerun 12 --set params.lr=0.01   # again, from its MLflow record

    \b
    The lab's queue:
      hpcops why 12                   # why it still waits
      hpcops priority 12 50           # members: own runs, within the member range
      hpcops hold 12 / release 12
      hpcops top 12                   # leads: goes next
      hpcops quota show / quota set lab gpus 4
      hpcops audit                    # every change and refusal

    \b
    Scheduled retraining:
      hpcops schedule add train.yaml --cron "0 3 * * 1"
      hpcops schedule ls / show NAME / pause / resume / rm / run-now

    \b
    The daemon (one per lab) owns the queue: `hpcops daemon start`.
    Exit codes: 0 ok, 1 failed, 2 invalid input, 3 no daemon, 4 no such run/schedule,
    5 not allowed.
    """
    ctx.obj = Context(home, debug, remote)
    ctx.call_on_close(ctx.obj.close)


# --- specs -----------------------------------------------------------------------------------


@cli.command()
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


@cli.command()
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


@cli.command()
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


# --- reading ---------------------------------------------------------------------------------


@cli.command("ls")
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
    help="At most this many runs, newest first.",
)
@json_option
@pass_ctx
def list_runs(
    obj: Context, states: tuple[str, ...], show_all: bool, limit: int | None, as_json: bool
) -> None:
    """List the lab's runs in queue order, with why each waits.

    \b
    Order: running and pending in Slurm, then queued runs in the order hpcops will release
    them (priority, then fair share, then submission time), then held runs, then the most
    recent ended runs. --state and --all list newest first within that order.
    """
    from hpcops.cli.output import human_duration, local_time, print_json, table

    if states:
        runs = obj.call("list", states=[s.upper() for s in states], limit=limit)
    elif show_all:
        runs = obj.call("list", limit=limit)
    else:
        active = obj.call("list", states=list(ACTIVE), limit=limit)
        ended = obj.call(
            "list", states=[s for s in STATE_NAMES if s not in ACTIVE], limit=min(limit or 20, 20)
        )
        runs = active + ended
    if as_json:
        print_json(runs)
        return
    if not runs:
        click.echo("no runs")
        return
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
            r["state"],
            r["owner"],
            str(r["priority"]),
            r["slurm_job_id"] or "-",
            local_time(r["created_at"]),
            human_duration(r["elapsed_s"]),
            _exit_text(r),
            r["name"],
            r.get("wait_reason") or "",
        ]
        for r in runs
    ]
    headers = ["ID", "STATE", "OWNER", "PRIO", "JOB", "QUEUED", "ELAPSED", "EXIT", "NAME", "WHY"]
    click.echo(table(headers, rows))
    if hidden:
        click.echo(f"... and {hidden} more queued runs (hpcops ls --state QUEUED)")


def _exit_text(run: dict[str, Any]) -> str:
    if run["exit_code"] is None:
        return "-"
    if run.get("signal"):
        return f"{run['exit_code']}:{run['signal']}"
    return str(run["exit_code"])


@cli.command()
@click.argument("run", type=click.IntRange(min=1))
@json_option
@pass_ctx
def show(obj: Context, run: int, as_json: bool) -> None:
    """Everything about one run: state, Slurm job, exit code, accounting, stderr tail."""
    from hpcops.cli.output import human_bytes, human_duration, local_time, print_json

    data = obj.call("show", run=run)
    if as_json:
        print_json(data)
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
    if data.get("stderr_tail"):
        click.echo("stderr (last lines):")
        for line in data["stderr_tail"].splitlines():
            click.echo(f"  | {line}")


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


@cli.command()
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
    if run.isdigit():
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


@cli.command()
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
    click.echo(table(["WHEN", "WHO", "FROM", "TO", "WHY"], rows))


@cli.command()
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


@cli.command()
@click.argument("runs", nargs=-1, required=True, type=click.IntRange(min=1))
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
    obj: Context, runs: tuple[int, ...], timeout_s: float | None, interval_s: float, as_json: bool
) -> None:
    """Wait until runs have ended; exit 0 only if all COMPLETED.

    \b
    Exit status: 0 all COMPLETED; 1 some ended otherwise (FAILED, CANCELLED, TIMEOUT, ...);
    124 the --timeout passed first (like timeout(1)). For scripts:
      hpcops wait "$(hpcops submit train.yaml)" && echo trained
    """
    from hpcops.cli.output import print_json

    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    pending = list(runs)
    ended: dict[int, dict[str, Any]] = {}
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
        {"id": r, "state": ended[r]["state"], "exit_code": ended[r]["exit_code"]} for r in runs
    ]
    if as_json:
        print_json(results if len(results) > 1 else results[0])
    else:
        for result in results:
            click.echo(
                f"run {result['id']}: {result['state']}"
                + (f" (exit {result['exit_code']})" if result["exit_code"] else "")
            )
    if any(r["state"] != "COMPLETED" for r in results):
        sys.exit(1)


# --- changing --------------------------------------------------------------------------------


@cli.command()
@click.argument("runs", nargs=-1, required=True, type=click.IntRange(min=1))
@json_option
@pass_ctx
def cancel(obj: Context, runs: tuple[int, ...], as_json: bool) -> None:
    """Cancel runs: queued ones at once, ones in Slurm with scancel.

    Members cancel their own runs; leads any run.
    """
    _run_action(obj, "cancel", runs, as_json)


def _run_action(
    obj: Context, method: str, runs: tuple[int, ...], as_json: bool, **params: Any
) -> None:
    from hpcops.cli.output import print_json

    results = [obj.call(method, run=run, **params) for run in runs]
    if as_json:
        print_json(results if len(results) > 1 else results[0])
        return
    for result in results:
        click.echo(result["message"])


@cli.command()
@click.argument("run", type=click.IntRange(min=1))
@click.argument("value", type=click.IntRange(-1000, 1000), metavar="PRIORITY")
@json_option
@pass_ctx
def priority(obj: Context, run: int, value: int, as_json: bool) -> None:
    """Set a run's priority in the lab's queue (higher goes first).

    Members may set their own runs within the lab's member range; leads any run, any value.
    """
    _run_action(obj, "priority", (run,), as_json, priority=value)


@cli.command()
@click.argument("runs", nargs=-1, required=True, type=click.IntRange(min=1))
@json_option
@pass_ctx
def hold(obj: Context, runs: tuple[int, ...], as_json: bool) -> None:
    """Keep queued runs from being released until `hpcops release`."""
    _run_action(obj, "hold", runs, as_json)


@cli.command()
@click.argument("runs", nargs=-1, required=True, type=click.IntRange(min=1))
@json_option
@pass_ctx
def release(obj: Context, runs: tuple[int, ...], as_json: bool) -> None:
    """Let held runs be released again (they keep their place in the queue)."""
    _run_action(obj, "release", runs, as_json)


@cli.command()
@click.argument("run", type=click.IntRange(min=1))
@json_option
@pass_ctx
def top(obj: Context, run: int, as_json: bool) -> None:
    """Move a run to the top of the lab's queue: it goes next (leads only)."""
    _run_action(obj, "top", (run,), as_json)


@cli.command()
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


@cli.group()
def quota() -> None:
    """Show the lab's quotas and what is in use; leads change them."""


QUOTA_SCOPE_HELP = "lab | per_user | user:NAME | partition:NAME"


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
    else:
        raise InvalidInput(f"a quota is a whole number or 'none', not {value!r}")
    result = obj.call("quota_set", scope=scope, resource=resource, value=number)
    if as_json:
        print_json(result)
        return
    click.echo(result["message"])


@cli.command()
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


# --- schedules -------------------------------------------------------------------------------


@cli.group()
def schedule() -> None:
    """Queue a spec again and again: scheduled retraining.

    Each firing queues a fresh run of the spec, owned by the schedule's owner and checked like
    `hpcops submit` (role, priority range, cluster limits; quotas hold it in the queue). The run
    records its schedule and firing (`hpcops show`).

    \b
      hpcops schedule add train.yaml --cron "0 3 * * 1"      # Mondays 03:00, local zone
      hpcops schedule add train.yaml --cron "30 2 * * *" --timezone Europe/Berlin --name nightly
      hpcops schedule add eval.yaml --every 3600             # an interval in seconds
      hpcops schedule add train.yaml --on-data-change        # when its DVC data changes
      hpcops schedule ls                                     # status, next firing, last outcome
      hpcops schedule show nightly                           # recent firings and their runs
      hpcops schedule pause nightly / resume nightly / rm nightly
      hpcops schedule run-now nightly                        # one firing now; prints the run id

    A spec may carry the same settings in a schedule: block (cron, every_s or on_data_change with
    check_every_s, timezone, name, catch_up, catch_up_grace_s, allow_overlap); options given
    here win. Only a schedule's owner
    or a lead may pause, resume, remove or run it; every change is audited.
    """


SCHEDULE_ARG_HELP = "a schedule's id or name"


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
    """
    from hpcops.cli.output import print_json
    from hpcops.spec import load_spec_file, spec_to_yaml

    if cron is not None and every_s is not None:
        raise click.UsageError("give --cron or --every, not both")
    if on_data_change and (cron is not None or every_s is not None):
        raise click.UsageError(
            "--on-data-change is a trigger of its own; give it, --cron or --every, not two"
        )
    spec = load_spec_file(spec_path)
    params: dict[str, Any] = {
        "yaml": spec_to_yaml(spec),
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
            outcome = last["outcome"] + (f" run {last['run_id']}" if last["run_id"] else "")
        problem = s["problem"] or s["last_error"] or ""
        check = s["last_check"]
        rows.append(
            [
                str(s["id"]),
                s["name"],
                s["owner"],
                s["status"],
                s["cadence"],
                _when(s["next_fire_at"]),
                f"{_when(check['at'])} {check['summary']}" if check else "-",
                outcome,
                problem.splitlines()[0] if problem else "",
            ]
        )
    headers = ["ID", "NAME", "OWNER", "STATUS", "WHEN", "NEXT", "CHECKED", "LAST", "PROBLEM"]
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
    overlap = "allowed" if data["allow_overlap"] else "skipped while a run is active"
    lines = [
        ("schedule", f"{data['id']}  {data['name']}  (spec {data['spec_name']})"),
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
            str(f["run_id"] or "-"),
            f["run_state"] or "-",
            f["reason"] or "",
        ]
        for f in firings
    ]
    click.echo(table(["FIRING", "FOR", "KIND", "OUTCOME", "RUN", "STATE", "WHY"], rows))


def _schedule_action(obj: Context, method: str, refs: tuple[str, ...], as_json: bool) -> None:
    from hpcops.cli.output import print_json

    results = [obj.call(method, schedule=ref) for ref in refs]
    if as_json:
        print_json(results if len(results) > 1 else results[0])
        return
    for result in results:
        click.echo(result["message"])


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
    """Fire a schedule once, now (owner or lead); print the new run's id.

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
        click.echo(firing["run_id"])
    if firing["outcome"] != "submitted":
        if not as_json:
            click.echo(f"hpcops: {result['message']}", err=True)
        sys.exit(1)


# --- the daemon ------------------------------------------------------------------------------


_DURATION_UNITS: dict[str, int] = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE_UNITS: dict[str, int] = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """30d, 12h, 90m, 45s: a duration in seconds."""
    if value is None:
        return None
    text = value.strip().lower()
    if len(text) > 1 and text[:-1].isdigit() and text[-1] in _DURATION_UNITS:
        return int(text[:-1]) * _DURATION_UNITS[text[-1]]
    raise click.BadParameter(f"{value!r} is not a duration such as 30d, 12h, 90m or 45s")


def _size(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    """500G, 2T, 800M or a number of bytes: a size in bytes."""
    if value is None:
        return None
    text = value.strip().lower().removesuffix("b").removesuffix("i")
    unit = text[-1:] if text[-1:] in _SIZE_UNITS else ""
    number = text[: len(text) - len(unit)]
    if number.isdigit():
        return int(number) * _SIZE_UNITS[unit]
    raise click.BadParameter(f"{value!r} is not a size such as 500G, 2T or 800M")


@cli.group()
def cache() -> None:
    """The lab's data cache on scratch: which data versions it holds, and gc."""


@cache.command("ls")
@json_option
@pass_ctx
def cache_ls(obj: Context, as_json: bool) -> None:
    """Data versions the lab's runs used: size, files, last use, runs, whether cached.

    \b
    --json: a list of {"md5", "paths", "repos", "size", "nfiles", "runs", "last_used",
    "needed", "in_cache"}; in_cache is complete, partial or absent; needed means a queued or
    active run uses it (gc keeps it).
    """
    from hpcops.cli.output import human_bytes, local_time, print_json, table

    versions = obj.call("cache_ls")
    if as_json:
        print_json(versions)
        return
    rows = [
        [
            v["md5"][:14],
            ",".join(v["paths"]),
            human_bytes(v["size"]),
            str(v["nfiles"] or "-"),
            local_time(v["last_used"]),
            _short_list(v["runs"]),
            v["in_cache"] + (" (needed)" if v["needed"] else ""),
        ]
        for v in versions
    ]
    click.echo(
        table(["VERSION", "PATH", "SIZE", "FILES", "LAST USE", "RUNS", "CACHE"], rows, shrink=1)
    )


@cache.command("gc")
@click.option(
    "--older-than",
    "older",
    callback=_duration,
    default=None,
    help="Remove versions no run used for this long (30d, 12h).",
)
@click.option(
    "--max-size",
    "max_size",
    callback=_size,
    default=None,
    help="Then remove the least recently used until the rest fits (500G, 2T).",
)
@click.option("--dry-run", is_flag=True, help="Say what would go; remove nothing.")
@json_option
@pass_ctx
def cache_gc(
    obj: Context, older: int | None, max_size: int | None, dry_run: bool, as_json: bool
) -> None:
    """Free the data cache (leads only). Never removes a version a queued or active run needs.

    \b
      hpcops cache gc --older-than 30d --max-size 500G
      hpcops cache gc --max-size 200G --dry-run
    """
    from hpcops.cli.output import human_bytes, print_json

    result = obj.call("cache_gc", older_than_s=older, max_bytes=max_size, dry_run=dry_run)
    if as_json:
        print_json(result)
        return
    verb = "would remove" if dry_run else "removed"
    for item in result["removed"]:
        click.echo(f"{verb} {item['md5']} ({', '.join(item['paths'])}): {item['reason']}")
    if not dry_run:
        click.echo(
            f"{result['files_removed']} files, {human_bytes(result['bytes_freed'])} freed; "
            f"{result['kept']} versions kept"
        )


def _short_list(ids: list[int], shown: int = 4) -> str:
    text = ",".join(str(i) for i in ids[-shown:])
    return f"…{text} ({len(ids)})" if len(ids) > shown else text


@cli.group()
def daemon() -> None:
    """Start, stop and inspect the lab's daemon (one per home)."""


config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    help="Config file (default: $HPCOPS_HOME/config.yaml; see configs/hpcops.yaml).",
)


@daemon.command("run")
@config_option
@pass_ctx
def daemon_run(obj: Context, config_path: Path | None) -> None:
    """Run the daemon in the foreground (logs also to stderr)."""
    from hpcops.daemon import run_daemon

    run_daemon(obj.home, config_path, foreground=True)


@daemon.command("start")
@config_option
@pass_ctx
def daemon_start(obj: Context, config_path: Path | None) -> None:
    """Start the daemon in the background; returns once it answers."""
    from hpcops.config import load_config
    from hpcops.daemon import start_background
    from hpcops.home import HomePaths

    load_config(config_path, obj.home)  # a bad config is the caller's error, shown here
    pid = start_background(obj.home, config_path.resolve() if config_path else None)
    click.echo(f"hpcops daemon started (pid {pid}); log: {HomePaths(obj.home).log}")


@daemon.command("stop")
@pass_ctx
def daemon_stop(obj: Context) -> None:
    """Stop the daemon (SIGTERM) and wait until it has exited."""
    from hpcops.daemon import stop_daemon

    pid = stop_daemon(obj.home)
    click.echo(f"hpcops daemon {pid} stopped")


@daemon.command("status")
@json_option
@pass_ctx
def daemon_status(obj: Context, as_json: bool) -> None:
    """Is the daemon running, and is Slurm answering it? Exit 3 if no daemon answers."""
    from hpcops.cli.output import human_duration, print_json

    info = obj.call("ping")
    if as_json:
        print_json(info)
        return
    slurm = info["slurm"]
    click.echo(
        f"daemon:  running, pid {info['pid']}, up {human_duration(info['uptime_s'])}, "
        f"hpcops {info['version']}, lab {info['lab']}"
    )
    click.echo(f"home:    {info['home']}")
    if slurm.get("transport") == "ssh":
        click.echo(
            f"cluster: over SSH, {slurm['ssh_connections_opened']} connection(s) opened so far"
        )
    if slurm["reachable"]:
        click.echo(f"slurm:   reachable (last poll {slurm['last_poll_at'] or 'not yet'})")
    else:
        click.echo(
            f"slurm:   UNREACHABLE since {slurm['unreachable_since']}: "
            f"{slurm['last_error']} (retrying)"
        )
    counts = ", ".join(f"{n} {state.lower()}" for state, n in sorted(info["runs"].items()))
    click.echo(f"runs:    {counts or 'none'}")


@cli.command(hidden=True)
@pass_ctx
def api(obj: Context) -> None:
    """Relay API requests from stdin to the daemon's socket (what `--remote` runs over SSH)."""
    from hpcops.client.relay import relay
    from hpcops.home import HomePaths

    relay(HomePaths(obj.home).socket, sys.stdin.buffer, sys.stdout.buffer)


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script: eval "$(hpcops completion bash)"."""
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    assert cls is not None
    click.echo(cls(cli, {}, "hpcops", "_HPCOPS_COMPLETE").source())


def main() -> None:
    cli(prog_name="hpcops")
