"""A grid point is (mode, value): λ for weight decay, the rate for dropout; value 0 is one model in every mode."""

from __future__ import annotations

import pytest

from wd_pipeline.config import PipelineConfig
from wd_pipeline.ml import modes
from wd_pipeline.ml.training import unit_key
from wd_pipeline.tracking.runs import point_run_name


def test_each_mode_trains_its_own_grid() -> None:
    config = PipelineConfig(grid=[0.0, 1e-3], dropout_grid=[0.5, 0.0, 0.2], modes=["l2", "dropout"])
    assert modes.grid_of(config, "l2") == modes.grid_of(config, "decoupled") == [0.0, 1e-3]
    assert modes.grid_of(config, "dropout") == [0.0, 0.2, 0.5]
    assert (modes.grid_flag("dropout"), modes.grid_flag("l2")) == ("--dropout-grid", "--grid")


@pytest.mark.parametrize(
    ("mode", "value", "name"),
    [("dropout", 0.2, "dropout p=0.2"), ("dropout", 0.0, "dropout p=0"), ("l2", 1e-3, "l2 λ=1e-03")],
)
def test_run_names_read_the_value_of_the_mode(mode: str, value: float, name: str) -> None:
    assert point_run_name(mode, value) == name


def test_a_dropout_point_has_no_weight_decay_and_a_weight_decay_point_no_dropout() -> None:
    assert (modes.weight_decay("dropout", 0.3), modes.dropout_rate("dropout", 0.3)) == (0.0, 0.3)
    assert (modes.weight_decay("decoupled", 0.3), modes.dropout_rate("decoupled", 0.3)) == (0.3, 0.0)
    assert (modes.value_name("dropout"), modes.value_name("l2")) == ("rate", "lambda")


def test_rate_zero_is_the_lambda_zero_unit_and_other_values_are_not(tmp_path) -> None:
    config = PipelineConfig()
    key = lambda mode, value: unit_key(tmp_path / "splits-abc", config, mode, value, 0, 10)  # noqa: E731
    assert key("dropout", 0.0) == key("l2", 0.0) == key("decoupled", 0.0)
    assert len({key("dropout", 0.1), key("l2", 0.1), key("decoupled", 0.1)}) == 3
    balanced = PipelineConfig(class_weight="balanced")
    assert unit_key(tmp_path / "splits-abc", balanced, "dropout", 0.1, 0, 10) != key("dropout", 0.1)
