"""`hpcops submit` from a laptop against `ssh host sbatch script` of the same rendered script,
three ways in the same run (issue 16, "Latency"):

  with_master     transport: openssh over an OPEN master connection (the laptop's ~/.ssh/config
                  has ControlMaster auto, ControlPath, ControlPersist for the host; the benchmark
                  opens it with `ssh -fN host` before the rounds and closes it with
                  `ssh -O exit host` after), against `ssh host sbatch --parsable SCRIPT` over the
                  same master. Target: ratio at most 1.3.
  without_master  transport: openssh to a host with no master (a new connection, key login, per
                  call), against raw `ssh host sbatch --parsable SCRIPT` without a master; and
                  where the time goes, each part measured on its own.
  paramiko        the paramiko transport (hpcops' own SSH client, a new connection per call),
                  against the same no-master raw baseline: the measurement this file made before
                  OpenSSH, for comparison.

The laptop is a Unix user of its own with its own key, known_hosts, ~/.ssh/config and client
config. It logs in to the shared dev sshd (127.0.0.1:2222) as the daemon's own account, where
`hpcops api` relays to the daemon's socket. The daemon reaches Slurm over SSH too
(slurm.transport: ssh, its own paramiko connection to the same sshd), as a lab's server off the
cluster would. The spec has no `code:` block. Slurm keeps the jobs pending (they never run) and
the benchmark cancels them, by id, at the end.

Each round runs the three ways in turn (the order rotates by round); each way:
  hpcops  from the CLI's start until the daemon's sbatch has returned the job id (the run's
          submitted_at in the daemon's database), the CLI's own wall time, and the daemon's
          share (queued -> sbatch returned);
  raw     `ssh HOST sbatch --parsable SCRIPT` (OpenSSH, as a user would type it) of a copy of
          the script hpcops rendered for that run;
and then the parts, each on its own: `ssh HOST true` (with a master: one session on it;
without: connect and key login), `ssh HOST hpcops --version`, `ssh HOST hpcops api </dev/null`
(the API's start and exit on the login node, no request), `ssh MASTER python -c pass`,
`hpcops api </dev/null` and `sbatch --parsable SCRIPT` on the login node without ssh, and on the
laptop `python -c pass`, `hpcops --version` and `python -c "import <what submit
imports>"`. From those, each way's "where the time goes", and with a master the floor: what a
Python client with no imports would cost over the master's socket forward (after the first
call, no session and no `hpcops api`: client/forward.py) with a daemon adding nothing to its
own ssh sbatch. After the rounds, one submit of each OpenSSH way under
`python -X importtime`, and `hpcops api` on the login node under PYTHONPROFILEIMPORTTIME, say
what the imports cost.

The dev sshd and Slurm are shared with the tests (and CI) on this machine: the figures carry
their noise; run it more than once. The benchmark never starts, restarts or stops the sshd.

    .venv/bin/python -m tests.benchmarks.bench_ssh_submit     (as root, from the repo)
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.benchmarks.common import REPO, ensure_user, write_result
from tests.benchmarks.ssh_setup import (
    PORT,
    SSH_BENCH_USER,
    authorize,
    jobs_held_pending,
    logins_since,
    ssh_daemon,
    sshd_known_hosts,
    sshd_log_offset,
    user_key,
)

LAPTOP = "hpcopssshlaptop"
ROUNDS = 15
TARGET = 1.3
# ~/.ssh/config aliases of the laptop: the same sshd and account, with and without a master.
MASTER_HOST = "benchmaster"
DIRECT_HOST = "benchdirect"
HPCOPS_REMOTE = str(REPO / ".venv" / "bin" / "hpcops")  # `command:` on the login node
# Packages issue 16 says a client must not import when it does not need them, and the other big
# ones worth naming when they show up in an import profile.
SUBMIT_IMPORTS = (
    # What `hpcops submit` of a plain spec imports through the fast entry (hpcops/cli/fast.py)
    # over the route the last forwarded submit left (client/route.py): after the first call,
    # no client config and no OpenSSH module (the first call imports those too).
    "import hpcops.cli.fast, hpcops.cli.queued, hpcops.client.connect, hpcops.client.route, "
    "hpcops.specfile"
)
HEAVY = (
    "pydantic",
    "mlflow",
    "dvc",
    "paramiko",
    "cryptography",
    "sqlalchemy",
    "sqlmodel",
    "jinja2",
    "yaml",
    "click",
)


def _laptop(*argv: str) -> list[str]:
    return ["runuser", "-u", LAPTOP, "--", *argv]


def _login_node(*argv: str) -> list[str]:
    return ["runuser", "-u", SSH_BENCH_USER, "--", *argv]


def _timed(argv: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    proc = subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, cwd="/tmp"
    )
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} -> {proc.returncode}: {proc.stderr}")
    return elapsed, proc.stdout


def _run_row(database: Path, run_id: int, timeout_s: float = 30) -> tuple[float, float, str]:
    """When the daemon queued the run, when its sbatch (over SSH) returned, and the job id."""
    deadline = time.monotonic() + timeout_s
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        while time.monotonic() < deadline:
            row = db.execute(
                "SELECT created_at, submitted_at, slurm_job_id FROM run WHERE id = ?", (run_id,)
            ).fetchone()
            if row and row[1] is not None:
                return float(row[0]), float(row[1]), str(row[2])
            time.sleep(0.005)
    raise TimeoutError(f"run {run_id} not submitted within {timeout_s} s")


def _daemon_jobs(database: Path) -> list[str]:
    """Every Slurm job the benchmark's daemon submitted (its own database)."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        rows = db.execute(
            "SELECT slurm_job_id FROM run WHERE slurm_job_id IS NOT NULL "
            "UNION SELECT slurm_job_id FROM attempt WHERE slurm_job_id IS NOT NULL"
        ).fetchall()
    return [str(r[0]) for r in rows]


def _import_profile(stderr: str) -> dict[str, Any]:
    """`-X importtime` output: the total, the top-level imports that cost most (cumulative), the
    packages whose own modules cost most (self time summed; hpcops by subpackage, since building
    pydantic models is self time of the hpcops module that defines them), and which of the
    heavy packages were imported at all."""
    entries = []
    for line in stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \| ( *)(\S+)$", line)
        if m:
            entries.append((int(m.group(2)), int(m.group(1)), len(m.group(3)) // 2, m.group(4)))
    top = sorted((e for e in entries if e[2] == 0), reverse=True)
    by_package: dict[str, int] = {}
    for _, own, _, name in entries:
        words = name.split(".")
        package = ".".join(words[:2]) if words[0] == "hpcops" else words[0]
        by_package[package] = by_package.get(package, 0) + own
    costly = sorted(by_package.items(), key=lambda item: -item[1])[:12]
    return {
        "all_imports_s": round(sum(e[0] for e in top) / 1e6, 3),
        "top_level_cumulative_s": {name: round(cum / 1e6, 3) for cum, _, _, name in top[:8]},
        "self_s_by_package": {name: round(own / 1e6, 3) for name, own in costly},
        "heavy_packages_imported": sorted(
            {name.split(".")[0] for *_, name in entries} & set(HEAVY)
        ),
        "modules": len(entries),
    }


@dataclass
class Way:
    """One way of submitting: its hpcops remote and the ssh host of its raw baseline."""

    remote: str
    host: str
    to_slurm: list[float] = field(default_factory=list)
    cli: list[float] = field(default_factory=list)
    backend: list[float] = field(default_factory=list)
    raw: list[float] = field(default_factory=list)


def _figures(way: Way) -> dict[str, Any]:
    median = statistics.median
    return {
        "hpcops_submit_until_in_slurm_s_median": round(median(way.to_slurm), 3),
        "hpcops_submit_until_in_slurm_s_max": round(max(way.to_slurm), 3),
        "hpcops_submit_cli_wall_s_median": round(median(way.cli), 3),
        "hpcops_submit_cli_wall_s_max": round(max(way.cli), 3),
        "daemon_queued_to_sbatch_returned_over_ssh_s_median": round(median(way.backend), 3),
        "raw_ssh_sbatch_s_median": round(median(way.raw), 3),
        "raw_ssh_sbatch_s_max": round(max(way.raw), 3),
        "ratio": round(median(way.to_slurm) / median(way.raw), 2),
        # What the user waits for: the command's own wall time (the run is queued, durably,
        # when it returns; the lab's policy decides when it reaches Slurm).
        "cli_wall_ratio": round(median(way.cli) / median(way.raw), 2),
    }


def _write_laptop_config(laptop_home: Path, daemon_home: Path) -> None:
    ssh_dir = laptop_home / ".ssh"
    (ssh_dir / "known_hosts").write_text(sshd_known_hosts() + "\n")
    common = (
        f"    HostName 127.0.0.1\n    Port {PORT}\n    User {SSH_BENCH_USER}\n"
        "    IdentityFile ~/.ssh/id_ed25519\n    IdentitiesOnly yes\n    BatchMode yes\n"
    )
    config = ssh_dir / "config"
    config.write_text(
        f"Host {MASTER_HOST}\n{common}    ControlMaster auto\n"
        "    ControlPath ~/.ssh/cm-%C\n    ControlPersist 10m\n\n"
        f"Host {DIRECT_HOST}\n{common}    ControlMaster no\n    ControlPath none\n"
    )
    config.chmod(0o600)
    config_dir = laptop_home / ".config" / "hpcops"
    config_dir.mkdir(parents=True, exist_ok=True)
    login = {"command": [HPCOPS_REMOTE], "home": str(daemon_home)}
    (config_dir / "config.yaml").write_text(
        json.dumps(
            {
                "default_remote": "paramiko",
                "remotes": {
                    "paramiko": {
                        "host": "127.0.0.1",
                        "port": PORT,
                        "user": SSH_BENCH_USER,
                        "transport": "paramiko",
                        **login,
                    },
                    "master": {"host": MASTER_HOST, "transport": "openssh", **login},
                    "direct": {"host": DIRECT_HOST, "transport": "openssh", **login},
                },
            }
        )
    )


def _open_master() -> None:
    """`ssh -fN HOST` as the laptop: logs in once and stays in the background as the master.
    Its stdout/stderr go to files: the backgrounded master keeps them open."""
    with tempfile.TemporaryFile() as err:
        status = subprocess.run(
            _laptop("ssh", "-fN", MASTER_HOST),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
            timeout=30,
            check=False,
        ).returncode
        err.seek(0)
        if status != 0:
            raise RuntimeError(f"ssh -fN {MASTER_HOST}: {status}: {err.read().decode()}")
    check = subprocess.run(
        _laptop("ssh", "-O", "check", MASTER_HOST), capture_output=True, text=True, check=False
    )
    if check.returncode != 0:
        raise RuntimeError(f"no master after ssh -fN: {check.stderr}")


def _close_master() -> None:
    subprocess.run(
        _laptop("ssh", "-O", "exit", MASTER_HOST),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=30,
        check=False,
    )


def main() -> None:
    ensure_user(LAPTOP)
    daemon = ssh_daemon(max_active=1000, pending_window=1000)
    database = daemon.home / "hpcops.db"
    laptop_home = Path(f"~{LAPTOP}").expanduser()
    user_key(LAPTOP, "id_ed25519")
    authorize(SSH_BENCH_USER, laptop_home / ".ssh" / "id_ed25519")  # as the daemon's account
    _write_laptop_config(laptop_home, daemon.home)
    specs = laptop_home / "specs"
    shutil.rmtree(specs, ignore_errors=True)
    specs.mkdir()
    counter = iter(range(10_000))

    def spec() -> str:
        i = next(counter)
        path = specs / f"s{i:03d}.yaml"
        path.write_text(
            json.dumps(
                {
                    "name": f"sshsubmit-{i:03d}",
                    "experiment": "bench",
                    "command": "sleep 600",
                    "workdir": "/tmp",
                    "resources": {"time": "00:20:00"},
                }
            )
        )
        shutil.chown(path, LAPTOP, LAPTOP)
        return str(path)

    subprocess.run(["chown", "-R", f"{LAPTOP}:{LAPTOP}", str(laptop_home)], check=True)
    raw_dir = Path(f"~{SSH_BENCH_USER}").expanduser() / "raw-scripts"
    shutil.rmtree(raw_dir, ignore_errors=True)
    raw_dir.mkdir()
    shutil.chown(raw_dir, SSH_BENCH_USER, SSH_BENCH_USER)
    python = sys.executable
    # The installed script, as a user's shell runs it (`python -m hpcops` adds runpy's imports).
    hpcops = [str(Path(python).parent / "hpcops")]
    api_on_login = [HPCOPS_REMOTE, "--home", str(daemon.home), "api"]
    ways = {
        "with_master": Way("master", MASTER_HOST),
        "without_master": Way("direct", DIRECT_HOST),
        "paramiko": Way("paramiko", DIRECT_HOST),
    }
    part_argv = {
        "master_ssh_true_s": _laptop("ssh", MASTER_HOST, "true"),
        "master_ssh_python_bare_s": _laptop("ssh", MASTER_HOST, python, "-c", "pass"),
        "master_ssh_hpcops_api_start_s": _laptop("ssh", "-T", MASTER_HOST, *api_on_login),
        "direct_ssh_true_s": _laptop("ssh", DIRECT_HOST, "true"),
        "direct_ssh_hpcops_version_s": _laptop("ssh", DIRECT_HOST, HPCOPS_REMOTE, "--version"),
        "direct_ssh_hpcops_api_start_s": _laptop("ssh", "-T", DIRECT_HOST, *api_on_login),
        "login_node_hpcops_api_start_s": _login_node(*api_on_login),
        "laptop_python_bare_s": _laptop(python, "-c", "pass"),
        "laptop_hpcops_version_s": _laptop(*hpcops, "--version"),
        # What `hpcops submit` of a spec without code: imports on the laptop, without running.
        "laptop_python_submit_imports_s": _laptop(python, "-c", SUBMIT_IMPORTS),
        "paramiko_hpcops_daemon_status_s": _laptop(
            *hpcops, "--remote", "paramiko", "daemon", "status", "--json"
        ),
    }
    parts: dict[str, list[float]] = {name: [] for name in (*part_argv, "login_node_sbatch_s")}
    jobs: list[str] = []  # every job this benchmark put into Slurm, cancelled by id at the end
    scripts: list[Path] = []

    def submit(way: Way) -> None:
        started = time.time()
        cli_s, out = _timed(_laptop(*hpcops, "--remote", way.remote, "submit", "--json", spec()))
        run_id = int(json.loads(out)["id"])
        queued_at, submitted_at, job = _run_row(database, run_id)
        jobs.append(job)
        way.to_slurm.append(submitted_at - started)
        way.backend.append(submitted_at - queued_at)
        way.cli.append(cli_s)
        run_dir = Path(daemon.json("show", str(run_id))["run_dir"])
        copy = raw_dir / f"run-{run_id}.sbatch"
        shutil.copy(run_dir / "job.sbatch", copy)
        shutil.chown(copy, SSH_BENCH_USER, SSH_BENCH_USER)
        scripts.append(copy)
        raw_s, raw_job = _timed(_laptop("ssh", way.host, "sbatch", "--parsable", str(copy)))
        raw_job = raw_job.strip().split(";")[0]
        assert raw_job.isdigit(), raw_job
        jobs.append(raw_job)
        way.raw.append(raw_s)

    profiles: dict[str, Any] = {}
    logins_on_master: int | None = None
    with jobs_held_pending(SSH_BENCH_USER, jobs):
        daemon.start()
        master_open = False
        try:
            _open_master()
            master_open = True
            # Warm-up: first imports, partition cache, the daemon's connection; and proof that
            # the master carries the hpcops calls: no new login at the sshd.
            for way in ways.values():
                _timed(_laptop(*hpcops, "--remote", way.remote, "submit", "--json", spec()))
            offset = sshd_log_offset()
            _timed(_laptop(*hpcops, "--remote", "master", "daemon", "status", "--json"))
            _timed(_laptop("ssh", MASTER_HOST, "true"))
            time.sleep(0.2)
            logins_on_master = logins_since(offset, SSH_BENCH_USER)
            order = list(ways.values())
            for i in range(ROUNDS):
                for way in order[i % 3 :] + order[: i % 3]:
                    submit(way)
                for name, argv in part_argv.items():
                    parts[name].append(_timed(argv)[0])
                # sbatch itself, on the login node, without ssh: the floor of the daemon's share
                sbatch_s, job = _timed(_login_node("sbatch", "--parsable", str(scripts[-1])))
                jobs.append(job.strip().split(";")[0])
                parts["login_node_sbatch_s"].append(sbatch_s)
            # Where the imports go: the laptop's CLI for one submit of each OpenSSH way, and
            # `hpcops api` on the login node (over the master, as the submit runs it).
            for name, remote in (
                ("laptop_submit_master", "master"),
                ("laptop_submit_direct", "direct"),
            ):
                proc = subprocess.run(
                    _laptop(
                        python,
                        "-X",
                        "importtime",
                        "-m",
                        "hpcops",
                        "--remote",
                        remote,
                        "submit",
                        "--json",
                        spec(),
                    ),
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    cwd="/tmp",
                    check=True,
                )
                jobs.append(_run_row(database, int(json.loads(proc.stdout)["id"]))[2])
                profiles[name] = _import_profile(proc.stderr)
            proc = subprocess.run(
                _laptop(python, "-X", "importtime", "-m", "hpcops", "--version"),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                cwd="/tmp",
                check=True,
            )
            profiles["laptop_hpcops_version"] = _import_profile(proc.stderr)
            proc = subprocess.run(
                _laptop(
                    "ssh", "-T", MASTER_HOST, "env", "PYTHONPROFILEIMPORTTIME=1", *api_on_login
                ),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                cwd="/tmp",
                check=True,
            )
            profiles["login_node_hpcops_api"] = _import_profile(proc.stderr)
            paramiko_import_s = statistics.median(
                _timed(_laptop(python, "-c", "import paramiko"))[0] for _ in range(5)
            )
        finally:
            if master_open:
                _close_master()
            daemon.stop_daemon()
            jobs.extend(_daemon_jobs(database))
    median = statistics.median
    part = {name: round(median(values), 3) for name, values in parts.items()}
    a, b, c = (_figures(way) for way in ways.values())
    a_backend = a["daemon_queued_to_sbatch_returned_over_ssh_s_median"]
    b_backend = b["daemon_queued_to_sbatch_returned_over_ssh_s_median"]
    laptop_s = part["laptop_python_submit_imports_s"]
    a_explained = laptop_s + a_backend  # over the forward: no session, no `hpcops api`
    b_explained = laptop_s + part["direct_ssh_hpcops_api_start_s"] + b_backend
    # The least a laptop Python client could cost over the master's socket forward (no session,
    # no `hpcops api`) with no imports, and a daemon that added nothing to its own SSH sbatch
    # (a session on the connection it keeps, priced as one on the master): a bare interpreter,
    # one session and sbatch on the login node.
    floor_s = part["laptop_python_bare_s"] + part["master_ssh_true_s"]
    floor_s += part["login_node_sbatch_s"]
    write_result(
        "ssh_submit",
        {
            "rounds": ROUNDS,
            "target": f"with_master.ratio <= {TARGET}: `hpcops submit` over an open master "
            "connection at most 1.3x `ssh host sbatch --parsable SCRIPT` of the same rendered "
            "script over the same master (issue 16)",
            "ratio": a["ratio"],
            "meets_target": a["ratio"] <= TARGET,
            "with_master": {
                **a,
                "new_sshd_logins_for_an_hpcops_call_and_ssh_true": logins_on_master,
                "where_the_time_goes_s_median": {
                    "laptop_python_and_submit_imports": laptop_s,
                    # Calls after the first ride the master's socket forward: neither of
                    # these is paid (the first call pays both, to learn the daemon's socket).
                    "not_paid_master_session_plus_hpcops_api_start": part[
                        "master_ssh_hpcops_api_start_s"
                    ],
                    "daemon_queued_to_sbatch_returned": a_backend,
                    "of_which_sbatch_on_login_node_alone": part["login_node_sbatch_s"],
                    "rest_spec_check_request_round_trips": round(
                        a["hpcops_submit_until_in_slurm_s_median"] - a_explained, 3
                    ),
                },
                "floor_s": round(floor_s, 3),
                "floor_ratio": round(floor_s / a["raw_ssh_sbatch_s_median"], 2),
                "floor_is": "laptop python -c pass + one ssh session over the master + sbatch "
                "on the login node: a Python client with no imports over the master's socket "
                "forward, and a daemon that adds nothing to its own ssh sbatch",
            },
            "without_master": {
                **b,
                "where_the_time_goes_s_median": {
                    "laptop_python_and_submit_imports": laptop_s,
                    "ssh_connect_auth_plus_hpcops_api_start": part["direct_ssh_hpcops_api_start_s"],
                    "of_which_ssh_connect_auth_alone": part["direct_ssh_true_s"],
                    "daemon_queued_to_sbatch_returned": b_backend,
                    "of_which_sbatch_on_login_node_alone": part["login_node_sbatch_s"],
                    "rest_spec_check_request_round_trips": round(
                        b["hpcops_submit_until_in_slurm_s_median"] - b_explained, 3
                    ),
                },
            },
            "paramiko": {
                **c,
                "hpcops_remote_daemon_status_s_median": part["paramiko_hpcops_daemon_status_s"],
                "laptop_python_import_paramiko_s_median": round(paramiko_import_s, 3),
            },
            "parts_s_median": part,
            "parts_note": "each part is a median of its own calls, made between the submits; "
            "on a machine shared with a test run their sum can exceed a submit's median "
            "(then `rest` is negative)",
            "import_profiles": profiles,
            "setup": "laptop user -> dev sshd 127.0.0.1:2222 (OpenSSH with/without a "
            "ControlMaster, or paramiko) -> hpcops api -> daemon; the daemon -> the same sshd "
            "-> sbatch (slurm.transport: ssh); no code: block; the sshd and Slurm are shared "
            "with a concurrent test run",
        },
    )


if __name__ == "__main__":
    main()
