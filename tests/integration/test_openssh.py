"""The laptop through the user's own OpenSSH: a real second factor, a real master connection,
a real ProxyJump.

Two private sshd instances from scripts/dev-sshd, each on a free loopback port with its own
state directory (the shared one on :2222 is only used, never restarted):

    otp    AuthenticationMethods publickey,keyboard-interactive; the keyboard-interactive step
           is Debian's libpam-oath (TOTP), the codes computed with oathtool
    jump   keys only: the ProxyJump hop to the shared sshd

The laptop user's ~/.ssh/config has ControlMaster auto / ControlPath / ControlPersist for the
otp host; its first login answers the TOTP prompt through SSH_ASKPASS (SSH_ASKPASS_REQUIRE=force),
and the sshd's own log (LogLevel VERBOSE) counts the logins.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from lab import MEMBERS, SERVICE, Lab, new_lab
from laptop import (
    DEV_SSHD,
    FAILURES,
    REMOTE_HPCOPS,
    assert_fails_clearly,
    laptop_cli,
    make_laptop,
    run_as,
    start_follow,
    write_client_config,
    write_owned,
)
from mlflow_server import free_port

from hpcops.client import forward
from hpcops.client.config import Remote

LAPTOP = "hpcops-laptop-ossh"
MEMBER = MEMBERS[0]
SHARED_PORT = int(os.environ.get("HPCOPS_DEV_SSHD_PORT", "2222"))


@dataclass
class Sshd:
    """One private dev-sshd instance, driven by pid file through the script itself."""

    port: int
    state_dir: Path
    auth: str

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "HPCOPS_DEV_SSHD_DIR": str(self.state_dir),
            "HPCOPS_DEV_SSHD_PORT": str(self.port),
            "HPCOPS_DEV_SSHD_AUTH": self.auth,
        }

    def up(self) -> str:
        proc = run_as(str(DEV_SSHD), "up", env=self.env)
        assert proc.returncode == 0, proc.stderr
        return run_as(str(DEV_SSHD), "known-hosts", env=self.env).stdout.strip()

    def down(self) -> None:
        run_as(str(DEV_SSHD), "down", env=self.env)
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def log(self) -> str:
        return (self.state_dir / "sshd.log").read_text(errors="replace")

    def count(self, phrase: str) -> int:
        return sum(phrase in line for line in self.log().splitlines())


@pytest.fixture(scope="module")
def sshds(sshd: str) -> Iterator[tuple[Sshd, Sshd, str]]:
    """(otp, jump, the shared sshd's known_hosts line)."""
    tag = uuid.uuid4().hex[:8]
    otp = Sshd(free_port(), Path(f"/tmp/hpcops-sshd-otp-{tag}"), "otp")
    jump = Sshd(free_port(), Path(f"/tmp/hpcops-sshd-jump-{tag}"), "key")
    try:
        yield otp, jump, sshd
    finally:
        otp.down()
        jump.down()


@dataclass
class Laptop:
    lab: Lab
    home: Path
    otp: Sshd
    jump: Sshd

    def cli(
        self, *args: str, timeout: float = 60, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return laptop_cli(LAPTOP, *args, timeout=timeout, env=env)

    def ssh(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return run_as("ssh", *args, user=LAPTOP, **kw)

    def askpass_calls(self) -> int:
        log = self.home / "askpass.log"
        return len(log.read_text().splitlines()) if log.exists() else 0


SSH_CONFIG = """\
Host lab-otp
    HostName 127.0.0.1
    Port {otp_port}
    User {member}
    ControlMaster auto
    ControlPath ~/.ssh/cm-%C
    ControlPersist 10m

Host jump
    HostName 127.0.0.1
    Port {jump_port}
    User {member}

Host lab-via-jump
    HostName 127.0.0.1
    Port {shared_port}
    User {member}
    ProxyJump jump

Host lab-via-inline-jump
    HostName 127.0.0.1
    Port {shared_port}
    User {member}
    ProxyJump {member}@127.0.0.1:{jump_port}
"""

# Prints the current TOTP code, and leaves a line per prompt it answered.
ASKPASS = """\
#!/bin/sh
echo "$*" >> "$HOME/askpass.log"
exec oathtool --totp "$(cat "$HOME/.ssh/otp-secret")"
"""


@pytest.fixture(scope="module")
def laptop(sshds: tuple[Sshd, Sshd, str], cluster: None) -> Iterator[Laptop]:
    otp, jump, shared_known = sshds
    known = [otp.up(), jump.up(), shared_known]
    lab = new_lab({"quotas": {}})
    home = make_laptop(LAPTOP, MEMBER, known)
    secret = secrets.token_hex(20)
    run_as(str(DEV_SSHD), "add-otp", MEMBER, secret).check_returncode()
    write_owned(home / ".ssh" / "otp-secret", secret + "\n", LAPTOP)
    write_owned(home / "askpass", ASKPASS, LAPTOP, 0o700)
    (home / "askpass.log").unlink(missing_ok=True)
    write_owned(
        home / ".ssh" / "config",
        SSH_CONFIG.format(
            otp_port=otp.port, jump_port=jump.port, shared_port=SHARED_PORT, member=MEMBER
        ),
        LAPTOP,
    )
    base = {"command": [REMOTE_HPCOPS], "home": str(lab.home)}
    write_client_config(
        home,
        LAPTOP,
        {
            "default_remote": "otp",
            "remotes": {
                "otp": {"host": "lab-otp", **base},
                "jump-openssh": {"host": "lab-via-jump", "transport": "openssh", **base},
                "jump-paramiko": {"host": "lab-via-jump", "transport": "paramiko", **base},
                "jump-auto": {"host": "lab-via-jump", **base},
                "inline-jump-openssh": {
                    "host": "lab-via-inline-jump",
                    "transport": "openssh",
                    **base,
                },
                "inline-jump-paramiko": {
                    "host": "lab-via-inline-jump",
                    "transport": "paramiko",
                    **base,
                },
                "ossh-wrongkey": {
                    "host": "127.0.0.1",
                    "port": SHARED_PORT,
                    "user": MEMBER,
                    "identity_file": str(home / ".ssh" / "other_key"),
                    "transport": "openssh",
                    **base,
                },
                "ossh-nohpcops": {
                    "host": "lab-via-jump",
                    "transport": "openssh",
                    "command": ["/nonexistent/bin/hpcops"],
                },
                "ossh-nodns": {"host": "no-such-host.invalid", "transport": "openssh"},
                "ossh-closed": {"host": "127.0.0.1", "port": 1, "transport": "openssh"},
            },
        },
    )
    laptop = Laptop(lab, home, otp, jump)
    try:
        yield laptop
    finally:
        laptop.ssh("-O", "exit", "lab-otp")  # the master, through its own control socket
        lab.stop()


def _no_master(laptop: Laptop) -> None:
    laptop.ssh("-O", "exit", "lab-otp")
    deadline = time.monotonic() + 10
    while laptop.ssh("-O", "check", "lab-otp").returncode == 0:
        assert time.monotonic() < deadline, "the master did not exit"
        time.sleep(0.1)


def test_without_a_master_the_second_factor_is_said_clearly(laptop: Laptop) -> None:
    _no_master(laptop)
    started = time.monotonic()
    proc = laptop.cli("ls", timeout=30)
    elapsed = time.monotonic() - started
    assert proc.returncode == 5, proc.stderr
    for phrase in (
        "wants a second factor",
        "ControlMaster auto",
        "ControlPersist",
        "ssh -fN lab-otp",
    ):
        assert phrase in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert elapsed < 10, f"it must fail at once, not wait for a prompt ({elapsed:.1f} s)"
    assert laptop.askpass_calls() == 0, "hpcops never prompts"

    check = laptop.cli("remote", "check", "otp", "--json", timeout=30)
    assert check.returncode == 5, check.stderr
    report = json.loads(check.stdout)
    assert report["transport"] == "openssh" and "ControlMaster auto" in report["reason"]
    assert report["master"]["open"] is False
    assert report["target"] == {
        "host": "127.0.0.1",
        "user": MEMBER,
        "port": laptop.otp.port,
        "proxyjump": None,
        "proxycommand": None,
        "controlpath": report["target"]["controlpath"],
        "source": "ssh -G lab-otp",
    }
    assert report["api"]["ok"] is False and "second factor" in report["api"]["error"]


def _open_master(laptop: Laptop) -> None:
    """The user's one login of the day: `ssh -fN host`, answering the TOTP prompt. pam_oath
    refuses a code twice: a second login within the same 30 s window waits for the next one."""
    for _ in range(2):
        if _try_master(laptop):
            break
        time.sleep(30 - time.time() % 30 + 1)
    else:
        raise AssertionError((laptop.home / "master.log").read_text())
    assert laptop.ssh("-O", "check", "lab-otp").returncode == 0


def _try_master(laptop: Laptop) -> bool:
    log = laptop.home / "master.log"
    with log.open("w") as out:
        proc = subprocess.run(
            ["runuser", "-u", LAPTOP, "--", "ssh", "-fN", "lab-otp"],
            env={
                **os.environ,
                "SSH_ASKPASS": str(laptop.home / "askpass"),
                "SSH_ASKPASS_REQUIRE": "force",
                "DISPLAY": ":0",
            },
            # A file, not a pipe: the backgrounded master would hold a pipe open.
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            cwd="/tmp",
            timeout=30,
        )
    return proc.returncode == 0


def _code_repo(laptop: Laptop) -> Path:
    repo = laptop.home / "project"
    shutil.rmtree(repo, ignore_errors=True)
    repo.mkdir()
    (repo / "message.txt").write_text("shipped over the master\n")
    (repo / "spec.yaml").write_text(
        json.dumps(
            {
                "name": f"ossh-code-{uuid.uuid4().hex[:6]}",
                "experiment": "openssh",
                "command": "git rev-parse HEAD; cat message.txt",
                "code": {"repo": "."},
            }
        )
    )
    subprocess.run(["chown", "-R", f"{LAPTOP}:{LAPTOP}", str(repo)], check=True)
    git = ("git", "-C", str(repo), "-c", "user.name=Ana", "-c", "user.email=ana@lab")
    for args in (("init", "--quiet"), ("add", "."), ("commit", "--quiet", "-m", "v1")):
        run_as(*git, *args, user=LAPTOP).check_returncode()
    return repo


def _spec(laptop: Laptop, name: str, command: str) -> str:
    path = laptop.home / f"{name}.yaml"
    unique = f"{name}-{uuid.uuid4().hex[:6]}"
    spec = {"name": unique, "experiment": "openssh", "command": command, "workdir": "/tmp"}
    write_owned(path, json.dumps(spec), LAPTOP, 0o644)
    return str(path)


def test_one_login_then_twenty_calls_ask_nothing_and_open_no_connection(laptop: Laptop) -> None:
    _no_master(laptop)
    _open_master(laptop)
    assert laptop.askpass_calls() == 1, "the one login answered one prompt"
    repo = _code_repo(laptop)
    logins = ("Accepted keyboard-interactive", "Accepted publickey", "Partial publickey")
    before = {phrase: laptop.otp.count(phrase) for phrase in (*logins, "Connection from")}
    assert before["Accepted keyboard-interactive"] >= 1

    calls: list[tuple[list[str], float, subprocess.CompletedProcess[str]]] = []

    def call(*args: str) -> subprocess.CompletedProcess[str]:
        started = time.monotonic()
        proc = laptop.cli(*args)
        calls.append((list(args), time.monotonic() - started, proc))
        assert proc.returncode == 0, f"hpcops {' '.join(args)}: {proc.stderr}"
        return proc

    report = json.loads(call("remote", "check", "--json").stdout)
    assert report["transport"] == "openssh" and report["master"]["open"] is True
    assert report["api"]["ok"] and report["api"]["caller"] == MEMBER
    submitted = json.loads(call("submit", "--json", str(repo / "spec.yaml")).stdout)
    assert submitted["code"]["bundle_bytes"] > 0, "the code bundle shipped"
    run = str(submitted["id"])
    follow = call("logs", run, "--follow")
    head = run_as("git", "-C", str(repo), "rev-parse", "HEAD", user=LAPTOP).stdout.strip()
    assert follow.stdout.splitlines() == [head, "shipped over the master"], follow
    assert json.loads(call("show", run, "--json").stdout)["state"] == "COMPLETED"
    long_spec = _spec(laptop, "long", "sleep 300")
    long_run = str(json.loads(call("submit", "--json", long_spec).stdout)["id"])
    call("cancel", long_run)
    while len(calls) < 20:
        call(*(("ls", "--all", "--json") if len(calls) % 2 else ("show", long_run, "--json")))
    deadline = time.monotonic() + 60
    while json.loads(laptop.cli("show", long_run, "--json").stdout)["state"] != "CANCELLED":
        assert time.monotonic() < deadline, "the cancelled run did not end CANCELLED"
        time.sleep(0.5)

    _print_latency(laptop)
    after = {phrase: laptop.otp.count(phrase) for phrase in before}
    assert after == before, f"logins or connections during the 20 calls: {before} -> {after}"
    assert laptop.askpass_calls() == 1, "no call prompted"
    timings = sorted(elapsed for _, elapsed, _ in calls)
    print(
        f"\n20 calls over one master: median {timings[len(timings) // 2] * 1000:.0f} ms, "
        f"max {timings[-1] * 1000:.0f} ms; sshd logins before/after: {before} / {after}"
    )


def test_the_master_closing_during_follow_is_said_clearly(laptop: Laptop) -> None:
    """The laptop sleeps, the VPN drops, or the user runs `ssh -O exit`: a `logs --follow`
    riding on the master ends with a clear message (exit 3), not a hang or a traceback."""
    if laptop.ssh("-O", "check", "lab-otp").returncode != 0:
        _open_master(laptop)
    ticks = "for i in $(seq 1 120); do echo tick $i; sleep 1; done"
    run = str(
        json.loads(laptop.cli("submit", "--json", _spec(laptop, "ticks", ticks)).stdout)["id"]
    )
    follow = start_follow(LAPTOP, run)
    try:
        assert laptop.ssh("-O", "exit", "lab-otp").returncode == 0
        _, stderr = follow.communicate(timeout=30)
        assert follow.returncode == 3, stderr
        assert "lost the SSH connection to remote 'otp'" in stderr, stderr
        assert "Traceback" not in stderr
    finally:
        if follow.poll() is None:
            follow.kill()  # our own child, by its pid
            follow.wait()
        laptop.lab.ok(SERVICE, "cancel", run)


def _median_s(argv: list[str], times: int = 7) -> float:
    elapsed = []
    for _ in range(times):
        started = time.monotonic()
        run_as(*argv, user=LAPTOP, timeout=60).check_returncode()
        elapsed.append(time.monotonic() - started)
    return sorted(elapsed)[times // 2]


def _print_latency(laptop: Laptop) -> None:
    """Where a call's time goes over an open master (printed, not asserted: a shared machine)."""
    python = [sys.executable, "-m", "hpcops"]
    figures = {
        "ssh lab-otp true (the floor: a mux session)": _median_s(["ssh", "lab-otp", "true"]),
        "hpcops --version (Python and click)": _median_s([*python, "--version"]),
        "hpcops ls --json over the master": _median_s([*python, "ls", "--json"]),
    }
    print("\nmedians of 7, as the laptop user:")
    for what, seconds in figures.items():
        print(f"  {seconds * 1000:6.0f} ms  {what}")


# sshd logs every session (exec, shell, subsystem) at LogLevel VERBOSE; a connection forwarded
# to a Unix socket (direct-streamlocal) only at DEBUG: a call over the forward leaves no line.
SESSION = "Starting session:"


def _forward_cache(laptop: Laptop) -> Path:
    remote = Remote(host="lab-otp", command=[REMOTE_HPCOPS], home=str(laptop.lab.home))
    return forward.cache_file(remote, {"XDG_CACHE_HOME": str(laptop.home / ".cache")})


def _forwarded_check(laptop: Laptop) -> dict[str, Any]:
    proc = laptop.cli("remote", "check", "otp", "--json")
    assert proc.returncode == 0, proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout)["forward"]
    return report


def _names_in_ls(laptop: Laptop, name: str) -> int:
    proc = laptop.cli("ls", "--all", "--json")
    assert proc.returncode == 0, proc.stderr
    return sum(run.get("name") == name for run in json.loads(proc.stdout))


def test_with_a_master_calls_after_the_first_take_the_forward(laptop: Laptop) -> None:
    if laptop.ssh("-O", "check", "lab-otp").returncode != 0:
        _open_master(laptop)
    shutil.rmtree(laptop.home / ".cache" / "hpcops", ignore_errors=True)
    sessions = laptop.otp.count(SESSION)
    assert laptop.cli("ls", "--json").returncode == 0
    assert laptop.otp.count(SESSION) == sessions + 1, "the first call: `hpcops api`"
    cache = _forward_cache(laptop)
    assert json.loads(cache.read_text())["socket"] == str(laptop.lab.home / "hpcops.sock")
    assert cache.stat().st_mode & 0o777 == 0o600 and cache.parent.stat().st_mode & 0o777 == 0o700

    report = _forwarded_check(laptop)
    assert report["up"] is True, report
    assert report["remote"] == str(laptop.lab.home / "hpcops.sock")
    assert Path(report["local"]).parent == cache.parent and report["round_trip_ms"] > 0

    sessions = laptop.otp.count(SESSION)
    listed = laptop.cli("ls", "--all", "--json")
    assert listed.returncode == 0, listed.stderr
    submitted = laptop.cli("submit", "--json", _spec(laptop, "fwd", "sleep 300"))
    assert submitted.returncode == 0, submitted.stderr
    run = str(json.loads(submitted.stdout)["id"])
    shown = laptop.cli("show", run, "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout)["id"] == int(run), shown.stderr
    cancelled = laptop.cli("cancel", run)
    assert cancelled.returncode == 0, cancelled.stderr
    assert laptop.otp.count(SESSION) == sessions, "ls, submit, show, cancel: no new session"
    name = json.loads(shown.stdout)["name"]
    assert _names_in_ls(laptop, name) == 1
    assert laptop.otp.count(SESSION) == sessions


def test_a_stale_local_socket_from_a_dead_master_recovers(laptop: Laptop) -> None:
    if laptop.ssh("-O", "check", "lab-otp").returncode != 0:
        _open_master(laptop)
    local = Path(_forwarded_check(laptop)["local"])
    assert local.is_socket()
    _no_master(laptop)
    if not local.exists():
        # OpenSSH 9.2p1 leaves it (seen here); another version might unlink it on exit: then
        # leave a dead socket there as a master killed by SIGKILL would.
        run_as(
            sys.executable,
            "-c",
            f"import socket; socket.socket(socket.AF_UNIX).bind({str(local)!r})",
            user=LAPTOP,
        ).check_returncode()
    assert local.is_socket()
    _open_master(laptop)
    sessions = laptop.otp.count(SESSION)
    proc = laptop.cli("ls", "--json")
    assert proc.returncode == 0, proc.stderr
    assert laptop.otp.count(SESSION) == sessions, "re-forwarded on the new master, no session"
    assert _forwarded_check(laptop)["up"] is True


def test_a_live_forward_whose_file_went_is_added_anew(laptop: Laptop) -> None:
    """A concurrent call took the file for stale and removed it: the master still has the
    forward (and answers `-O forward` with ok, binding nothing), so it is cancelled and added."""
    if laptop.ssh("-O", "check", "lab-otp").returncode != 0:
        _open_master(laptop)
    local = Path(_forwarded_check(laptop)["local"])
    local.unlink()
    sessions = laptop.otp.count(SESSION)
    proc = laptop.cli("ls", "--json")
    assert proc.returncode == 0, proc.stderr
    assert laptop.otp.count(SESSION) == sessions, "over the forward, added again"
    assert local.is_socket()


def _routes(laptop: Laptop) -> list[Path]:
    return sorted((laptop.home / ".cache" / "hpcops").glob("route*.json"))


def test_a_submit_after_a_forwarded_one_takes_its_route(laptop: Laptop) -> None:
    """client/route.py on the real master: the route the first submit leaves is the forward's
    local end; the next submit takes it without reading the client config or importing the
    OpenSSH modules, opens no session, and queues once; an edited config is read again."""
    if laptop.ssh("-O", "check", "lab-otp").returncode != 0:
        _open_master(laptop)
    for old in _routes(laptop):
        old.unlink()
    first = laptop.cli("submit", "--json", _spec(laptop, "route-first", "true"))
    assert first.returncode == 0, first.stderr
    [kept] = _routes(laptop)
    assert kept.name == "route.json" and kept.stat().st_mode & 0o777 == 0o600
    assert json.loads(kept.read_text())["socket"] == _forwarded_check(laptop)["local"]

    spec = _spec(laptop, "route-second", "true")
    sessions = laptop.otp.count(SESSION)
    imports = {"PYTHONPROFILEIMPORTTIME": "1"}
    second = laptop.cli("submit", "--json", spec, env=imports)
    assert second.returncode == 0, second.stderr
    for module in ("hpcops.client.config", "hpcops.client.openssh", "yaml", "subprocess"):
        assert f" {module}\n" not in second.stderr, f"{module} imported by a routed submit"
    assert laptop.otp.count(SESSION) == sessions, "no new session"
    assert _names_in_ls(laptop, json.loads(Path(spec).read_text())["name"]) == 1

    config = laptop.home / ".config" / "hpcops" / "config.yaml"
    st = config.stat()
    os.utime(config, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000))
    third = laptop.cli("submit", "--json", _spec(laptop, "route-third", "true"), env=imports)
    assert third.returncode == 0, third.stderr
    assert " hpcops.client.config\n" in third.stderr, "an edited config is read again"
    assert json.loads(kept.read_text())["stat"][3] == config.stat().st_mtime_ns, "and routed anew"


def test_a_wrong_cached_socket_falls_back_and_submits_once(laptop: Laptop) -> None:
    if laptop.ssh("-O", "check", "lab-otp").returncode != 0:
        _open_master(laptop)
    for route in _routes(laptop):  # else the submit takes the route to the forward that works
        route.unlink()
    cache = _forward_cache(laptop)
    right = str(laptop.lab.home / "hpcops.sock")
    wrong = json.loads(cache.read_text())
    wrong["socket"] = "/tmp/no-hpcops-daemon-here.sock"
    write_owned(cache, json.dumps(wrong), LAPTOP)
    spec = _spec(laptop, "once", "true")
    name = json.loads(Path(spec).read_text())["name"]
    sessions = laptop.otp.count(SESSION)
    proc = laptop.cli("submit", "--json", spec)
    assert proc.returncode == 0, proc.stderr
    assert laptop.otp.count(SESSION) == sessions + 1, "the verifying ping failed: `hpcops api`"
    assert json.loads(cache.read_text())["socket"] == right, "learnt again"
    assert _names_in_ls(laptop, name) == 1, "queued exactly once"
    assert _forwarded_check(laptop)["up"] is True


@pytest.mark.parametrize(
    "remote", ["jump-openssh", "jump-paramiko", "inline-jump-openssh", "inline-jump-paramiko"]
)
def test_proxyjump_works_with_both_transports(laptop: Laptop, remote: str) -> None:
    """`ProxyJump jump` (an alias) and `ProxyJump user@host:port`, each through the jump sshd:
    its log counts one login per call."""
    hops = laptop.jump.count("Accepted publickey")
    proc = laptop.cli("--remote", remote, "ls", "--json")
    assert proc.returncode == 0, proc.stderr
    assert isinstance(json.loads(proc.stdout), list)
    assert laptop.jump.count("Accepted publickey") == hops + 1, "one login on the jump host"
    check = laptop.cli("remote", "check", remote, "--json")
    assert check.returncode == 0, check.stderr
    report = json.loads(check.stdout)
    assert report["transport"] == remote.rsplit("-", 1)[1]
    # ssh -G writes the inline hop back as user@[host]:port; paramiko keeps it as written.
    shown = (
        "jump",
        f"{MEMBER}@127.0.0.1:{laptop.jump.port}",
        f"{MEMBER}@[127.0.0.1]:{laptop.jump.port}",
    )
    assert report["target"]["proxyjump"] in shown
    assert report["target"]["port"] == SHARED_PORT


def test_auto_is_paramiko_without_a_master_in_the_ssh_config(laptop: Laptop) -> None:
    check = laptop.cli("remote", "check", "jump-auto")
    assert check.returncode == 0, check.stderr
    assert (
        "transport : paramiko (auto: `ssh -G lab-via-jump` shows no ControlMaster" in check.stdout
    )
    assert "hpcops api: answers in" in check.stdout


def test_without_ssh_on_path_auto_falls_back_to_paramiko(laptop: Laptop) -> None:
    no_ssh = {"PATH": "/usr/sbin:/sbin"}  # runuser is in /usr/sbin; ssh is in /usr/bin
    proc = laptop.cli("--remote", "jump-auto", "ls", "--json", env=no_ssh)
    assert proc.returncode == 0, proc.stderr
    check = laptop.cli("remote", "check", "jump-auto", "--json", env=no_ssh)
    report = json.loads(check.stdout)
    assert report["transport"] == "paramiko" and "no `ssh` binary on PATH" in report["reason"]
    refused = laptop.cli("--remote", "jump-openssh", "ls", env=no_ssh)
    assert refused.returncode == 2 and "no `ssh` binary is on PATH" in refused.stderr


@pytest.mark.parametrize("case", [name for name, _, _ in FAILURES])
def test_openssh_failures_are_distinct_and_clear(laptop: Laptop, case: str) -> None:
    remote = f"ossh-{case}"
    proc = laptop.cli("--remote", remote, "ls", timeout=30)
    assert_fails_clearly(proc, remote, case)
    if case == "wrongkey":
        assert "(Permission denied (publickey))" in proc.stderr, "ssh's own words, not a guess"
    if case == "closed":
        assert "Connection refused" in proc.stderr


def test_unknown_host_key_is_refused_and_nothing_is_added(laptop: Laptop) -> None:
    known = laptop.home / ".ssh" / "known_hosts"
    saved = known.read_text()
    try:
        write_owned(known, "", LAPTOP)
        proc = laptop.cli("--remote", "jump-openssh", "ls", timeout=30)
        assert proc.returncode == 5, proc.stderr
        assert "is not in your known_hosts" in proc.stderr, proc.stderr
        assert known.read_text() == "", "no key is ever added silently"
    finally:
        write_owned(known, saved, LAPTOP)
