"""Two real pipeline runs at once against one MLflow tracking server and one model name (issue #6).

Each run is the real CLI with its own temporary Prefect API and work folder, as two users or
jobs would be; only the tracking server and the registry are shared. The runs differ in λ
only (0 vs. a decay strong enough to underfit), so they reach registration at about the same
time and one is clearly better on the gate metric.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.helpers.local_stack import LocalStack
from tests.helpers.lock_contender import race
from tests.helpers.templates import seed_prefect_home
from wd_pipeline.ops import stack
from wd_pipeline.tracking.promotion_lock import lock_name

pytestmark = [pytest.mark.slow, pytest.mark.stack]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MODEL = "wd-race"
LAMBDAS = {"fit": "0", "underfit": "3"}


@pytest.fixture(scope="module")
def mlflow_url(local_stack: LocalStack) -> str:
    """The shared stack's tracking server (SQLite behind it); the lock's name is this module's own."""
    return local_stack.mlflow_url


def test_creating_the_lock_is_atomic_through_the_tracking_server(mlflow_url: str, tmp_path: Path) -> None:
    outcomes = race(mlflow_url, "atomic.promotion-lock", tmp_path / "race")
    assert outcomes == ["RESOURCE_ALREADY_EXISTS", "RESOURCE_ALREADY_EXISTS", "created"]


def start_run(kind: str, mlflow_url: str, folder: Path) -> subprocess.Popen:
    env = stack.base_env(
        MLFLOW_TRACKING_URI=mlflow_url,
        PREFECT_HOME=str(seed_prefect_home(folder / f"prefect-{kind}")),
        WD_PIPELINE_WORK_DIR=str(folder / f"work-{kind}"),
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    env.pop("PREFECT_API_URL", None)
    command = [
        sys.executable,
        "-m",
        "wd_pipeline.cli",
        "run",
        "--grid",
        LAMBDAS[kind],
        "--folds",
        "1",
        "--epochs",
        "20",
        "--patience",
        "0",
        "--bootstrap-samples",
        "200",
        "--model-name",
        MODEL,
        "--experiment",
        "race",
    ]
    return subprocess.Popen(command, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def two_runs_at_once_keep_both_versions_and_the_better_one_is_champion(mlflow_url: str, tmp_path: Path) -> None:
    """Run by ``test_postgres.py`` against the PostgreSQL-backed stack, the production store (one run of it fits the suite's budget)."""
    runs = {kind: start_run(kind, mlflow_url, tmp_path) for kind in LAMBDAS}
    outputs = {kind: process.communicate(timeout=900) for kind, process in runs.items()}
    for kind, process in runs.items():
        assert process.returncode == 0, f"{kind}: {outputs[kind][1][-3000:]}"
        assert f"registry      {MODEL} v" in outputs[kind][0]

    client = MlflowClient(tracking_uri=mlflow_url, registry_uri=mlflow_url)
    versions = {
        str(v.version): client.get_model_version(MODEL, v.version)
        for v in client.search_model_versions(f"name = '{MODEL}'")
    }
    assert sorted(versions) == ["1", "2"]
    by_lambda = {float(client.get_run(v.run_id).data.params["grid"]): v for v in versions.values()}
    assert all(client.get_run(v.run_id).info.status == "FINISHED" for v in versions.values())
    fit, underfit = (by_lambda[float(LAMBDAS[kind])] for kind in ("fit", "underfit"))
    assert float(fit.tags["gate.test_log_loss"]) < float(underfit.tags["gate.test_log_loss"])
    assert client.get_registered_model(MODEL).aliases["champion"] == fit.version

    # Serialised: whichever decided second compared against the first, which had found no champion.
    first, second = sorted(versions.values(), key=lambda v: v.tags["gate.champion_version"] != "")
    assert (first.tags["gate.champion_version"], second.tags["gate.champion_version"]) == ("", first.version)
    waits = {v.version: float(v.tags["gate.lock_wait"]) for v in versions.values()}
    print(f"lock waits by version: {waits}")
    assert [m.name for m in client.search_registered_models(f"name LIKE '{lock_name(MODEL)}%'")] == []
