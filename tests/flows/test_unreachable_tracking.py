"""An unreachable MLflow server ends the real command in bounded time with one clear line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from tests.helpers.templates import seed_prefect_home

pytestmark = pytest.mark.slow

# Documented bounds (docs/reliability.md): from the flow run's start, a refused connection fails in
# about 3 s (3 attempts, 0 + 2 s backoff + jitter) and a black-holed host in at most ~33 s,
# because start-tracking is not retried by Prefect when the server is unreachable. The whole
# command adds Prefect's ephemeral API start-up (6–25 s on a busy two-core machine).
FLOW_BOUND_SECONDS = 15
COMMAND_BOUND_SECONDS = 90


def closed_port() -> int:
    """A port nobody listens on: bound once to pick it, then released."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_cli(folder: Path, uri: str, *argv: str) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {
        **os.environ,
        "PREFECT_HOME": str(seed_prefect_home(folder / "prefect")),
        "MLFLOW_TRACKING_URI": uri,
        "WD_PIPELINE_WORK_DIR": str(folder / "work"),
    }
    for name in ("PREFECT_API_URL", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        env.pop(name, None)
    start = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "wd_pipeline.cli", "run", "--grid", "0", "--epochs", "1", "--folds", "1", *argv],
        capture_output=True,
        text=True,
        env=env,
        cwd=folder,
        timeout=300,
    )
    return done, time.monotonic() - start


def stamp(log: str, marker: str) -> datetime:
    """Time of the first line of the run's log file holding ``marker`` (``YYYY-MM-DD HH:MM:SS,mmm …``)."""
    line = next(line for line in log.splitlines() if marker in line)
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")


def test_closed_port_fails_fast_with_one_line(tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{closed_port()}"
    done, elapsed = run_cli(tmp_path, uri)
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: cannot reach the MLflow tracking server at {uri}: connection refused (3 attempts). "
        "Check MLFLOW_TRACKING_URI and that the server is running"
    ]
    assert "Traceback" not in done.stderr
    assert elapsed < COMMAND_BOUND_SECONDS, f"took {elapsed:.1f} s"
    log = (tmp_path / "work" / "wd-pipeline.log").read_text()  # Prefect's lines go there, not to the terminal
    began = stamp(log, "Beginning flow run")
    failed = stamp(log, "Finished in state Failed")
    assert (failed - began).total_seconds() < FLOW_BOUND_SECONDS
    # start-tracking ran once (no Prefect retry), and urllib3's per-retry warnings stay in the log
    assert "Retry 1/" not in done.stderr and "urllib3" not in done.stderr
    # nothing was trained or registered anywhere: no local store, no splits
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlartifacts").exists()
    assert not (tmp_path / "work" / "splits").exists() and not (tmp_path / "work" / "units").exists()
