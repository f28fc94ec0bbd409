"""`hpcops daemon`: run, start, stop and inspect the lab's daemon."""

from __future__ import annotations

from pathlib import Path

import click

from hpcops.cli.context import Context, json_option, pass_ctx
from hpcops.cli.parsing import group


@group()
def daemon() -> None:
    """Start, stop and inspect the lab's daemon (one per home)."""


config_option = click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    help="Config file (default: $HPCOPS_HOME/config.yaml; see configs/hpcops.yaml).",
)


allow_network_home_option = click.option(
    "--allow-network-home",
    is_flag=True,
    help="Start even though HPCOPS_HOME is on a network filesystem (NFS, Lustre, GPFS, BeeGFS, "
    "CIFS). Refused by default: jobs on compute nodes run as this account and could write the "
    "database there, and SQLite's locking is unsafe on such filesystems.",
)


@daemon.command("run")
@config_option
@allow_network_home_option
@pass_ctx
def daemon_run(obj: Context, config_path: Path | None, allow_network_home: bool) -> None:
    """Run the daemon in the foreground (logs also to stderr)."""
    from hpcops.daemon import run_daemon

    run_daemon(obj.home, config_path, foreground=True, allow_network_home=allow_network_home)


@daemon.command("start")
@config_option
@allow_network_home_option
@pass_ctx
def daemon_start(obj: Context, config_path: Path | None, allow_network_home: bool) -> None:
    """Start the daemon in the background; returns once it answers.

    The daemon's home (database, config, socket, logs) must be on the login node's own disk:
    a home on NFS, Lustre, GPFS, BeeGFS or CIFS is refused (exit 2) unless
    --allow-network-home says you know it is not shared with compute nodes.
    """
    from hpcops.config import load_config
    from hpcops.daemon import start_background
    from hpcops.home import HomePaths

    load_config(config_path, obj.home)  # a bad config is the caller's error, shown here
    pid = start_background(
        obj.home,
        config_path.resolve() if config_path else None,
        allow_network_home=allow_network_home,
    )
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
