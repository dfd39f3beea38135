"""Shared fixtures: an isolated working folder and MLflow store per test, one Prefect API per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.helpers.stores import isolated_store

# The S3 store's fixtures (s3_server, s3_env, s3_work_dir), for any test that asks for them.
pytest_plugins = ["tests.helpers.s3"]

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BUNDLED = PROJECT_ROOT / "data" / "breast_cancer.csv"


@pytest.fixture(scope="session", autouse=True)
def allow_pytest_data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests write their data files under pytest's temporary folders: allow those as data roots.

    Only the session's own base folder is added, so the confinement tests still see every
    other path refused; subprocesses (the real CLI, stack workers) inherit the variable.
    """
    patch = pytest.MonkeyPatch()
    basetemp = str(tmp_path_factory.getbasetemp())
    existing = os.environ.get("WD_PIPELINE_DATA_ROOTS")
    patch.setenv("WD_PIPELINE_DATA_ROOTS", os.pathsep.join(filter(None, [existing, basetemp])))
    yield
    patch.undo()


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[Path]:
    """A fresh working directory holding its own MLflow SQLite store and work folder."""
    with isolated_store(tmp_path) as folder:
        yield folder


@pytest.fixture(scope="module")
def module_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Like ``workspace``, but kept for a whole module (creating a SQLite store costs seconds):
    tests keep apart by model and experiment names."""
    with isolated_store(tmp_path_factory.mktemp("store")) as folder:
        yield folder


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """A temporary Prefect API with its own database, shared by the flow tests."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def bundled() -> pd.DataFrame:
    return pd.read_csv(BUNDLED)


@pytest.fixture
def tiny_frame() -> pd.DataFrame:
    """60 rows, 3 numeric features, a 0/1 label that depends on them: fast to train."""

    rng = np.random.default_rng(0)
    features = rng.normal(size=(60, 3))
    label = (features @ np.array([1.5, -1.0, 0.5]) + rng.normal(scale=0.3, size=60) > 0).astype(int)
    return pd.DataFrame(features, columns=["a", "b", "c"]).assign(y=label)
