"""kill -9 in the middle of the grid, then the same command again (issue #6, "nothing lost").

The command runs in its own session so the kill takes the whole process group — the CLI
and the temporary Prefect API it started — as a crash of the machine would.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.helpers.templates import seed_mlflow_store, seed_prefect_home
from wd_pipeline.tracking import runs

pytestmark = pytest.mark.slow

MODEL = "wd-crash"
COMMAND = [
    sys.executable,
    "-m",
    "wd_pipeline.cli",
    "run",
    "--grid",
    "0,1e-3,1e-2",
    "--folds",
    "2",
    "--chunk-size",
    "1",
    "--epochs",
    "40",  # the kill follows the first result within 0.2 s, long before the last unit ends
    "--patience",
    "0",
    "--bootstrap-samples",
    "100",
    "--model-name",
    MODEL,
    "--experiment",
    "crash-resume",
]


def finished_units(work: Path) -> list[Path]:
    """Units whose result is in place (staging folders start with a dot and do not count)."""
    return [path for path in (work / "points").glob("*/result.json") if not path.parent.name.startswith(".")]


def assert_group_gone(pgid: int, timeout: float = 10.0) -> None:
    """Members of a killed group can linger a moment as zombies until init reaps them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    survivors = subprocess.run(
        ["ps", "-o", "pid,stat,cmd", "--no-headers", "-g", str(pgid)], capture_output=True, text=True
    )
    raise AssertionError(f"process group {pgid} still has members:\n{survivors.stdout}")


def test_kill_9_then_rerun_resumes_and_leaves_nothing_running(tmp_path: Path) -> None:
    work = tmp_path / "work"
    env = {
        **os.environ,
        "PREFECT_HOME": str(seed_prefect_home(tmp_path / "prefect")),
        "WD_PIPELINE_WORK_DIR": str(work),
        "MLFLOW_TRACKING_URI": f"sqlite:///{seed_mlflow_store(tmp_path / 'mlflow.db')}",
    }
    env.pop("PREFECT_API_URL", None)
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(
        COMMAND, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 400
        while not finished_units(work):
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no unit finished in time"
            time.sleep(0.2)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert first.returncode == -signal.SIGKILL
    assert_group_gone(first.pid)  # nothing of the first run survives (temporary Prefect API included)
    survivors = {path.parent.name: path.stat().st_mtime_ns for path in finished_units(work)}
    before = len(survivors)
    assert 1 <= before < 6, before  # killed mid-grid: 3 λ × 2 folds

    second = subprocess.run(COMMAND, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "registry      wd-crash v1" in second.stdout

    client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("crash-resume").experiment_id
    resumed = client.search_runs([experiment], filter_string="tags.resumed = 'true'")
    assert len(resumed) == before, (before, [r.info.run_name for r in resumed])
    assert {run.data.tags["unit_key"] for run in resumed} == set(survivors)
    # not retrained: the finished units' files were not written again
    assert {key: (work / "points" / key / "result.json").stat().st_mtime_ns for key in survivors} == survivors
    assert client.search_runs([experiment], filter_string="attributes.status = 'RUNNING'") == []
    killed = client.search_runs([experiment], filter_string="attributes.status = 'KILLED'")
    assert killed and all(runs.CLOSED_TAG in run.data.tags for run in killed)
    assert "left RUNNING by a pipeline process that no longer exists" in second.stdout + second.stderr
    print(f"units finished before the kill: {before}; resumed after: {len(resumed)}; runs closed KILLED: {len(killed)}")
