"""Speak once: a default run's terminal tells the story; everything else goes to the log file.

The real command runs as a subprocess with its output captured (not a terminal, as in CI or a
pipe), so the same run also shows that progress arrives as plain lines without control codes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.background_apis import stop_background_apis
from tests.helpers.templates import seed_mlflow_store, seed_prefect_home
from wd_pipeline.cli import LOG_FILE

pytestmark = pytest.mark.slow

# What the terminal once showed, with where it comes from.
BANNED = {
    "absl::InitializeLog": "absl's C++ banner",
    "oneDNN custom operations": "TensorFlow's C++ logging",
    "DEBUG": "a DEBUG record",
    "Finished in state": "Prefect's per-task state line",
    "Beginning flow run": "Prefect's per-flow state line",
    "Traceback": "a traceback",
}


@pytest.fixture(scope="module")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], str]:
    folder = tmp_path_factory.mktemp("terminal")
    env = {
        **os.environ,
        "PREFECT_HOME": str(seed_prefect_home(folder / "prefect")),
        "MLFLOW_TRACKING_URI": f"sqlite:///{seed_mlflow_store(folder / 'mlflow.db')}",
        "WD_PIPELINE_WORK_DIR": str(folder / "work"),
    }
    for name in ("PREFECT_API_URL", "TF_CPP_MIN_LOG_LEVEL"):  # as a new user's shell has them: unset
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, "-m", "wd_pipeline.cli", "run", "--grid", "0,1e-2", "--epochs", "3", "--folds", "2"],
        capture_output=True,
        text=True,
        env=env,
        cwd=folder,
        timeout=900,
    )
    stop_background_apis(folder)
    assert done.returncode == 0, done.stderr[-3000:]
    return done, (folder / "work" / LOG_FILE).read_text()


@pytest.mark.parametrize("text", list(BANNED))
def test_the_terminal_holds_none_of_it_and_the_log_file_all_of_it(
    text: str, default_run: tuple[subprocess.CompletedProcess[str], str]
) -> None:
    done, log = default_run
    assert text not in done.stdout + done.stderr, BANNED[text]
    if text != "Traceback":  # a good run has none to log
        assert text in log, BANNED[text]


def test_the_terminal_tells_each_step_each_unit_and_the_grid(
    default_run: tuple[subprocess.CompletedProcess[str], str],
) -> None:
    done, _ = default_run
    terminal = done.stdout + done.stderr
    assert "\x1b" not in terminal  # not a terminal: plain lines, no control codes
    units = re.findall(
        r"^\d\d:\d\d:\d\d  l2 λ=\S+ fold \d/2 trained: val log_loss [0-9.]+ · (\d)/4 units", done.stderr, re.M
    )
    assert units == ["1", "2", "3", "4"]  # one line per unit, counted as it is told
    for step in ("Data ", "Rule one-se on validation log_loss chose", "Test: accuracy", "→ @champion"):
        assert step in done.stderr, step
    assert re.search(r"^mode +λ +val log_loss", done.stdout, re.M)
    assert "chosen        l2" in done.stdout


def test_the_prefect_ui_gets_a_progress_artifact_that_ends_at_the_whole_grid(prefect_api, workspace: Path) -> None:
    from prefect.artifacts import Artifact

    from flows.pipeline import weight_decay_pipeline

    state = weight_decay_pipeline(grid=[0.0, 1e-2], epochs=2, folds=1, model_name="wd-progress", return_state=True)
    assert state.is_completed(), state
    artifact = Artifact.get("train-grid-progress")
    assert float(artifact.data) == 100.0
    assert artifact.description.startswith("Training: 2/2 units, 4/4 epochs, ")
