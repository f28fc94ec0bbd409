"""`hpcops remote`: the laptop's view of its remotes (the client config's login nodes)."""

from __future__ import annotations

import sys
from typing import Any

import click

from hpcops.cli.context import Context, json_option, pass_ctx
from hpcops.cli.parsing import group


@group()
def remote() -> None:
    """How this machine reaches the lab's daemon on a remote (see the client config)."""


@remote.command("check")
@click.argument("name", required=False)
@json_option
@pass_ctx
def remote_check(obj: Context, name: str | None, as_json: bool) -> None:
    """Say how NAME (default: the default remote) is reached and whether it answers.

    \b
    The transport (openssh or paramiko) and why; the ssh host, user and port in effect;
    whether an OpenSSH master connection is open (`ssh -O check`); and one round trip to
    `hpcops api` there. Exit 0 when it answers; else the error's code (3 unreachable, 5 the
    login was refused: keys, host key, or a second factor without a master connection).
    Over OpenSSH, also the master's forward of a local socket to the daemon's (the fast path
    with a master open): its two ends, whether it is up, and one round trip on it.
    """
    from hpcops.client.config import load_client_config
    from hpcops.client.reach import check
    from hpcops.errors import ConfigError

    chosen = load_client_config().remote(name or obj.remote_name)
    if chosen is None:
        raise ConfigError("no remote named and no default_remote in the client config")
    report, code = check(*chosen)
    if as_json:
        from hpcops.cli.output import print_json

        print_json(report)
    else:
        click.echo(_text(report))
    sys.exit(code)


def _text(report: dict[str, Any]) -> str:
    target = report.get("target", {})
    if "error" in target:
        where = f"unknown: {target['error']}"
    else:
        where = f"{target['user']}@{target['host']} port {target['port']} ({target['source']})"
        if target.get("proxyjump"):
            where += f", via ProxyJump {target['proxyjump']}"
        if target.get("proxycommand"):
            where += f", via ProxyCommand {target['proxycommand']}"
    master = report.get("master", {})
    opened = {True: "open", False: "not open", None: "none"}[master.get("open")]
    api = report.get("api", {})
    if api.get("ok"):
        answer = (
            f"answers in {api['round_trip_ms']} ms (hpcops {api['version']}, lab "
            f"{api['lab']}, you are {api['caller']})"
        )
    else:
        answer = f"FAILED: {api.get('error', 'not tried')}"
    lines = [
        f"remote {report['remote']}",
        f"  transport : {report['transport']} ({report['reason']})",
        f"  ssh       : {where}",
        f"  master    : {opened} ({master.get('detail', '-')})",
        f"  hpcops api: {answer}",
    ]
    fwd = report.get("forward")
    if fwd is not None:
        if fwd.get("up"):
            state = f"up, {fwd['local']} -> {fwd['remote']}, answers in {fwd['round_trip_ms']} ms"
        else:
            state = f"not used ({fwd.get('detail', '-')})"
        lines.append(f"  forward   : {state}")
    return "\n".join(lines)
