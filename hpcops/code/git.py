"""Running git: one place for the environment, the timeout and turning failures into messages."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from hpcops.errors import HpcopsError

# The daemon's git never reads a config a job can write (its git directory is in its home, see
# mirror.py), but the repositories it reads from are other people's: a member's repository, or
# an alternate that a job lists in the shared objects. Command-line config outranks theirs, and
# reaches the gits that git itself starts, so every git that hpcops runs starts with these: no
# hooks, no fsmonitor, no credential helper, no proxy command, no ext:: transport, plain ssh (a
# lab that needs another ssh command sets GIT_SSH_COMMAND, which outranks all config), and no
# git run inside an alternate to list its refs (its config could name a promisor to fetch
# from; its refs are only a hint for negotiation).
_NOTHING_RUNS: tuple[str, ...] = (
    "-c", "core.alternateRefsCommand=true",
    "-c", "core.hooksPath=/dev/null",
    "-c", "core.fsmonitor=false",
    "-c", "credential.helper=",
    "-c", "core.gitProxy=",
    "-c", "core.sshCommand=ssh",
    "-c", "core.askPass=/bin/false",
    "-c", "protocol.ext.allow=never",
    "-c", "uploadpack.packObjectsHook=",
)  # fmt: skip


class GitError(HpcopsError):
    """git failed; the message carries its stderr. An HpcopsError, so that whatever git call a
    command makes, a failure reaches the user as a message (exit 1), never as a traceback."""


def git(
    args: Sequence[str],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 120.0,
    stdin: str | None = None,
) -> str:
    """Run `git ARGS` and return its stdout; GitError with git's own words if it fails."""
    full_env = {
        **os.environ,
        "LC_ALL": "C",
        # Never wait for a password or a passphrase: a daemon has no one to ask.
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "/bin/false",
        "SSH_ASKPASS": "/bin/false",
        **(env or {}),
    }
    try:
        proc = subprocess.run(
            ["git", *_NOTHING_RUNS, *args],
            cwd=cwd,
            env=full_env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except FileNotFoundError:
        raise GitError("git is not installed (not found on PATH)") from None
    except subprocess.TimeoutExpired:
        raise GitError(f"`git {' '.join(args[:2])}` took more than {timeout_s:.0f} s") from None
    if proc.returncode != 0:
        raise GitError(git_failure(proc.stderr or proc.stdout, proc.returncode))
    return proc.stdout


def git_failure(output: str, returncode: int) -> str:
    """git's own words for a failure, in one line: its fatal:/error: lines (a hint or a blank
    line after them must not push them out), else its last lines, bounded."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    said = [line for line in lines if line.startswith(("fatal:", "error:"))] or lines[-3:]
    return "; ".join(said)[:2000] or f"exit {returncode}"
