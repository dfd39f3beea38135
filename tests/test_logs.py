"""Which log records reach the terminal of a run that is not --verbose, and TensorFlow's load-time output."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from wd_pipeline import logs
from wd_pipeline.config import PROJECT_ROOT

FLOW_FILE = str(PROJECT_ROOT / "flows" / "train_grid.py")
LIBRARY_FILE = str(PROJECT_ROOT / "wd_pipeline" / "ml" / "packed.py")
PREFECT_FILE = "/venv/lib/python3.11/site-packages/prefect/task_engine.py"


def record(name: str, level: int, pathname: str, *, exc: bool = False) -> logging.LogRecord:
    exc_info = (RuntimeError, RuntimeError("boom"), None) if exc else None
    return logging.LogRecord(name, level, pathname, 1, "message", None, exc_info)


@pytest.mark.parametrize(
    ("name", "level", "pathname", "shown"),
    [
        ("prefect.flow_runs", logging.INFO, FLOW_FILE, True),  # a step's line, logged by a flow
        ("prefect.task_runs", logging.INFO, PREFECT_FILE, False),  # "Finished in state Completed()"
        ("prefect.flow_runs", logging.ERROR, PREFECT_FILE, False),  # the failure: the command's error line says it
        ("prefect.task_runs", logging.WARNING, PREFECT_FILE, True),  # a retry
        ("wd_pipeline.ml.packed", logging.DEBUG, LIBRARY_FILE, False),
        ("wd_pipeline.data.validation", logging.WARNING, LIBRARY_FILE, True),
        ("prefect", logging.INFO, "/venv/prefect/server/api/server.py", False),  # "Starting temporary server"
        ("mlflow.store.db.utils", logging.INFO, "/venv/mlflow/store/db/utils.py", False),
        ("mlflow.models.model", logging.WARNING, "/venv/mlflow/models/model.py", False),
        ("distributed.worker", logging.WARNING, "/venv/distributed/worker.py", True),
    ],
)
def test_the_story_is_our_info_lines_and_every_warning(name: str, level: int, pathname: str, shown: bool) -> None:
    assert logs.is_story(record(name, level, pathname)) is shown


def test_tracebacks_stay_in_the_log_file() -> None:
    assert not logs.is_story(record("prefect.flow_runs", logging.INFO, FLOW_FILE, exc=True))


def test_tensorflow_loads_with_its_banners_in_the_log_file(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    code = (
        "import os, sys\n"
        "os.environ.pop('TF_CPP_MIN_LOG_LEVEL', None)\n"
        "from wd_pipeline import logs\n"
        "logs.import_tensorflow(sys.argv[1])\n"
        "print('after', file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(log)], capture_output=True, text=True, check=True, timeout=300
    )
    assert done.stderr == "after\n"
    assert "oneDNN custom operations" in log.read_text()  # what would have reached the terminal
