"""The same small run twice in one folder, the second with ``--reuse never`` (else it would return the
first's result): it reuses the background API, trains nothing and records what the first recorded."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.helpers.templates import seed_mlflow_store, seed_prefect_home
from wd_pipeline.ops import local_api

pytestmark = pytest.mark.slow

COMMAND = [
    sys.executable,
    *("-m", "wd_pipeline.cli", "run", "--folds", "1", "--epochs", "3", "--grid", "0,1e-2"),
    *("--bootstrap-samples", "100", "--importance-repeats", "1"),
]
UI_LINE = re.compile(r"^Prefect UI    (http://127\.0\.0\.1:\d+) ", re.M)


def recorded(client: MlflowClient, parent_id: str) -> dict[str, dict[str, float]]:
    """Every run beneath a parent (grid points, folds), by name, with its metrics except timings."""
    experiment = client.get_run(parent_id).info.experiment_id
    everything = client.search_runs([experiment])
    children: dict[str, list[str]] = {}
    for run in everything:
        children.setdefault(run.data.tags.get("mlflow.parentRunId", ""), []).append(run.info.run_id)
    by_id = {run.info.run_id: run for run in everything}
    found, todo = {}, list(children.get(parent_id, []))
    while todo:
        run = by_id[todo.pop()]
        found[run.info.run_name] = {k: v for k, v in run.data.metrics.items() if not k.startswith("time_")}
        todo += children.get(run.info.run_id, [])
    return found


def test_a_rerun_reuses_the_api_trains_nothing_and_records_the_same(tmp_path: Path) -> None:
    home = tmp_path / "prefect"
    env = {
        **os.environ,
        "PREFECT_HOME": str(seed_prefect_home(home)),
        "MLFLOW_TRACKING_URI": f"sqlite:///{seed_mlflow_store(tmp_path / 'mlflow.db')}",
        "WD_PIPELINE_WORK_DIR": str(tmp_path / "work"),
    }
    env.pop("PREFECT_API_URL", None)
    try:
        first = subprocess.run(COMMAND, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert first.returncode == 0, first.stderr[-3000:]
        api = local_api.read(home)
        assert api is not None and local_api.healthy(api)  # outlives the run that started it

        second = subprocess.run(
            [*COMMAND, "--reuse", "never"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
        )
        assert second.returncode == 0, second.stderr[-3000:]
        assert UI_LINE.findall(first.stdout) == UI_LINE.findall(second.stdout) == [api.ui_url]
        assert local_api.read(home) == api  # the same process served both runs

        assert "found trained" not in first.stderr
        assert len(re.findall(r"found trained", second.stderr)) == 2
        assert not re.search(r"λ=\S+ trained:", second.stderr)

        client = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
        parents = client.search_runs(
            [client.get_experiment_by_name("weight-decay-pipeline").experiment_id],
            filter_string="tags.mlflow.parentRunId IS NULL",
            order_by=["attributes.start_time ASC"],
        )
        assert len(parents) == 2
        assert parents[1].data.metrics["time_training_seconds"] == 0.0
        before, after = recorded(client, parents[0].info.run_id), recorded(client, parents[1].info.run_id)
        assert before and after == before
    finally:
        local_api.stop(home)
