"""Fixtures for tests that share one MLflow store per module (creating a SQLite store costs seconds)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def module_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Like ``workspace``, but kept for a whole module: tests keep apart by model and experiment names."""
    folder = tmp_path_factory.mktemp("store")
    patch = pytest.MonkeyPatch()
    patch.chdir(folder)
    patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
    patch.setenv("WD_PIPELINE_WORK_DIR", str(folder / "work"))
    yield folder
    patch.undo()
