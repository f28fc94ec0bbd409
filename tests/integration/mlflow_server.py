"""A real `mlflow server` on 127.0.0.1 for the tests and benchmarks: its own sqlite store and
artifact directory, a pid file, stopped by that pid (never by name).

One worker and no job execution: ready in about 10-15 s and about 480 MB (docs/notes-stack.md),
where the defaults take about 3 GB.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

MLFLOW = Path(sys.executable).parent / "mlflow"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class MlflowServer:
    state_dir: Path
    port: int

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "server.pid"

    @property
    def access_log(self) -> Path:
        return self.state_dir / "server.log"

    def start(self, timeout_s: float = 90.0) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            # The server's own client calls must not wait on retries either.
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        }
        with self.access_log.open("ab") as log:
            proc = subprocess.Popen(
                [
                    str(MLFLOW),
                    "server",
                    "--backend-store-uri",
                    f"sqlite:///{self.state_dir / 'mlflow.db'}",
                    "--artifacts-destination",
                    str(self.state_dir / "artifacts"),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--workers",
                    "1",
                ],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        self.pid_file.write_text(f"{proc.pid}\n")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                tail = self.access_log.read_text()[-3000:]
                raise RuntimeError(f"mlflow server exited {proc.returncode}:\n{tail}")
            if self.healthy():
                return
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"mlflow server not ready after {timeout_s} s")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as reply:  # noqa: S310
                return bool(reply.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        """SIGTERM its process group by the recorded pid (uvicorn's worker goes with it)."""
        try:
            pid = int(self.pid_file.read_text())
        except (FileNotFoundError, ValueError):
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            if not Path(f"/proc/{pid}").exists() or _is_zombie(pid):
                break
            time.sleep(0.1)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        self.pid_file.unlink(missing_ok=True)
        # The port must be free again before a restart on it.
        deadline = time.monotonic() + 10
        while self.healthy() and time.monotonic() < deadline:
            time.sleep(0.1)

    def requests(self) -> list[str]:
        """Request lines uvicorn logged (`"POST /api/2.0/mlflow/runs/create HTTP/1.1" 200`)."""
        if not self.access_log.exists():
            return []
        return [
            line.split('"')[1]
            for line in self.access_log.read_text(errors="replace").splitlines()
            if 'HTTP/1.1"' in line and "/health" not in line
        ]


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except (FileNotFoundError, IndexError):
        return True
