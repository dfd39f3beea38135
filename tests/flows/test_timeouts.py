"""Every flow and training task has a timeout, so that no run holds its deployment's slot for ever."""

from __future__ import annotations

import json
from pathlib import Path

from flows import timeouts
from flows.pipeline import weight_decay_pipeline
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
