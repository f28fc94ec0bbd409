"""New SSH connections per hour opened by the SSH backend with 200 active jobs. Target: <= 60.

The daemon reaches Slurm over SSH (slurm.transport: ssh) and follows 200 jobs that Slurm keeps
pending. Two windows, each counted by the daemon (`daemon status`) and by sshd's own log:
  steady   nothing disturbs the connection: it should stay the one opened at start;
  drops    the connection is killed from the server's side every DROP_EVERY_S seconds: the
           reconnect rate limit (min_reconnect_interval_s, default 60 s) must hold.
Also counted: commands (exec channels) per minute, so "one connection" is not bought with a
flood of commands.
"""

from __future__ import annotations

import time

from tests.benchmarks.common import UserDaemon, write_result, write_specs
from tests.benchmarks.ssh_setup import (
    SSH_BENCH_USER,
    commands_since,
    daemon_ports,
    jobs_held_pending,
    kill_server_side,
    logins_since,
    ssh_daemon,
    sshd_log_offset,
)

JOBS = 200
STEADY_WINDOW_S = 300.0
DROPS_WINDOW_S = 360.0
DROP_EVERY_S = 15.0
MIN_RECONNECT_INTERVAL_S = 60.0


def _opened(daemon: UserDaemon) -> int:
    return int(daemon.json("daemon", "status")["slurm"]["ssh_connections_opened"])


def main() -> None:
    daemon = ssh_daemon(
        {"min_reconnect_interval_s": MIN_RECONNECT_INTERVAL_S},
        max_active=JOBS,
        pending_window=JOBS,
        slurm={"squeue_interval_s": 30},
    )
    with jobs_held_pending(SSH_BENCH_USER):
        daemon.start()
        try:
            specs = write_specs(
                daemon.home / "specs",
                JOBS,
                "sleep 600",
                SSH_BENCH_USER,
                resources={"time": "00:20:00"},
            )
            for i in range(0, JOBS, 100):
                daemon.cli("submit", *map(str, specs[i : i + 100]))
            daemon.wait(
                lambda: all(r["slurm_job_id"] for r in daemon.json("ls", "--all")),
                600,
                "all runs in Slurm",
            )
            states = {r["state"] for r in daemon.json("ls", "--all")}
            assert states == {"PENDING"}, states
            time.sleep(5)

            # Steady: nothing disturbs the connection.
            before, offset = _opened(daemon), sshd_log_offset()
            started = time.monotonic()
            time.sleep(STEADY_WINDOW_S)
            steady_s = time.monotonic() - started
            steady_opened = _opened(daemon) - before
            steady_logins = logins_since(offset, SSH_BENCH_USER)
            steady_commands = commands_since(offset, SSH_BENCH_USER)

            # Drops: kill the connection from the server's side every DROP_EVERY_S.
            before, offset = _opened(daemon), sshd_log_offset()
            started = time.monotonic()
            kills = 0
            while time.monotonic() - started < DROPS_WINDOW_S:
                for port in daemon_ports(daemon.pid()):
                    kills += 1 if kill_server_side(port) else 0
                time.sleep(DROP_EVERY_S)
            drops_s = time.monotonic() - started
            drops_opened = _opened(daemon) - before
            drops_logins = logins_since(offset, SSH_BENCH_USER)
            # The daemon still follows all 200 runs and failed none.
            time.sleep(MIN_RECONNECT_INTERVAL_S + 5)
            final_states = {r["state"] for r in daemon.json("ls", "--all")}
            total_opened = _opened(daemon)
        finally:
            daemon.stop()
    per_hour = 3600.0
    write_result(
        "ssh_connections",
        {
            "active_jobs": JOBS,
            "min_reconnect_interval_s": MIN_RECONNECT_INTERVAL_S,
            "steady_window_s": round(steady_s),
            "steady_connections_opened": steady_opened,
            "steady_connections_per_hour": round(steady_opened / steady_s * per_hour, 1),
            "steady_sshd_logins": steady_logins,
            "steady_commands_per_min": round(steady_commands / steady_s * 60, 1),
            "drops_window_s": round(drops_s),
            "drops_every_s": DROP_EVERY_S,
            "drops_connections_killed": kills,
            "drops_connections_opened": drops_opened,
            "drops_connections_per_hour": round(drops_opened / drops_s * per_hour, 1),
            "drops_sshd_logins": drops_logins,
            "connections_opened_whole_run": total_opened,
            "run_states_after": sorted(final_states),
            "baseline": "one connection per poll or per job would be 3600/tick_interval_s = "
            "3600 per hour or more",
            "target": "<= 60 new connections per hour",
        },
    )


if __name__ == "__main__":
    main()
