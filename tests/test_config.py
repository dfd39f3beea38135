"""The typed configuration: defaults, constraints and the messages a user reads."""

from __future__ import annotations

import inspect

import pytest

from wd_pipeline.config import DEFAULT_GRID, PipelineConfig, format_lambda, load_config_file, make_config, parse_grid
from wd_pipeline.errors import ConfigError


def test_default_grid_spans_zero_and_five_decades() -> None:
    grid = make_config().grid
    assert grid[0] == 0.0
    positive = [lam for lam in grid if lam > 0]
    assert min(positive) == pytest.approx(1e-5) and max(positive) == pytest.approx(1.0)
    assert len(positive) >= 7


def test_grid_is_sorted_and_deduplicated() -> None:
    assert make_config(grid=[1e-2, 0, 1e-2, 1e-4]).grid == [0, 1e-4, 1e-2]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"grid": []}, "grid: List should have at least 1 item"),
        ({"grid": [-0.1]}, "grid.0: Input should be greater than or equal to 0"),
        ({"grid": [float("nan")]}, "grid.0: Input should be a finite number"),
        ({"epochs": 0}, "epochs: Input should be greater than or equal to 1"),
        ({"batch_size": 0}, "batch_size: Input should be greater than or equal to 1"),
        ({"learning_rate": 0}, "learning_rate: Input should be greater than 0"),
        ({"selection_metric": "val_loss"}, "selection_metric: Input should be 'log_loss', 'roc_auc'"),
        ({"val_fraction": 0.45, "test_fraction": 0.45}, "val_fraction + test_fraction must stay below 0.8"),
        ({"colour": "blue"}, "colour: Extra inputs are not permitted"),
        ({"modes": ["l1"]}, "modes.0: Input should be 'l2' or 'decoupled'"),
        ({"modes": []}, "modes: List should have at least 1 item"),
        ({"folds": 0}, "folds: Input should be greater than or equal to 1"),
        ({"rule": "median"}, "rule: Input should be 'one-se' or 'best'"),
        ({"dask_workers": -1}, "dask_workers: Input should be greater than or equal to 0"),
        ({"dask_address": "tcp://a host:8786"}, "dask_address: String should match pattern"),
        ({"dask_address": "tcp://10.0.0.5:8786", "dask_workers": 2}, "dask_address and dask_workers are both set"),
    ],
)
def test_bad_settings_name_the_field(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match="invalid settings") as caught:
        make_config(**settings)
    assert message in str(caught.value)


def test_parse_grid_reads_comma_separated_numbers() -> None:
    assert parse_grid("0, 1e-4,1e-2") == [0.0, 1e-4, 1e-2]


@pytest.mark.parametrize("text", ["", " , "])
def test_parse_grid_refuses_empty(text: str) -> None:
    with pytest.raises(ConfigError, match="--grid is empty"):
        parse_grid(text)


def test_parse_grid_refuses_words() -> None:
    with pytest.raises(ConfigError, match="--grid must hold numbers"):
        parse_grid("0,small")


def test_params_are_flat_strings() -> None:
    params = make_config(grid=[0, 1e-3]).params()
    assert params["grid"] == "0,0.001"
    assert params["hidden_units"] == "10,10"
    assert all(isinstance(value, str) for value in params.values())


def test_format_lambda_is_readable() -> None:
    assert [format_lambda(x) for x in (0, 1e-3, 3e-4, 1.0)] == ["0", "1e-03", "3.0e-04", "1e+00"]


def test_config_file_toml_and_yaml(tmp_path) -> None:
    toml = tmp_path / "run.toml"
    toml.write_text("[pipeline]\ngrid = [0, 0.01]\nepochs = 3\n")
    yaml = tmp_path / "run.yaml"
    yaml.write_text("grid: [0, 0.01]\nepochs: 3\n")
    assert load_config_file(toml) == load_config_file(yaml) == {"grid": [0, 0.01], "epochs": 3}


def test_config_file_missing(tmp_path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config_file(tmp_path / "nope.toml")


def test_flow_parameters_mirror_the_config() -> None:
    """The Prefect form and the CLI describe the same run: same names, same defaults."""
    from flows.pipeline import weight_decay_pipeline

    signature = inspect.signature(weight_decay_pipeline.fn)
    assert list(signature.parameters) == list(PipelineConfig.model_fields)
    defaults = make_config()
    for name, parameter in signature.parameters.items():
        if name != "work_dir":
            assert parameter.default == getattr(defaults, name), name
    assert signature.parameters["grid"].default == list(DEFAULT_GRID)
