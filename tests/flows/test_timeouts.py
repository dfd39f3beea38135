"""Every flow and training task has a timeout, so that no run holds its deployment's slot for ever."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from prefect.task_engine import TaskRunTimeoutError

from flows import timeouts
from flows.pipeline import weight_decay_pipeline
from flows.retry import retry_if_transient, retry_unless_unreachable
from flows.score import score
from wd_pipeline.config import make_config


def test_the_flows_stop_at_their_ceilings_within_a_day() -> None:
    assert weight_decay_pipeline.timeout_seconds == timeouts.PIPELINE_CEILING_SECONDS < 24 * 3600
    assert score.timeout_seconds == timeouts.SCORE_CEILING_SECONDS <= timeouts.PIPELINE_CEILING_SECONDS


def test_a_training_bound_grows_with_epochs_rows_and_values() -> None:
    config = make_config(epochs=100)
    base = timeouts.training_seconds(config, rows=1000, values=1)
    assert base > timeouts.TRAINING_FLOOR_SECONDS
    assert timeouts.training_seconds(make_config(epochs=200), rows=1000, values=1) > base
    assert timeouts.training_seconds(config, rows=2000, values=1) > base
    assert timeouts.training_seconds(config, rows=1000, values=4) > base
    assert timeouts.training_seconds(config, rows=1000, values=1, epochs=50) < base  # a refit's own epochs


def test_the_rows_bound_is_the_whole_table(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps({"rows": 569, "splits": {"train": {"rows": 341}}}))
    assert timeouts.table_rows(str(tmp_path)) == 569


class FailedWith:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def result(self) -> None:
        raise self.exc


@pytest.mark.parametrize("retry", [retry_if_transient, retry_unless_unreachable])
def test_a_task_out_of_time_is_not_retried_though_a_slow_server_is(retry) -> None:
    assert retry(None, None, FailedWith(TaskRunTimeoutError("Scope timed out after 2 second(s)."))) is False
    assert retry(None, None, FailedWith(TimeoutError("read timed out"))) is True


@pytest.mark.slow
def test_a_hung_training_task_fails_the_run_at_its_bound(prefect_api, workspace: Path, monkeypatch) -> None:
    """A training call that never returns: its task times out once (no retries) and the run fails."""

    hung: list[float] = []

    def hang(*args, **kwargs):
        hung.append(time.monotonic())
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # short sleeps: the timeout's exception lands between them
            time.sleep(0.1)
        raise AssertionError("the hung training task was never stopped")

    monkeypatch.setattr("wd_pipeline.ml.training.train_units", hang)
    monkeypatch.setattr("flows.train_grid.training_seconds", lambda *args, **kwargs: 3.0)
    started = time.monotonic()
    state = weight_decay_pipeline(grid=[0.0], epochs=1, folds=1, model_name="wd-hung", return_state=True)
    assert state.is_failed()
    assert len(hung) == 1, "a task out of time was retried"
    assert time.monotonic() - started < 60
