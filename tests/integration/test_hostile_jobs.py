"""Hostile jobs on the real cluster (issue 12, "Tests"): whatever a member's command does costs at
most that member's own run.

One lab daemon runs as the service account, with MLflow in relay mode against a real `mlflow
server` and test secrets in its environment only. Member M1 submits one run per attack; right after,
member M2 submits innocent runs. The attacks run as the daemon's own Unix account (the lab's jobs
are submitted by it), so they can do to the run directories whatever the daemon could.

The campaign runs once per module (everything submitted at once, all of it bounded by
RUNS_BUDGET_S); each test below checks one promise on what it gathered:
  - M2's runs complete, with MLflow records FINISHED;
  - `hpcops ls` and `show` answer everyone throughout, also while a garbled marker is on disk;
  - no secret of the daemon in any `logs`, `show`, MLflow record or artifact, or run directory
    (job environments included);
  - each hostile run ends, and its record says something sensible.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import ACTIVE
from lab import LEAD, MEMBERS, SERVICE, Lab, new_lab
from mlflow_server import MlflowServer

M1, M2 = MEMBERS
PYTHON = sys.executable  # the repo's .venv (an MLflow client), readable by the lab's accounts
RUNS_BUDGET_S = 180.0  # every run ended and its record complete, from the first submission

# One token in every secret: finding it anywhere means a secret (or part of one) leaked.
TOKEN = uuid.uuid4().hex
SECRETS = {
    "MLFLOW_TRACKING_PASSWORD": f"hpcops-secret-mlflow-{TOKEN}",
    "AWS_SECRET_ACCESS_KEY": f"hpcops-secret-aws-{TOKEN}",
}
DAEMON_ENV = {
    **SECRETS,
    # With a user name the daemon's client really sends the password (basic auth); the test
    # server has no auth and ignores it, so the records prove the daemon still reaches it.
    "MLFLOW_TRACKING_USERNAME": SERVICE,
    "PATH": f"{Path(PYTHON).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
}

# --- the attacks (M1's commands; $HPCOPS_RUN_DIR is the run's directory) --------------------

# Slurm opened stdout.log and stderr.log before the command ran (#SBATCH --output/--error): the
# job writes on into the old files, while the paths now lead to whoever reads them.
LINKED_LOGS = """\
ln -sf /proc/self/environ "$HPCOPS_RUN_DIR/stdout.log"
ln -sf /proc/self/environ "$HPCOPS_RUN_DIR/stderr.log"
ln -sf /proc/self/environ "$HPCOPS_RUN_DIR/job.sbatch"
echo "written after the links"
exit 1
"""
# The script runs the command as `"$BASH" -c "$hpcops_command" &`, so the command's $PPID is the
# job script's bash: killed with KILL, its EXIT trap never rewrites the marker.
GARBLED_EXIT = """\
printf '%s\\n' '99999999999999999999 1' > "$HPCOPS_RUN_DIR/hpcops.exit"
kill -9 $PPID
sleep 5
"""
# Long enough for the test to list and show while the marker is on disk.
GARBLED_START_SLEEP_S = 20
GARBLED_START = f"""\
printf '%s\\n' '1e300 node 777' > "$HPCOPS_RUN_DIR/hpcops.started"
sleep {GARBLED_START_SLEEP_S}
"""
BLOCKED_LOGS = """\
echo "into the log that is unlinked next"
chmod 000 "$HPCOPS_RUN_DIR/stderr.log"
rm "$HPCOPS_RUN_DIR/stdout.log"
mkfifo "$HPCOPS_RUN_DIR/stdout.log"
exit 3
"""
JOB_ENV = """\
env > "$HPCOPS_RUN_DIR/job-env.txt"
"""
# The spec says lr: 0.01; the job logs "1e-2", which the server refuses (a param cannot change).
# It also plants links in its relay store's artifacts, next to one plain file.
RELAY = f"""\
{PYTHON} - <<'PY'
import pathlib, urllib.parse
import mlflow
mlflow.log_param("lr", "1e-2")
mlflow.log_metric("loss", 0.25, step=1)
artifacts = pathlib.Path(urllib.parse.urlparse(mlflow.get_artifact_uri()).path)
artifacts.mkdir(parents=True, exist_ok=True)
(artifacts / "environ.txt").symlink_to("/proc/self/environ")
(artifacts / "proc").symlink_to("/proc/self")
(artifacts / "note.txt").write_text("a plain artifact\\n")
PY
"""
INNOCENT = f"""\
echo ok
{PYTHON} -c 'import mlflow; mlflow.log_metric("m", 1)'
"""

ATTACKS: dict[str, tuple[str, dict[str, Any]]] = {
    "linked-logs": (LINKED_LOGS, {}),
    "garbled-exit": (GARBLED_EXIT, {}),
    "garbled-start": (GARBLED_START, {}),
    "blocked-logs": (BLOCKED_LOGS, {}),
    "job-env": (JOB_ENV, {}),
    "relay-refusal": (RELAY, {"params": {"lr": 0.01}}),
}
INNOCENT_RUNS = 3


@dataclass(frozen=True)
class Call:
    user: str
    args: tuple[str, ...]
    returncode: int  # -1: no answer within the call's timeout
    stdout: str
    stderr: str
    hostile_active: bool = False

    def __str__(self) -> str:
        return f"{self.user}: hpcops {' '.join(self.args)} -> {self.returncode}\n{self.stderr}"


@dataclass
class Campaign:
    lab: Lab
    server: MlflowServer
    hostile: dict[str, int]
    innocent: list[int]
    listings: list[Call] = field(default_factory=list)
    # ls and show while "1e300 node 777" was the garbled run's start marker
    under_garbled_start: list[Call] = field(default_factory=list)
    final: dict[int, dict[str, Any]] = field(default_factory=dict)  # show --json as the lead
    reads: list[Call] = field(default_factory=list)  # logs and show of every run, after
    records: dict[int, Any] = field(default_factory=dict)  # MLflow Run, by hpcops run
    artifacts: dict[int, Path] = field(default_factory=dict)  # downloaded, by hpcops run
    daemon_environ: bytes = b""
    runs_s: float = 0.0

    @property
    def all_runs(self) -> list[int]:
        return [*self.hostile.values(), *self.innocent]


def _call(lab: Lab, user: str, *args: str, hostile_active: bool = False) -> Call:
    try:
        proc = lab.cli(user, *args, timeout=30)
    except subprocess.TimeoutExpired:
        return Call(user, args, -1, "", "no answer within 30 s", hostile_active)
    return Call(user, args, proc.returncode, proc.stdout, proc.stderr, hostile_active)


@pytest.fixture(scope="module")
def lab(cluster: None, server: MlflowServer) -> Iterator[Lab]:
    lab = new_lab(
        {"tracking": {"tracking_uri": server.uri, "mode": "relay", "relay_interval_s": 1.0}},
        daemon_env=DAEMON_ENV,
    )
    yield lab
    runs = lab.json(SERVICE, "ls", "--all") if (lab.home / "daemon.pid").exists() else []
    lab.stop()
    live = [r["slurm_job_id"] for r in runs if r["slurm_job_id"] and r["state"] in ACTIVE]
    if live:
        subprocess.run(["scancel", *live], check=False)


@pytest.fixture(scope="module")
def campaign(lab: Lab, server: MlflowServer, tmp_path_factory: pytest.TempPathFactory) -> Campaign:
    pid = int((lab.home / "daemon.pid").read_text())
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    started = time.monotonic()
    hostile = {
        name: lab.submit(M1, name, command, **extra) for name, (command, extra) in ATTACKS.items()
    }
    innocent = [lab.submit(M2, f"innocent{i}", INNOCENT) for i in range(INNOCENT_RUNS)]
    c = Campaign(lab, server, hostile, innocent, daemon_environ=environ)
    deadline = started + RUNS_BUDGET_S
    _watch_until_ended(c, deadline)
    _wait_recorded(c, deadline)
    c.runs_s = time.monotonic() - started
    _read_everything(c)
    _fetch_records(c, tmp_path_factory.mktemp("artifacts"))
    return c


def _watch_until_ended(c: Campaign, deadline: float) -> None:
    """List as M2 and as the lead every second or so until every run ended; once the garbled
    start marker is on disk, list and show as everyone."""
    garbled = c.hostile["garbled-start"]
    marker: Path | None = None
    states: dict[int, str] = {}
    while True:
        hostile_active = any(states.get(r, "QUEUED") in ACTIVE for r in c.hostile.values())
        for user in (M2, LEAD):
            c.listings.append(_call(c.lab, user, "ls", hostile_active=hostile_active))
        listing = _call(c.lab, LEAD, "ls", "--all", "--json", hostile_active=hostile_active)
        c.listings.append(listing)
        if listing.returncode == 0:
            states = {r["id"]: r["state"] for r in json.loads(listing.stdout)}
        if marker is None:
            shown = _call(c.lab, LEAD, "show", str(garbled), "--json")
            run_dir = json.loads(shown.stdout).get("run_dir") if shown.returncode == 0 else None
            marker = Path(run_dir) / "hpcops.started" if run_dir else None
        if not c.under_garbled_start and marker is not None and _holds(marker, "1e300"):
            c.under_garbled_start = [
                *(_call(c.lab, u, "ls") for u in (M1, M2, LEAD)),
                *(_call(c.lab, u, "ls", "--json") for u in (M1, M2, LEAD)),
                *(_call(c.lab, u, "show", str(garbled)) for u in (M1, M2, LEAD)),
                *(_call(c.lab, u, "show", str(garbled), "--json") for u in (M1, M2, LEAD)),
            ]
        if c.all_runs and all(states.get(r, "QUEUED") not in ACTIVE for r in c.all_runs):
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"runs still active after {RUNS_BUDGET_S} s: {states}")
        time.sleep(1.0)
    # And after the end.
    for user in (M1, M2, LEAD):
        c.listings.append(_call(c.lab, user, "ls"))
        c.listings.append(_call(c.lab, user, "ls", "--all", "--json"))


def _holds(path: Path, text: str) -> bool:
    try:
        return text in path.read_text(errors="replace")
    except OSError:
        return False


def _wait_recorded(c: Campaign, deadline: float) -> None:
    """Until no run's MLflow record owes anything (or the budget is spent: the tests say which
    record is incomplete)."""
    while True:
        c.final = {r: c.lab.json(LEAD, "show", str(r)) for r in c.all_runs}
        owed = {r: d["tracking_pending"] for r, d in c.final.items() if d["tracking_pending"]}
        if not owed or time.monotonic() > deadline:
            return
        time.sleep(1.0)


def _read_everything(c: Campaign) -> None:
    """`logs` (both streams) and `show` (both forms) of every run, as its owner M1 or M2 and as
    the lead, a few at a time."""
    owner = {**dict.fromkeys(c.hostile.values(), M1), **dict.fromkeys(c.innocent, M2)}
    calls = []
    for run, user in owner.items():
        for reader in (user, LEAD):
            calls += [
                (reader, "logs", str(run)),
                (reader, "logs", str(run), "--stderr"),
                (reader, "show", str(run)),
                (reader, "show", str(run), "--json"),
                (reader, "history", str(run), "--json"),
            ]
    with ThreadPoolExecutor(max_workers=8) as pool:
        c.reads = list(pool.map(lambda args: _call(c.lab, *args), calls))


def _client(server: MlflowServer) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(server.uri)


def _fetch_records(c: Campaign, into: Path) -> None:
    client = _client(c.server)
    for run, data in c.final.items():
        if not data["mlflow_run_id"]:
            continue
        c.records[run] = client.get_run(data["mlflow_run_id"])
        target = into / str(run)
        target.mkdir()
        c.artifacts[run] = Path(client.download_artifacts(data["mlflow_run_id"], "", str(target)))


def _files(directory: Path) -> Iterator[Path]:
    """Every regular file below `directory`, links not followed (a FIFO or a link is skipped:
    the test reads as root, and a link would show the test's own environment, not the
    daemon's)."""
    for parent, _dirs, names in os.walk(directory):
        for name in names:
            path = Path(parent) / name
            if stat.S_ISREG(path.lstat().st_mode):
                yield path


def _reads(c: Campaign, run: int, *args: str) -> list[Call]:
    return [call for call in c.reads if call.args == (args[0], str(run), *args[1:])]


def _history(c: Campaign, run: int) -> list[dict[str, Any]]:
    call = next(call for call in _reads(c, run, "history", "--json") if call.user == LEAD)
    assert call.returncode == 0, call
    events: list[dict[str, Any]] = json.loads(call.stdout)
    return events


def _artifact_text(c: Campaign, run: int, name: str) -> str:
    return (c.artifacts[run] / "hpcops" / name).read_text(errors="replace")


# --- the promises ---------------------------------------------------------------------------


def test_innocent_runs_complete_and_are_recorded_finished(campaign: Campaign) -> None:
    assert campaign.runs_s <= RUNS_BUDGET_S
    for run in campaign.innocent:
        data = campaign.final[run]
        assert data["state"] == "COMPLETED", data
        assert data["tracking_pending"] == [] and not data["tracking_error"], data
        record = campaign.records[run]
        assert record.info.status == "FINISHED", (run, record.info)
        assert record.data.metrics["m"] == 1
        assert record.data.tags["hpcops.owner"] == M2
        assert "ok" in _artifact_text(campaign, run, "stdout.log")


def test_listing_and_showing_work_for_everyone_throughout(campaign: Campaign) -> None:
    failed = [str(call) for call in campaign.listings if call.returncode != 0]
    assert not failed, "\n".join(failed)
    # The calls made while the garbled start marker was on disk were made during an attack too.
    during = [
        *(call for call in campaign.listings if call.hostile_active),
        *campaign.under_garbled_start,
    ]
    for user in (M2, LEAD):
        assert sum(call.user == user for call in during) >= 3, "too few listings during attacks"
    assert campaign.under_garbled_start, "the garbled start marker was never seen on disk"
    failed = [str(call) for call in campaign.under_garbled_start if call.returncode != 0]
    assert not failed, "\n".join(failed)
    # M2 sees M1's run with the garbled marker, listed like any other.
    listed = next(
        call
        for call in campaign.under_garbled_start
        if call.user == M2 and call.args == ("ls", "--json")
    )
    garbled = campaign.hostile["garbled-start"]
    assert garbled in {row["id"] for row in json.loads(listed.stdout)}
    failed = [str(call) for call in campaign.reads if call.returncode != 0]
    assert not failed, "\n".join(failed)


def test_no_secret_of_the_daemon_anywhere(campaign: Campaign) -> None:
    for name, value in SECRETS.items():
        assert f"{name}={value}".encode() in campaign.daemon_environ, "the secrets are not set"
    leaks: list[str] = []
    for call in [*campaign.reads, *campaign.listings, *campaign.under_garbled_start]:
        if TOKEN in call.stdout or TOKEN in call.stderr:
            leaks.append(f"{call.user}: hpcops {' '.join(call.args)}")
    for run, record in campaign.records.items():
        if TOKEN in repr((record.data.params, record.data.tags, record.data.metrics)):
            leaks.append(f"MLflow record of run {run}")
        for path in _files(campaign.artifacts[run]):
            if TOKEN.encode() in path.read_bytes():
                leaks.append(f"MLflow artifact {path} of run {run}")
    for data in campaign.final.values():
        if data["run_dir"]:
            for path in _files(Path(data["run_dir"])):
                if TOKEN.encode() in path.read_bytes():
                    leaks.append(f"run directory file {path}")
    assert not leaks, "the daemon's secrets leaked into:\n" + "\n".join(leaks)


def test_linked_logs_are_read_as_nothing(campaign: Campaign) -> None:
    run = campaign.hostile["linked-logs"]
    data = campaign.final[run]
    assert data["state"] == "FAILED" and data["exit_code"] == 1, data
    assert "MLFLOW_TRACKING_USERNAME" not in (data["stderr_tail"] or "")
    for call in [*_reads(campaign, run, "logs"), *_reads(campaign, run, "logs", "--stderr")]:
        assert "MLFLOW_TRACKING_USERNAME" not in call.stdout, call
    assert data["tracking_pending"] == [], data
    assert campaign.records[run].info.status == "FAILED"
    for name in ("stdout.log", "stderr.log"):
        text = _artifact_text(campaign, run, name)
        assert "MLFLOW_TRACKING_USERNAME" not in text and "not uploaded" in text, text


def test_a_garbled_exit_marker_costs_only_its_own_run(campaign: Campaign) -> None:
    run = campaign.hostile["garbled-exit"]
    data = campaign.final[run]
    # The job script was killed: Slurm's word decides (FAILED, signal 9 on 22.05).
    assert data["state"] not in ACTIVE and data["state"] != "COMPLETED", data
    assert data["reason"], data
    assert data["tracking_pending"] == [] and not data["tracking_error"], data
    assert campaign.records[run].info.status == "FAILED"


def test_a_garbled_exit_marker_is_named_in_its_runs_record(campaign: Campaign) -> None:
    run = campaign.hostile["garbled-exit"]
    data = campaign.final[run]
    said = [data["reason"] or "", *(e["reason"] or "" for e in _history(campaign, run))]
    assert any("ignored its exit marker" in text for text in said), (data["reason"], said)


def test_a_garbled_start_marker_is_ignored(campaign: Campaign) -> None:
    run = campaign.hostile["garbled-start"]
    data = campaign.final[run]
    assert data["state"] == "COMPLETED", data
    # Its start time is Slurm's, not 1e300.
    assert data["started_at"] and data["started_at"].startswith("20"), data
    assert campaign.records[run].info.status == "FINISHED"


def test_unreadable_and_fifo_logs_cost_only_their_own_files(campaign: Campaign) -> None:
    run = campaign.hostile["blocked-logs"]
    data = campaign.final[run]
    assert data["state"] == "FAILED" and data["exit_code"] == 3, data
    assert data["tracking_pending"] == [] and not data["tracking_error"], data
    assert campaign.records[run].info.status == "FAILED"
    for name in ("stdout.log", "stderr.log"):
        assert "not uploaded" in _artifact_text(campaign, run, name)


def test_a_jobs_environment_holds_no_secret_of_the_daemon(campaign: Campaign) -> None:
    run = campaign.hostile["job-env"]
    data = campaign.final[run]
    assert data["state"] == "COMPLETED", data
    environ = dict(
        line.split("=", 1)
        for line in (Path(data["run_dir"]) / "job-env.txt").read_text().splitlines()
        if "=" in line
    )
    assert environ["HPCOPS_RUN_ID"] == f"r-{run:06d}"
    assert environ["PATH"] == DAEMON_ENV["PATH"]  # the allow-list still works
    for name in (*SECRETS, "MLFLOW_TRACKING_USERNAME"):
        assert name not in environ, name
    assert environ["MLFLOW_TRACKING_URI"].startswith("file://")  # its relay store, not the server


def test_a_refused_relayed_param_loses_only_itself(campaign: Campaign) -> None:
    run = campaign.hostile["relay-refusal"]
    data = campaign.final[run]
    assert data["state"] == "COMPLETED", data
    assert data["tracking_pending"] == [], data
    record = campaign.records[run]
    assert record.info.status == "FINISHED"
    assert record.data.params["lr"] == "0.01"  # the spec's value; the job's "1e-2" was refused
    assert record.data.metrics["loss"] == 0.25
    relayed = {
        str(path.relative_to(campaign.artifacts[run])) for path in _files(campaign.artifacts[run])
    }
    assert "note.txt" in relayed, relayed
    assert "environ.txt" not in relayed and not any(p.startswith("proc/") for p in relayed)
    assert data["mlflow_relay_dir"].startswith(data["run_dir"]), data
