"""`hpcops`: the command line. It talks only to the daemon's API, never to the database.

Exit codes scripts can rely on: 0 success; 1 an operation failed; 2 invalid input (spec, config,
argument); 3 no daemon answers; 4 no such run, sweep, pipeline or schedule; 5 permission denied. For
`hpcops wait`-style checks use `hpcops show RUN --json` and read `state`.

This module is the root: the global options, the one place errors become a message and an exit
code, and the list of commands. The commands live by group beside it: specs.py (validate,
render, submit, rerun; of a pipeline file too), runs.py (ls, show, wait, logs, history, why),
queue.py (cancel, priority, hold, release, top, quota, audit), schedules.py, cache.py, daemon.py
and remotes.py (remote check); context.py holds what they share, parsing.py how their words are
read, output.py how they print.

Heavy modules (pydantic, jinja2, SQLAlchemy, paramiko) are imported inside the commands that
need them so that `hpcops --help` stays fast.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from hpcops import __version__
from hpcops.cli import cache, daemon, queue, remotes, runs, schedules, specs
from hpcops.cli.context import Context, pass_ctx
from hpcops.cli.parsing import Group


class HpcopsGroup(Group):
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
      hpcops retry 12                 # a new attempt of an ended run (same checkpoint dir)

    \b
    The lab's queue:
      hpcops why 12                   # why it still waits
      hpcops priority 12 50           # members: own runs, within the member range
      hpcops hold 12 / release 12
      hpcops top 12                   # leads: goes next
      hpcops quota show / quota set lab gpus 4
      hpcops audit                    # every change and refusal

    \b
    Sweeps (a spec with a sweep: block; a sweep's id is s7, its points are runs):
      hpcops submit sweep.yaml        # queued sweep s7: 9 points (runs 12-20)
      hpcops show s7                  # its points, best objective first
      hpcops cancel s7 / hold s7 / release s7 / priority s7 50 / top s7 / rerun s7 / retry s7

    \b
    Pipelines (a file with steps:, each a spec file or a model promotion; its id is p3):
      hpcops submit pipeline.yaml     # queued pipeline p3: each step waits for its after:
      hpcops show p3                  # the steps as a graph: states, runs, why, promotion
      hpcops cancel p3 / hold p3 / release p3 / priority p3 50 / top p3
      hpcops rerun p3.train --downstream   # a step again, and every step after it

    \b
    Scheduled retraining:
      hpcops schedule add train.yaml --cron "0 3 * * 1"
      hpcops schedule ls / show NAME / pause / resume / rm / run-now

    \b
    From a laptop (remotes in ~/.config/hpcops/config.yaml, over SSH):
      hpcops remote check lab         # how it connects, master connection, one round trip

    \b
    The daemon (one per lab) owns the queue: `hpcops daemon start`.
    Exit codes: 0 ok, 1 failed, 2 invalid input, 3 no daemon, 4 no such
    run/sweep/pipeline/schedule, 5 not allowed.
    """
    ctx.obj = Context(home, debug, remote)
    ctx.call_on_close(ctx.obj.close)


for _command in (
    *specs.COMMANDS,
    *runs.COMMANDS,
    *queue.COMMANDS,
    schedules.schedule,
    cache.cache,
    daemon.daemon,
    remotes.remote,
):
    cli.add_command(_command)


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
