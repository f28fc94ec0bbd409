"""A spec goes in, a real Slurm job runs, and the daemon knows exactly what happened."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from conftest import Daemon, sacct_jobs_named, slurm, write_spec

ALLOCATE_AND_SLEEP = (
    "python3 -c 'import time; block = bytearray(200 * 1024 * 1024); "
    'block[::4096] = b"x" * len(block[::4096]); time.sleep(4); print("done", len(block))\''
)


def test_job_completes_and_show_agrees_with_sacct(daemon: Daemon, tmp_path: Path) -> None:
    spec = write_spec(
        tmp_path, "completes", ALLOCATE_AND_SLEEP, resources={"mem": "1G", "time": "00:05:00"}
    )
    run = daemon.submit(spec)
    data = daemon.wait_ended(run)
    assert data["state"] == "COMPLETED", data
    assert data["exit_code"] == 0
    assert daemon.cli("wait", str(run)).returncode == 0
    assert daemon.cli("logs", str(run), check=True).stdout.strip() == f"done {200 * 1024 * 1024}"

    out = slurm(
        "sacct",
        "--noheader",
        "--parsable2",
        f"--jobs={data['slurm_job_id']}",
        "--format=JobID,ExitCode,ElapsedRaw,MaxRSS",
    )
    rows = [line.split("|") for line in out.splitlines()]
    job_row = next(r for r in rows if r[0] == data["slurm_job_id"])
    assert job_row[1] == "0:0"
    assert int(job_row[2]) == data["elapsed_s"]
    rss_kib = [int(r[3].rstrip("K")) for r in rows if r[3].endswith("K")]
    assert data["max_rss_bytes"] == max(rss_kib) * 1024
    assert data["max_rss_bytes"] >= 200 * 1024 * 1024, "the job touched 200 MiB"
    for key in ("submitted_at", "started_at", "ended_at"):
        assert data[key] is not None, key


def test_failing_script_reports_exit_code_and_stderr(daemon: Daemon, tmp_path: Path) -> None:
    spec = write_spec(
        tmp_path, "fails", "echo 'loading data'; echo 'ValueError: bad shard 7' >&2; exit 3"
    )
    run = daemon.submit(spec)
    data = daemon.wait_ended(run)
    assert data["state"] == "FAILED"
    assert data["exit_code"] == 3
    waited = daemon.cli("wait", str(run))
    assert waited.returncode == 1 and "FAILED (exit 3)" in waited.stdout
    assert "ValueError: bad shard 7" in data["stderr_tail"]
    shown = daemon.cli("show", str(run), check=True).stdout
    assert "ValueError: bad shard 7" in shown and "FAILED" in shown


def test_cancel_running_job(daemon: Daemon, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "cancel", "sleep 300")
    run = daemon.submit(spec)
    data = daemon.wait_state(run, {"RUNNING"})
    assert daemon.cli("wait", str(run), "--timeout", "1").returncode == 124
    daemon.cli("cancel", str(run), check=True)
    data = daemon.wait_ended(run, timeout=60)
    assert data["state"] == "CANCELLED"
    jobs = sacct_jobs_named(data["name"], at_least=1)
    assert [j["state"].split()[0] for j in jobs] == ["CANCELLED"]


def test_cancel_queued_run_never_reaches_slurm(daemon: Daemon, tmp_path: Path) -> None:
    # Fill the release window with one long job so the next run waits in hpcops' queue.
    daemon.stop()
    daemon.config["max_active"] = 1
    daemon.start()
    blocker = daemon.submit(write_spec(tmp_path, "blocker", "sleep 300"))
    spec = write_spec(tmp_path, "queued", "true")
    run = daemon.submit(spec)
    assert daemon.show(run)["state"] == "QUEUED"
    daemon.cli("cancel", str(run), check=True)
    assert daemon.show(run)["state"] == "CANCELLED"
    daemon.cli("cancel", str(blocker), check=True)
    daemon.wait_ended(blocker)
    assert sacct_jobs_named(daemon.show(run)["name"]) == []


def test_timeout(daemon: Daemon, tmp_path: Path) -> None:
    spec = write_spec(tmp_path, "timeout", "sleep 600", resources={"time": "1"})
    run = daemon.submit(spec)
    data = daemon.wait_ended(run, timeout=240)
    assert data["state"] == "TIMEOUT"


def test_history_records_every_transition(daemon: Daemon, tmp_path: Path) -> None:
    run = daemon.submit(write_spec(tmp_path, "history", "true"))
    daemon.wait_ended(run)
    events = daemon.json("history", str(run))
    states = [e["to"] for e in events if e["from"] != e["to"]]
    assert states == ["QUEUED", "SUBMITTING", "PENDING", "RUNNING", "COMPLETED"] or states == [
        "QUEUED",
        "SUBMITTING",
        "PENDING",
        "COMPLETED",
    ]
    assert events[0]["actor"] == daemon.json("daemon", "status")["caller"]


def _crash_at(daemon: Daemon, fault: str, spec: Path) -> int:
    """Submit with a fault point armed; return the run id once the daemon killed itself and a
    new one started. The daemon may die before it answers the submit (the loop can reach the
    fault point first): the run was committed all the same, and is found by name."""
    daemon.stop()
    daemon.start(HPCOPS_FAULT=fault)
    daemon.cli("submit", str(spec))
    deadline = time.monotonic() + 30
    while Path(f"/proc/{daemon.pid()}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not Path(f"/proc/{daemon.pid()}").exists(), "the fault point did not fire"
    (daemon.home / "daemon.pid").unlink()
    daemon.start()  # no fault this time
    name = json.loads(spec.read_text())["name"]
    runs = [r["id"] for r in daemon.json("ls", "--all") if r["name"] == name]
    assert len(runs) == 1, f"the crash lost or doubled the run: {runs}"
    return int(runs[0])


def test_kill9_between_sbatch_and_commit_adopts_the_job(daemon: Daemon, tmp_path: Path) -> None:
    # The daemon submits the job, then dies before recording the job id; start-up finds the job
    # by the token in its --comment and adopts it.
    run = _crash_at(daemon, "after_sbatch", write_spec(tmp_path, "crash", "sleep 2; echo ok"))
    data = daemon.wait_ended(run)
    assert data["state"] == "COMPLETED"
    jobs = sacct_jobs_named(data["name"], at_least=1)
    assert len(jobs) == 1, f"exactly one Slurm job for the run, got {jobs}"
    assert jobs[0]["job_id"] == data["slurm_job_id"]
    history = daemon.json("history", str(run))
    assert any("adopted" in e["reason"] for e in history)


def test_kill9_between_claim_and_sbatch_submits_once(daemon: Daemon, tmp_path: Path) -> None:
    # The run was committed SUBMITTING, but sbatch never ran: after the grace period the daemon
    # concludes Slurm never saw it and submits it, once.
    daemon.config["slurm"]["submit_grace_s"] = 5
    run = _crash_at(daemon, "before_sbatch", write_spec(tmp_path, "early", "echo ok"))
    data = daemon.wait_ended(run, timeout=90)
    assert data["state"] == "COMPLETED"
    assert data["attempt"] == 2
    assert len(sacct_jobs_named(data["name"], at_least=1)) == 1
    history = daemon.json("history", str(run))
    assert any("never reached Slurm" in e["reason"] for e in history)


def test_restart_while_jobs_run(daemon: Daemon, tmp_path: Path) -> None:
    runs = [
        daemon.submit(write_spec(tmp_path, f"restart{i}", "sleep 6; echo ok")) for i in range(3)
    ]
    for run in runs:
        daemon.wait_state(run, {"PENDING", "RUNNING"})
    daemon.kill9()
    (daemon.home / "daemon.pid").unlink()
    time.sleep(1)
    daemon.start()
    for run in runs:
        data = daemon.wait_ended(run)
        assert data["state"] == "COMPLETED"
        assert len(sacct_jobs_named(data["name"], at_least=1)) == 1


@pytest.mark.exclusive
def test_slurmctld_outage(daemon: Daemon, tmp_path: Path) -> None:
    runs = [
        daemon.submit(write_spec(tmp_path, f"outage{i}", "sleep 20; echo ok")) for i in range(2)
    ]
    for run in runs:
        daemon.wait_state(run, {"RUNNING"})
    subprocess.run(
        [str(Path(__file__).parents[2] / "scripts/dev-cluster"), "stop-ctld"], check=True
    )
    try:
        queued_during_outage = daemon.submit(write_spec(tmp_path, "during", "echo late"))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status = daemon.json("daemon", "status")  # keeps answering
            states = {r["id"]: r["state"] for r in daemon.json("ls", "--all")}
            assert not {"FAILED", "UNKNOWN"} & set(states.values()), states
            time.sleep(2)
        assert status["slurm"]["reachable"] is False
    finally:
        subprocess.run(
            [str(Path(__file__).parents[2] / "scripts/dev-cluster"), "start-ctld"], check=True
        )
    for run in [*runs, queued_during_outage]:
        assert daemon.wait_ended(run, timeout=180)["state"] == "COMPLETED"
    assert daemon.json("daemon", "status")["slurm"]["reachable"] is True


def test_logs_follow_streams_until_the_run_ends(daemon: Daemon, tmp_path: Path) -> None:
    spec = write_spec(
        tmp_path, "follow", "for i in 1 2 3 4; do echo line $i; sleep 1; done; echo oops >&2"
    )
    run = daemon.submit(spec)
    proc = daemon.cli("logs", str(run), "--follow", check=True, timeout=120)
    assert proc.stdout.splitlines() == ["line 1", "line 2", "line 3", "line 4"]
    assert daemon.cli("logs", str(run), "--stderr", check=True).stdout == "oops\n"
    assert daemon.cli("logs", str(run), "--tail", "7", check=True).stdout == "line 4\n"
    assert daemon.show(run)["state"] == "COMPLETED"


@pytest.mark.exclusive
def test_a_preempted_and_requeued_job_is_followed_to_its_end(
    daemon: Daemon, tmp_path: Path
) -> None:
    # PreemptMode=REQUEUE (dev cluster): a high-QOS job takes the node; Slurm records the run's
    # job PREEMPTED and queues the same job id again. The run must follow it, not end there.
    spec = write_spec(
        tmp_path,
        "preempted",
        "echo start; sleep 15; echo done",
        resources={"qos": "low", "cpus_per_task": 16},
    )
    run = daemon.submit(spec)
    job = daemon.wait_state(run, {"RUNNING"})["slurm_job_id"]
    slurm(
        "sbatch",
        "--parsable",
        "-A",
        "lab",
        "--qos=high",
        "-c",
        "16",
        "-J",
        "preemptor",
        "-o",
        "/dev/null",
        "--wrap",
        "sleep 3",
    )
    deadline = time.monotonic() + 90
    while not any("requeued" in e["reason"] for e in daemon.json("history", str(run))):
        assert time.monotonic() < deadline, daemon.json("history", str(run))
        assert daemon.show(run)["state"] not in {"PREEMPTED", "COMPLETED", "FAILED"}
        time.sleep(1)
    # A requeued job becomes eligible only after about 121 s (docs/notes-slurm.md); lift that.
    slurm("scontrol", "update", f"jobid={job}", "starttime=now")
    data = daemon.wait_ended(run, timeout=180)
    assert data["state"] == "COMPLETED", data
    assert data["slurm_job_id"] == job
    assert daemon.cli("logs", str(run), check=True).stdout.split() == ["start", "done"]
