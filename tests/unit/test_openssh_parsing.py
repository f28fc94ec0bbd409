"""The OpenSSH client's pure parts on output captured from Debian's OpenSSH_9.2p1 (bookworm):
`ssh -G`, `ssh -O check`, and what `ssh -o BatchMode=yes` prints on stderr when it fails; and
the choice of transport."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from hpcops.client.config import Remote
from hpcops.client.openssh import (
    failure,
    master_state,
    parse_ssh_g,
    second_factor_help,
    session_argv,
)
from hpcops.client.reach import choose
from hpcops.errors import (
    AuthenticationFailed,
    HostKeyRejected,
    NotRunning,
    ProtocolError,
    RemoteUnreachable,
)

# `ssh -G mux` with a Host block (ControlMaster auto, ControlPath ~/.ssh/cm-%C, ControlPersist
# 10m, ProxyJump jumpy), trimmed to a few of its ~80 lines. ssh expands %C and ~ itself.
SSH_G_MUX = """\
host mux
user bob
hostname 127.0.0.1
port 2299
batchmode no
controlmaster auto
identityfile ~/.ssh/id_ed25519
identityfile ~/.ssh/id_rsa
proxyusefdpass no
controlpath /root/.ssh/cm-c55c74b686e549e91bbf8e44ea2f75b6b3710e9c
controlpersist 600
proxyjump jumpy
"""
# `ssh -G 127.0.0.1` with no ~/.ssh/config: no controlpath line at all.
SSH_G_PLAIN = "host 127.0.0.1\nuser root\nhostname 127.0.0.1\nport 22\ncontrolmaster false\n"


def test_ssh_g_output_is_read_first_value_first() -> None:
    options = parse_ssh_g(SSH_G_MUX)
    assert options["hostname"] == "127.0.0.1" and options["port"] == "2299"
    assert options["controlmaster"] == "auto" and options["proxyjump"] == "jumpy"
    assert options["identityfile"] == "~/.ssh/id_ed25519", "the first, the one ssh tries first"
    assert options["controlpath"].startswith("/root/.ssh/cm-")


REMOTE = Remote(host="mux")


@pytest.mark.parametrize(
    ("transport", "ssh", "g_output", "chosen", "because"),
    [
        ("auto", "/usr/bin/ssh", SSH_G_MUX, "openssh", "shows ControlMaster auto, ControlPath"),
        ("auto", "/usr/bin/ssh", SSH_G_PLAIN, "paramiko", "shows no ControlMaster"),
        ("auto", None, None, "paramiko", "no `ssh` binary on PATH"),
        ("auto", "/usr/bin/ssh", None, "paramiko", "gave no answer"),
        (
            "auto",
            "/usr/bin/ssh",
            SSH_G_PLAIN + "proxycommand nc -X connect %h %p\n",
            "openssh",
            "ProxyCommand",
        ),
        ("auto", "/usr/bin/ssh", SSH_G_PLAIN + "controlpath none\n", "paramiko", "no Control"),
        ("openssh", "/usr/bin/ssh", None, "openssh", "transport: openssh"),
        ("paramiko", "/usr/bin/ssh", SSH_G_MUX, "paramiko", "transport: paramiko"),
    ],
)
def test_the_transport_and_why(
    transport: str, ssh: str | None, g_output: str | None, chosen: str, because: str
) -> None:
    remote = Remote(host="mux", transport=transport)  # type: ignore[arg-type]
    choice = choose(remote, ssh, parse_ssh_g(g_output) if g_output is not None else None)
    assert choice.transport == chosen
    assert because in choice.reason


def test_master_check_answers() -> None:
    assert master_state(0, "Master running (pid=1673)\r\n").open is True
    gone = master_state(
        255, "Control socket connect(/root/.ssh/cm-c55c74b6): No such file or directory\n"
    )
    assert gone.open is False and "No such file" in gone.detail
    assert master_state(255, 'No ControlPath specified for "-O" command\n').open is None


def test_the_argv_adds_only_what_the_protocol_needs() -> None:
    plain = session_argv(Remote(host="lab"), "ssh", ["hpcops", "api"])
    assert plain == [
        "ssh",
        "-T",
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=15",
        "-o",
        "ClearAllForwardings=yes",
        "-o",
        "RemoteCommand=none",
        "--",
        "lab",
        "hpcops api",
    ], "no -p/-l/-i: ~/.ssh/config decides, as for `ssh lab`"
    full = session_argv(
        Remote(host="lab", user="ana", port=2200, identity_file=Path("/k/id")),
        "/usr/bin/ssh",
        ["sh", "-c", 'cat > "$1"', "x", "/a b"],
    )
    assert full[:8] == [
        "/usr/bin/ssh",
        "-p",
        "2200",
        "-l",
        "ana",
        "-i",
        "/k/id",
        "-o",
    ]
    assert full[-1] == "sh -c 'cat > \"$1\"' x '/a b'", "one string, quoted once for the shell"


LAB = Remote(host="lab-otp", command=["/opt/hpcops/bin/hpcops"])


@pytest.mark.parametrize(
    ("status", "stderr", "error", "phrases"),
    [
        (
            255,
            "hpcops-m1@127.0.0.1: Permission denied (keyboard-interactive).\r\n",
            AuthenticationFailed,
            ["wants a second factor", "ControlMaster auto", "ssh -fN lab-otp", "remote check"],
        ),
        (
            255,
            "ana@login: Permission denied (publickey,password).\r\n",
            AuthenticationFailed,
            ["wants a second factor"],
        ),
        (
            255,
            "hpcops-m1@127.0.0.1: Permission denied (publickey).\r\n",
            AuthenticationFailed,
            ["refused our SSH keys (Permission denied (publickey))", "ssh-add -l"],
        ),
        (255, "Host key verification failed.\r\n", HostKeyRejected, ["not in your known_hosts"]),
        (
            255,
            "@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n"
            "The fingerprint for the ED25519 key sent by the remote host is\n"
            "SHA256:i/nV6EmJ0H9dq/ogy5g/9/YSeLPsIrI7XNf/oeL6ytg.\n"
            "  remove with:\n"
            '  ssh-keygen -f "/home/ana/.ssh/known_hosts" -R "[127.0.0.1]:2291"\n'
            "Host key verification failed.\n",
            HostKeyRejected,
            [
                "has CHANGED: it offered SHA256:i/nV6EmJ0H9dq",
                'ssh-keygen -f "/home/ana/.ssh/known_hosts" -R "[127.0.0.1]:2291"',
            ],
        ),
        (
            255,
            "ssh: Could not resolve hostname no-such-host.invalid: Name or service not known\r\n",
            RemoteUnreachable,
            ["cannot resolve 'no-such-host.invalid'", "Name or service not known"],
        ),
        (
            255,
            "ssh: connect to host 127.0.0.1 port 1: Connection refused\r\n",
            RemoteUnreachable,
            ["cannot reach remote 'lab' (lab-otp) with ssh", "Connection refused"],
        ),
        (
            127,
            "bash: line 1: /opt/hpcops/bin/hpcops: No such file or directory\n",
            RemoteUnreachable,
            ["`/opt/hpcops/bin/hpcops` is not found on remote 'lab' (exit 127)"],
        ),
        (2, "Error: No such command 'api'.\n", ProtocolError, ["has no `api` command"]),
        (1, "boom\n", NotRunning, ["api` on remote 'lab' exited 1: boom"]),
    ],
)
def test_each_way_of_failing_gets_its_own_error(
    status: int, stderr: str, error: type[Exception], phrases: list[str]
) -> None:
    got = failure("lab", LAB, status, stderr, answered=False)
    assert type(got) is error
    for phrase in phrases:
        assert phrase in str(got), str(got)


def test_a_connection_lost_after_answers_says_so() -> None:
    got = failure(
        "lab", LAB, 255, "Connection to 127.0.0.1 closed by remote host.\r\n", answered=True
    )
    assert isinstance(got, RemoteUnreachable)
    assert "lost the SSH connection to remote 'lab'" in str(got)


def test_the_second_factor_help_is_a_config_snippet_to_copy() -> None:
    text = second_factor_help("lab", "login.example.edu")
    assert "    Host login.example.edu\n        ControlMaster auto\n" in text
    assert "ControlPath ~/.ssh/cm-%C" in text and "ControlPersist" in text


# Run in a fresh interpreter: this one has imported everything already.
PROBE = """
import sys
from hpcops.cli.main import cli
sys.argv = ["hpcops", "--remote", "x", "ls"]
try:
    cli(prog_name="hpcops")
except SystemExit:
    pass
heavy = sorted(m for m in ("pydantic", "paramiko", "mlflow", "sqlalchemy", "jinja2", "dvc")
               if m in sys.modules)
print(",".join(heavy) or "none")
"""


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs OpenSSH's ssh binary")
def test_a_call_over_openssh_imports_nothing_heavy(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("remotes:\n  x: {host: 127.0.0.1, port: 1, transport: openssh}\n")
    proc = subprocess.run(
        [sys.executable, "-c", PROBE],
        capture_output=True,
        text=True,
        env={"HPCOPS_CONFIG": str(config), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        timeout=60,
    )
    assert "cannot reach remote 'x'" in proc.stderr, proc.stderr
    assert proc.stdout.strip() == "none", proc.stdout
