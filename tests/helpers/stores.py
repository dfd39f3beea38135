"""A test's own MLflow store and work folder, entered as a context so module fixtures can share one."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def isolated_store(folder: Path) -> Iterator[Path]:
    """Run inside ``folder`` with its own MLflow SQLite store and work folder, restored on exit."""
    patch = pytest.MonkeyPatch()
    patch.chdir(folder)
    patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{folder / 'mlflow.db'}")
    patch.setenv("WD_PIPELINE_WORK_DIR", str(folder / "work"))
    try:
        yield folder
    finally:
        patch.undo()
