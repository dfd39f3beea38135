"""A test's own MLflow store and work folder, entered as a context so module fixtures can share one."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers.templates import seed_mlflow_store


@contextmanager
def isolated_store(folder: Path) -> Iterator[Path]:
    """Run inside ``folder`` with its own MLflow SQLite store and work folder, restored on exit."""
    patch = pytest.MonkeyPatch()
    forget_process_uris()  # before the variables: it unsets MLFLOW_TRACKING_URI
    patch.chdir(folder)
    patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{seed_mlflow_store(folder / 'mlflow.db')}")
    patch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    patch.setenv("WD_PIPELINE_WORK_DIR", str(folder / "work"))
    try:
        yield folder
    finally:
        forget_process_uris()
        patch.undo()


def forget_process_uris() -> None:
    """Drop the store MLflow keeps process-wide (``runs.get_client`` sets it, and it wins over the variables).

    Without this, a client made with no URI in one test reaches the store of whichever test
    of the same process last called ``get_client``; ``mlflow.set_registry_uri`` also writes
    ``MLFLOW_REGISTRY_URI``, which the patch above removes for the test.
    """
    import mlflow

    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
