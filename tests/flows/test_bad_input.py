"""Bad input through Prefect and the CLI: FAILED with one clear message, nothing registered."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from flows.pipeline import weight_decay_pipeline
from tests.helpers.templates import seed_prefect_home

pytestmark = pytest.mark.slow

MODEL = "wd-bad-input"


def write(folder: Path, frame: pd.DataFrame) -> str:
    path = folder / "input.csv"
    frame.to_csv(path, index=False)
    return str(path)


def bundled_with(mutate) -> pd.DataFrame:
    frame = pd.read_csv(Path(__file__).resolve().parents[2] / "data" / "breast_cancer.csv")
    return mutate(frame)


DATA_CASES = {
    "missing file": (lambda folder: str(folder / "nowhere.csv"), "data file not found"),
    "empty file": (lambda folder: ((folder / "e.csv").write_bytes(b"") and "") or str(folder / "e.csv"), "is empty"),
    "not a table": (
        lambda folder: ((folder / "x.parquet").write_bytes(b"PAR1garbage") and "") or str(folder / "x.parquet"),
        "not a valid Parquet file",
    ),
    "missing label": (
        lambda folder: write(folder, bundled_with(lambda f: f.drop(columns="diagnosis"))),
        "label column 'diagnosis' not found",
    ),
    "non-binary label": (
        lambda folder: write(folder, bundled_with(lambda f: f.assign(diagnosis=np.arange(len(f)) % 3 * 1.0))),
        "must be binary",
    ),
    "empty feature": (
        lambda folder: write(folder, bundled_with(lambda f: f.assign(mean_radius=np.nan))),
        "column 'mean_radius' is empty (every value missing)",
    ),
    "inf feature": (
        lambda folder: write(folder, bundled_with(lambda f: f.assign(mean_area=np.inf))),
        "features hold infinite values (column: count) {'mean_area': 569}",
    ),
    "identifier feature": (
        lambda folder: write(folder, bundled_with(lambda f: f.assign(mean_texture=[f"id{i}" for i in range(len(f))]))),
        "column 'mean_texture' looks like an identifier",
    ),
    "single class": (
        lambda folder: write(folder, bundled_with(lambda f: f.assign(diagnosis="malignant"))),
        "has a single class",
    ),
}


@pytest.fixture
def isolated(workspace: Path, prefect_api) -> Path:
    return workspace


def assert_nothing_registered() -> None:
    client = MlflowClient()
    assert client.search_model_versions(f"name = '{MODEL}'") == []


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_bad_data_fails_the_flow_run(case: str, isolated: Path) -> None:
    make_source, message = DATA_CASES[case]
    # A copy of the bundled data is another table: its positive class is named, as a user of a copy would.
    state = weight_decay_pipeline(
        data=make_source(isolated),
        positive_class="malignant",
        grid=[0.0],
        epochs=1,
        model_name=MODEL,
        return_state=True,
    )
    assert state.is_failed()
    assert message in state.message or message in str(state.result(raise_on_failure=False))
    assert_nothing_registered()
    runs = MlflowClient().search_runs([e.experiment_id for e in MlflowClient().search_experiments()], run_view_type=3)
    assert runs and all(run.info.status == "FAILED" for run in runs)  # the parent run is closed, not left RUNNING


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"grid": []}, "grid"),
        ({"grid": [-1e-3]}, "greater than or equal to 0"),
        ({"epochs": 0}, "greater than or equal to 1"),
        ({"batch_size": 0}, "greater than or equal to 1"),
    ],
)
def test_bad_parameters_fail_before_anything_runs(params: dict, message: str, isolated: Path) -> None:
    state = weight_decay_pipeline(model_name=MODEL, **params, return_state=True)
    assert state.is_failed()
    assert message in str(state.result(raise_on_failure=False))
    assert_nothing_registered()


def test_cli_prints_one_line_and_exits_1(isolated: Path) -> None:
    """The real command: the message and no traceback wall, before anything (Prefect, the log) starts."""
    env = {**os.environ, "PREFECT_HOME": str(seed_prefect_home(isolated / "prefect"))}
    env.pop("PREFECT_API_URL", None)
    done = subprocess.run(
        [sys.executable, "-m", "wd_pipeline.cli", "run", "--data", "nowhere.csv", "--grid", "0", "--model-name", MODEL],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 1
    assert "error: data file not found:" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (isolated / "work" / "wd-pipeline.log").exists()  # refused by the check before the run
    assert_nothing_registered()
