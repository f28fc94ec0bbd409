"""The API from a laptop through the user's own OpenSSH: `ssh host -- hpcops api` as a
subprocess, the same newline-delimited JSON over its stdin and stdout.

Running the user's `ssh` binary honours everything ~/.ssh/config says, exactly as `ssh host`
does: ControlMaster/ControlPersist (one login a day on clusters that ask for a second factor),
ProxyJump, ProxyCommand, GSSAPI, the agent, certificate keys. paramiko can do none of the first
and hpcops' paramiko path opens a new connection per call.

hpcops adds only what its own protocol needs and never prompts:

    -T                        no pseudo-terminal: it would echo and mangle the JSON lines
    -o BatchMode=yes          never ask for anything: with a master connection open, nothing
                              is asked; without one, a host that wants a second factor fails at
                              once with "Permission denied (keyboard-interactive)", which
                              `failure()` turns into how to open a master (instead of hanging)
    -o ConnectTimeout=N       the remote's connect_timeout_s
    -o ClearAllForwardings=yes  the user's LocalForward lines are for interactive sessions; every
                              hpcops call re-binding them would fail or warn
    -o RemoteCommand=none     a RemoteCommand in ~/.ssh/config would clash with ours

Options on the command line win over ~/.ssh/config (ssh_config(5): first value obtained), so
-p/-l/-i are passed only when the remote sets them (-i with IdentitiesOnly=yes: that key only).
Code bundles travel over a second session of the same master (`sh -c 'cat > FILE'`), so
shipping costs no new login either.

With a master open, a call skips both the session and `hpcops api`: the master forwards a local
Unix socket to the daemon's (client/forward.py), and the call speaks the protocol on it. The
`hpcops api` path stays for everything else, and teaches the laptop where the daemon's socket is.

Pure parts (`parse_ssh_g`, `master_state`, `failure`) are unit-tested on captured output.
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

from hpcops.api import protocol
from hpcops.client import forward
from hpcops.client.config import Remote, client_config_path, valid_socket_path
from hpcops.client.reach import api_exit_error
from hpcops.errors import (
    AuthenticationFailed,
    HostKeyRejected,
    HpcopsError,
    NotRunning,
    PermissionDenied,
    ProtocolError,
    RemoteUnreachable,
)

if TYPE_CHECKING:
    import subprocess

# subprocess and tempfile (about 15 ms of CPU to import) are imported where ssh is run: a call
# over an open forward runs none (issue 16: every laptop call pays its imports).

# ssh(1): "ssh exits with the exit status of the remote command or with 255 if an error occurred."
SSH_FAILED = 255
_PLAIN_PATH = re.compile(r"/[A-Za-z0-9_./+-]*")
_DENIED = re.compile(r"Permission denied \(([^)]*)\)")
# Methods that need someone to type something: a second factor (TOTP, Duo) or a password.
PROMPTING_METHODS = frozenset({"keyboard-interactive", "password"})


def ssh_argv(remote: Remote, ssh: str) -> list[str]:
    """`ssh` and only the options the remote itself sets."""
    argv = [ssh]
    if remote.port is not None:
        argv += ["-p", str(remote.port)]
    if remote.user is not None:
        argv += ["-l", remote.user]
    if remote.identity_file is not None:
        # The remote names its key: that key (and the agent's copy of it) only, as the paramiko
        # path does; plain -i would also offer ~/.ssh/id_* and could log in as someone else.
        argv += ["-i", str(remote.identity_file.expanduser()), "-o", "IdentitiesOnly=yes"]
    return argv


def session_argv(remote: Remote, ssh: str, words: list[str]) -> list[str]:
    """The argv that runs `words` on the remote, never prompting (see the module docstring)."""
    return [
        *ssh_argv(remote, ssh),
        "-T",
        "-o",
        "BatchMode=yes",
        "-o",
        f"ConnectTimeout={max(1, round(remote.connect_timeout_s))}",
        "-o",
        "ClearAllForwardings=yes",
        "-o",
        "RemoteCommand=none",
        "--",
        remote.host,
        shlex.join(words),
    ]


def api_words(remote: Remote) -> list[str]:
    words = [*remote.command]
    if remote.home:
        words += ["--home", remote.home]
    return [*words, "api"]


def parse_ssh_g(text: str) -> dict[str, str]:
    """`ssh -G host` output (one `keyword value` a line, keywords lower-case) as a dict; for a
    keyword printed more than once (identityfile, localforward) the first value, the one ssh
    uses first."""
    options: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.strip().partition(" ")
        if key and key not in options:
            options[key] = value.strip()
    return options


def effective_config(remote: Remote, ssh: str, timeout_s: float = 10.0) -> dict[str, str]:
    """What `ssh host` would use for this remote (`ssh -G`: evaluates ~/.ssh/config, connects to
    nothing), or RemoteUnreachable with ssh's own complaint (say, a bad line in the config)."""
    import subprocess

    argv = [*ssh_argv(remote, ssh), "-G", "--", remote.host]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RemoteUnreachable(f"`{shlex.join(argv)}` could not run: {exc}") from None
    if proc.returncode != 0:
        raise RemoteUnreachable(
            f"`{shlex.join(argv)}` exited {proc.returncode}: {proc.stderr.strip()[-500:]}; "
            "check ~/.ssh/config"
        )
    return parse_ssh_g(proc.stdout)


@dataclass(frozen=True)
class MasterState:
    open: bool | None  # None: this host has no ControlPath, so no master can exist
    detail: str


def master_state(returncode: int, stderr: str) -> MasterState:
    """`ssh -O check host`'s answer: "Master running (pid=N)" and exit 0 when one is open."""
    text = stderr.strip()
    if returncode == 0:
        return MasterState(True, text or "master running")
    if "No ControlPath specified" in text:
        return MasterState(None, "no ControlPath for this host in ~/.ssh/config")
    return MasterState(False, text or f"ssh -O check exited {returncode}")


def check_master(remote: Remote, ssh: str, timeout_s: float = 10.0) -> MasterState:
    import subprocess

    argv = [*ssh_argv(remote, ssh), "-O", "check", "--", remote.host]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return MasterState(False, f"`{shlex.join(argv)}` could not run: {exc}")
    return master_state(proc.returncode, proc.stderr)


def second_factor_help(name: str, host: str) -> str:
    """How to answer the prompt once a day instead of at every call."""
    return (
        f"remote {name!r}: {host} wants a second factor (keyboard-interactive: a one-time code, "
        "Duo, a password) and no master connection is open, so hpcops (which never prompts) "
        "cannot log in. Keep one master connection open and hpcops rides on it. In "
        f"~/.ssh/config:\n\n    Host {host}\n        ControlMaster auto\n"
        "        ControlPath ~/.ssh/cm-%C\n        ControlPersist 12h\n\n"
        f"then log in once, answering the prompt: `ssh -fN {host}`. "
        f"`hpcops remote check {name}` shows whether the master is open."
    )


def failure(
    name: str, remote: Remote, status: int | None, stderr: str, *, answered: bool
) -> HpcopsError:
    """The error for an `ssh ... hpcops api` that ended instead of answering: ssh's own failures
    (exit 255) by what its stderr says, the remote command's by its exit status."""
    text = stderr.strip()
    tail = text[-800:]
    where = f"remote {name!r} ({remote.host})"
    if status == SSH_FAILED or status is None:
        denied = _DENIED.search(text)
        if denied:
            methods = {m.strip() for m in denied.group(1).split(",")}
            if methods & PROMPTING_METHODS:
                return AuthenticationFailed(second_factor_help(name, remote.host))
            return AuthenticationFailed(
                f"{where} refused our SSH keys ({denied.group(0)}); `ssh {remote.host}` uses "
                f"the same ones. Check the key in remotes.{name} in {client_config_path()} or "
                "~/.ssh/config, that it is in the agent (`ssh-add -l`; hpcops never asks for "
                "a passphrase), and that its public key is in ~/.ssh/authorized_keys there."
            )
        if "IDENTIFICATION HAS CHANGED" in text:
            offered = re.search(r"SHA256:[A-Za-z0-9+/=]+", text)
            remove = re.search(r"ssh-keygen [^\n]*-R [^\n]*", text)
            return HostKeyRejected(
                f"the host key of {where} has CHANGED: it offered "
                f"{offered.group(0) if offered else 'another key'}. Someone may be intercepting "
                "the connection; if the admins confirm the new key, remove the old one with "
                f"`{remove.group(0).strip() if remove else 'ssh-keygen -R HOST'}`."
            )
        if "Host key verification failed" in text or "host key is known" in text:
            return HostKeyRejected(
                f"the host key of {where} is not in your known_hosts, and hpcops never adds "
                f"one. Check it with the cluster's admins, then record it with "
                f"`ssh {remote.host} true` (answer yes). ssh said: {tail}"
            )
        resolve = re.search(r"Could not resolve hostname ([^:]+): (.*)", text)
        if resolve:
            return RemoteUnreachable(
                f"cannot resolve {resolve.group(1)!r} ({where}): {resolve.group(2)}; check the "
                f"host in remotes.{name} in {client_config_path()} or ~/.ssh/config"
            )
        if answered:
            return RemoteUnreachable(f"lost the SSH connection to {where}: {tail or 'closed'}")
        return RemoteUnreachable(f"cannot reach {where} with ssh: {tail or 'no message'}")
    return api_exit_error(name, remote, status, tail)


def _tail(file: IO[bytes], limit: int = 8192) -> str:
    file.seek(0, 2)
    size = file.tell()
    file.seek(max(0, size - limit))
    return file.read().decode("utf-8", errors="replace")


class OpenSshClient(protocol.LineClient):
    """The same `call` as the local Client, carried by the master's forward when it can be,
    else by `ssh host -- hpcops api`. `options` is `ssh -G`'s answer when the caller has it."""

    def __init__(
        self, name: str, remote: Remote, ssh: str, options: dict[str, str] | None = None
    ) -> None:
        super().__init__()
        self.name = name
        self.remote = remote
        self.ssh = ssh
        self.options = options
        self.attempt: forward.Attempt | None = None
        self._sock: socket.socket | None = None
        self._reader: IO[bytes] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        # A file, not a pipe: nobody has to drain it while we wait for answers.
        self._stderr: IO[bytes] | None = None
        self._answered = 0

    @property
    def forwarded(self) -> bool:
        return self._sock is not None

    def route(self) -> tuple[str, str] | None:
        fwd = self.attempt.forward if self.attempt is not None else None
        return (str(fwd.local), self.name) if self.forwarded and fwd is not None else None

    def _route(self) -> None:
        """Once per client, before its first request: the forward if it is (or can be made) up."""
        if self.options is not None and forward.no_master_possible(self.options):
            self.attempt = forward.Attempt(None, detail="no ControlPath: no master to forward")
            return
        fwd = forward.plan(self.remote, self.options)
        self.attempt = forward.connect_forwarded(
            self.remote, ssh_argv(self.remote, self.ssh), fwd, self.remote.connect_timeout_s
        )
        self._sock = self.attempt.sock
        if self._sock is not None:
            self._reader = self._sock.makefile("rb")

    def _open(self) -> subprocess.Popen[bytes]:
        import subprocess
        import tempfile

        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 -- closed in close()
        argv = session_argv(self.remote, self.ssh, api_words(self.remote))
        try:
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr
            )
        except OSError as exc:
            raise RemoteUnreachable(f"cannot run {self.ssh}: {exc}") from None
        if self.attempt is not None and self.attempt.learn:
            self._learn(self._proc)
        return self._proc

    def _learn(self, proc: subprocess.Popen[bytes]) -> None:
        """Ask the daemon where its socket is (its `ping`), for the next call's forward. Any
        failure is left to the real request, which meets it too."""
        answer = self._relay(proc, protocol.encode(protocol.request(0, "ping", {})))
        with contextlib.suppress(ValueError, RecursionError):
            result = json.loads(answer).get("result") if answer else None
            if isinstance(result, dict) and valid_socket_path(result.get("socket")):
                forward.write_cached_socket(
                    forward.cache_file(self.remote), self.remote, result["socket"]
                )

    def _relay(self, proc: subprocess.Popen[bytes], line: bytes) -> bytes:
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(line)
            proc.stdin.flush()
            answer = proc.stdout.readline()
        except (BrokenPipeError, ConnectionResetError):
            return b""  # ssh ended: _closed() says why
        if answer:
            self._answered += 1
        return answer

    def _exchange(self, method: str, line: bytes) -> bytes:
        if self.attempt is None:
            self._route()
        if self._sock is not None:
            assert self._reader is not None
            try:
                self._sock.sendall(line)
                return self._reader.readline()
            except OSError:
                return b""  # the master or the daemon let go: _closed() says which
        return self._relay(self._proc or self._open(), line)

    def _closed(self) -> HpcopsError:
        import subprocess

        if self._sock is not None:
            return self._forward_closed()
        assert self._proc is not None and self._stderr is not None
        try:
            status: int | None = self._proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            status = None
        return failure(
            self.name, self.remote, status, _tail(self._stderr), answered=self._answered > 0
        )

    def _forward_closed(self) -> HpcopsError:
        """EOF after a request was written: an error, never a second send. The cached socket
        path is forgotten so the next call learns it again."""
        assert self.attempt is not None and self.attempt.forward is not None
        fwd = self.attempt.forward
        if fwd.cache is not None:
            forward.drop_cached_socket(fwd.cache)
        where = f"remote {self.name!r} ({self.remote.host})"
        if check_master(self.remote, self.ssh).open:
            return NotRunning(
                f"the hpcops daemon on {where} closed the connection forwarded from "
                f"{fwd.local} to {fwd.remote} (it may be stopping); `hpcops remote check "
                f"{self.name}` says more"
            )
        return RemoteUnreachable(
            f"lost the SSH connection to {where}: the master connection that forwarded "
            f"{fwd.local} ended"
        )

    def upload(self, local: Path, remote_dir: str, name: str) -> None:
        import subprocess
        import tempfile

        target = f"{remote_dir}/{name}"
        if not _PLAIN_PATH.fullmatch(target) or ".." in target.split("/"):
            raise ProtocolError(f"the daemon named an unexpected place for code: {target!r}")
        # noclobber (set -C) makes the create exclusive, as O_EXCL does on the login node; umask
        # 022 makes the bundle 0644 whatever the user's umask: the daemon's account reads it.
        script = 'umask 022 && set -C && exec cat > "$1"'
        argv = session_argv(self.remote, self.ssh, ["sh", "-c", script, "hpcops-upload", target])
        with tempfile.TemporaryFile() as err, local.open("rb") as src:
            try:
                status = subprocess.run(
                    argv, stdin=src, stdout=subprocess.DEVNULL, stderr=err, check=False
                ).returncode
            except OSError as exc:
                raise RemoteUnreachable(f"cannot run {self.ssh}: {exc}") from None
            if status == 0:
                return
            stderr = _tail(err)
        if status != SSH_FAILED:
            raise PermissionDenied(
                f"cannot put the code bundle into {remote_dir} on remote {self.name!r} "
                f"(exit {status}: {stderr.strip()[-300:]}); the daemon's code folder admits "
                "the lab's group (access.socket_group)"
            )
        raise failure(self.name, self.remote, status, stderr, answered=True)

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        if self._sock is not None:
            self._sock.close()
        self._sock = self._reader = None
        proc, self._proc = self._proc, None
        if proc is not None:
            import subprocess

            assert proc.stdin is not None and proc.stdout is not None
            with contextlib.suppress(OSError):
                proc.stdin.close()  # `hpcops api` ends at EOF, then ssh does
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()  # our own child, by its pid
                proc.wait()
            proc.stdout.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
