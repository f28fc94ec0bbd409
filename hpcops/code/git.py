"""Running git: one place for the environment, the timeout and turning failures into messages."""

from __future__ import annotations

import os
import subprocess
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from hpcops.errors import HpcopsError

# The daemon's git never reads a config a job can write (its git directory is in its home, see
# mirror.py), but the repositories it reads from are other people's: a member's repository, or
# an alternate that a job lists in the shared objects. Command-line config outranks theirs, so
# every git that hpcops runs starts with these: no hooks, no fsmonitor, no credential helper, no
# proxy command, no ext:: transport, plain ssh (a lab that needs another ssh command sets
# GIT_SSH_COMMAND, which outranks all config), and no git run inside an alternate to list its
# refs (its config could name a promisor to fetch from; its refs are only a hint). The
# upload-pack that a fetch from a local path starts does not get these (git clears them from its
# environment): it runs no hooks, reads uploadpack.packObjectsHook from protected config only,
# and fetches lazily from no promisor (DAEMON_GIT_ENV, and git >= 2.39.4 of its own accord).
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
# For git in the daemon's own git directories (hpcops.code.mirror): no global config, because the
# account's ~/.gitconfig is usually on storage every job can write; and never a lazy fetch from a
# promisor remote, which runs that remote's uploadpack (git >= 2.39.4 honours the variable, and
# hands it on to an upload-pack it starts).
DAEMON_GIT_ENV = {"GIT_CONFIG_GLOBAL": os.devnull, "GIT_NO_LAZY_FETCH": "1"}
_NOT_INSTALLED = "git is not installed (not found on PATH)"
_STDERR_MAX_BYTES = 64 * 1024  # git's own words on a failure: a line or two


class GitError(HpcopsError):
    """git failed; the message carries its stderr. An HpcopsError, so that whatever git call a
    command makes, a failure reaches the user as a message (exit 1), never as a traceback."""


def _environment(env: Mapping[str, str] | None) -> dict[str, str]:
    return {
        **os.environ,
        "LC_ALL": "C",
        # Never wait for a password or a passphrase: a daemon has no one to ask.
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "/bin/false",
        "SSH_ASKPASS": "/bin/false",
        **(env or {}),
    }


def git(
    args: Sequence[str],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 120.0,
    stdin: str | None = None,
) -> str:
    """Run `git ARGS` and return its stdout; GitError with git's own words if it fails."""
    try:
        proc = subprocess.run(
            ["git", *_NOTHING_RUNS, *args],
            cwd=cwd,
            env=_environment(env),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except FileNotFoundError:
        raise GitError(_NOT_INSTALLED) from None
    except subprocess.TimeoutExpired:
        raise GitError(_took_too_long(args, timeout_s)) from None
    if proc.returncode != 0:
        raise GitError(git_failure(proc.stderr or proc.stdout, proc.returncode))
    return proc.stdout


def git_head(
    args: Sequence[str],
    max_bytes: int,
    *,
    env: Mapping[str, str] | None = None,
    timeout_s: float = 120.0,
) -> bytes:
    """The first `max_bytes` of `git ARGS`'s stdout, git stopped there: for what is read from
    the shared objects, where a job can swap a loose object for a huge one (a size asked first
    would be the old one's). GitError as git() says it, when git fails before the bound."""
    try:
        proc = subprocess.Popen(
            ["git", *_NOTHING_RUNS, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_environment(env),
        )
    except FileNotFoundError:
        raise GitError(_NOT_INSTALLED) from None
    killed = threading.Event()

    def kill() -> None:
        killed.set()
        proc.kill()

    # A FIFO planted as the object would block git's read for ever: a deadline, as git() has.
    timer = threading.Timer(timeout_s, kill)
    timer.start()
    try:
        with proc:
            assert proc.stdout is not None and proc.stderr is not None
            data = proc.stdout.read(max_bytes)
            if len(data) >= max_bytes:
                proc.kill()  # the rest is never read
                return data
            errors = proc.stderr.read(_STDERR_MAX_BYTES)
    finally:
        timer.cancel()
    if proc.returncode == 0:
        return data
    if killed.is_set():
        raise GitError(_took_too_long(args, timeout_s))
    raise GitError(git_failure(errors.decode("utf-8", errors="replace"), proc.returncode))


def _took_too_long(args: Sequence[str], timeout_s: float) -> str:
    return f"`git {' '.join(args[:2])}` took more than {timeout_s:.0f} s"


def git_failure(output: str, returncode: int) -> str:
    """git's own words for a failure, in one line: its fatal:/error: lines (a hint or a blank
    line after them must not push them out), else its last lines, bounded."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    said = [line for line in lines if line.startswith(("fatal:", "error:"))] or lines[-3:]
    return "; ".join(said)[:2000] or f"exit {returncode}"
