"""The typed configuration: defaults, constraints and the messages a user reads."""

from __future__ import annotations

from typing import Annotated

import pytest
import yaml

from wd_pipeline.config import (
    DEFAULT_DATA,
    PROJECT_ROOT,
    SETTING_CHANGES,
    Changes,
    PipelineConfig,
    ScoreSettings,
    changes_of,
    format_lambda,
    load_config_file,
    make_config,
    make_settings,
    parse_grid,
)
from wd_pipeline.data.splits import split_key
from wd_pipeline.errors import ConfigError
from wd_pipeline.ml.training import unit_key


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
        ({"modes": ["l1"]}, "modes.0: Input should be 'l2', 'decoupled' or 'dropout'"),
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


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"positive_class": ""},
        {"data": str(PROJECT_ROOT / DEFAULT_DATA)},
        {"data": DEFAULT_DATA, "label": "diagnosis"},
    ],
)
def test_the_bundled_data_counts_malignant_as_positive(settings: dict) -> None:
    assert make_config(**settings).positive_class == "malignant"


@pytest.mark.parametrize(
    "settings",
    [{"data": "other.csv"}, {"data": "other.csv", "label": "y"}, {"label": "radius_mean"}, {"data": "s3://b/x.csv"}],
)
def test_another_table_or_label_has_no_positive_class_unless_given(settings: dict, tmp_path) -> None:
    assert make_config(**settings).positive_class is None
    assert make_config(**settings, positive_class="yes").positive_class == "yes"
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(settings))
    assert make_config(**load_config_file(path)).positive_class is None


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


def test_every_setting_says_what_it_changes() -> None:
    assert set(SETTING_CHANGES) == set(PipelineConfig.model_fields)
    splits = {name for name, changes in SETTING_CHANGES.items() if Changes.SPLITS in changes}
    training = {name for name, changes in SETTING_CHANGES.items() if Changes.TRAINING in changes}
    assert splits == {
        "label",
        "positive_class",
        "features",
        "categorical",
        "exclude",
        "slice_by",
        "group_column",
        "na_values",
        "max_categories",
        "val_fraction",
        "test_fraction",
        "seed",
    }
    assert training == {
        "epochs",
        "batch_size",
        "learning_rate",
        "hidden_units",
        "one_hot_max",
        "class_weight",
        "seed",
        "folds",
        "patience",
    }


def test_only_where_and_how_the_work_runs_stays_out_of_the_result_key() -> None:
    execution = {name for name, changes in SETTING_CHANGES.items() if changes is Changes.EXECUTION}
    assert execution == {"data", "max_parallel", "chunk_size", "dask_address", "dask_workers", "reuse", "work_dir"}
    assert set(make_config().result_key()) == set(PipelineConfig.model_fields) - execution


def test_execution_with_another_mark_is_refused() -> None:
    class Both(PipelineConfig):
        where: Annotated[str, Changes.EXECUTION | Changes.TRAINING] = "here"

    with pytest.raises(TypeError, match=r"Both\.where must declare once"):
        changes_of(Both)


def test_a_setting_nobody_classified_is_refused() -> None:
    class WithNewSetting(PipelineConfig):
        dropout: float = 0.0

    with pytest.raises(TypeError, match=r"WithNewSetting\.dropout must declare once what it changes"):
        changes_of(WithNewSetting)


def test_a_setting_classified_twice_is_refused() -> None:
    class Twice(PipelineConfig):
        dropout: Annotated[float, Changes.TRAINING, Changes.NOTHING] = 0.0

    with pytest.raises(TypeError, match=r"Twice\.dropout"):
        changes_of(Twice)


# Keys of work already on disk: a rerun with the same settings must find it again. The unit keys changed once,
# when the preprocessing moved into the network (one_hot_max joined the training settings): units trained
# before have no preprocessing file beside their model and cannot be reused.
CUSTOM = {
    "label": "y",
    "positive_class": None,
    "features": ["a", "b"],
    "val_fraction": 0.1,
    "test_fraction": 0.25,
    "seed": 7,
    "epochs": 3,
    "batch_size": 8,
    "learning_rate": 0.01,
    "hidden_units": [4],
    "folds": 1,
    "patience": 0,
    "grid": [0, 0.1],
    "experiment": "x",
    "threshold": 0.3,
}


def test_resume_keys_are_those_of_existing_work_folders() -> None:
    default, custom = make_config(), make_config(**CUSTOM)
    assert split_key(default, "a" * 64) == "aaaaaaaaaaaaaaaa-fcc82f2c"
    assert split_key(custom, "b" * 64) == "bbbbbbbbbbbbbbbb-09ef2cab"
    assert unit_key("/w/splits/abc", default, "l2", 1e-3, 0, 100) == "f9f99fb77606272e8571"
    assert unit_key("/w/splits/abc", custom, "decoupled", 0.1, -1, 3) == "611677f2b3231f01abc3"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("seed", 8),
        ("val_fraction", 0.15),
        ("features", ["a"]),
        ("categorical", ["a"]),
        ("exclude", ["b"]),
        ("na_values", ["?"]),
        ("max_categories", 50),
        ("slice_by", ["a"]),
        ("group_column", "g"),
    ],
)
def test_a_split_setting_changes_the_split_key(name: str, value) -> None:
    assert split_key(make_config(**{**CUSTOM, name: value}), "b" * 64) != split_key(make_config(**CUSTOM), "b" * 64)


@pytest.mark.parametrize(
    ("name", "value"),
    [("patience", 5), ("hidden_units", [4, 4]), ("folds", 3), ("one_hot_max", 8), ("class_weight", "balanced")],
)
def test_a_training_setting_changes_the_unit_key_only(name: str, value) -> None:
    changed, custom = make_config(**{**CUSTOM, name: value}), make_config(**CUSTOM)
    assert split_key(changed, "b" * 64) == split_key(custom, "b" * 64)
    assert unit_key("s", changed, "l2", 0.1, 0, 3) != unit_key("s", custom, "l2", 0.1, 0, 3)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("data", "other.csv"),
        ("grid", [0.5]),
        ("dropout_grid", [0.4]),
        ("threshold", 0.4),
        ("threshold", "auto"),
        ("drift_alert", 0.5),
        ("importance_repeats", 0),
    ],
)
def test_other_settings_keep_the_keys(name: str, value) -> None:
    changed = make_config(**{**CUSTOM, name: value})
    assert split_key(changed, "b" * 64) == split_key(make_config(**CUSTOM), "b" * 64)
    assert unit_key("s", changed, "l2", 0.1, 0, 3) == unit_key("s", make_config(**CUSTOM), "l2", 0.1, 0, 3)


def test_config_file_keys_and_mlflow_params_are_the_fields(tmp_path) -> None:
    every = make_config(**CUSTOM).model_dump()
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(every))
    assert make_config(**load_config_file(path)).model_dump() == every
    assert list(make_config().params()) == list(PipelineConfig.model_fields)


def test_every_setting_has_a_description() -> None:
    for model in (PipelineConfig, ScoreSettings):
        for name, field in model.model_fields.items():
            assert field.description and field.description == field.description.strip(), f"{model.__name__}.{name}"


def test_make_settings_builds_any_settings_model() -> None:
    assert make_settings(ScoreSettings, data="a.csv", output="b.parquet").threshold is None
    with pytest.raises(ConfigError, match="invalid settings: output: Field required"):
        make_settings(ScoreSettings, data="a.csv")


def test_split_folders_of_an_older_format_are_not_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    before = split_key(make_config(), "a" * 64)
    monkeypatch.setattr("wd_pipeline.data.splits.SPLIT_FORMAT", 1)
    assert split_key(make_config(), "a" * 64) != before


def test_column_settings_from_flags_and_config_files(tmp_path) -> None:
    from wd_pipeline.cli import build_parser, config_from_args

    argv = ["run", "--categorical", "zip, rating", "--exclude", "id,ts", "--na-values", "?,n/a, -999"]
    argv += ["--max-categories", "50", "--work-dir", str(tmp_path)]
    config = config_from_args(build_parser().parse_args(argv))
    assert (config.categorical, config.exclude, config.na_values, config.max_categories) == (
        ["zip", "rating"],
        ["id", "ts"],
        ["?", "n/a", "-999"],
        50,
    )
    path = tmp_path / "run.toml"
    path.write_text('categorical = ["zip"]\nexclude = ["id"]\nna_values = ["?", "unknown"]\nmax_categories = 7\n')
    config = make_config(**load_config_file(path))
    assert (config.categorical, config.exclude, config.na_values, config.max_categories) == (
        ["zip"],
        ["id"],
        ["?", "unknown"],
        7,
    )
    assert make_config().params()["na_values"] == "" and config.params()["na_values"] == "?,unknown"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_categories": 1}, "max_categories: Input should be greater than or equal to 2"),
        ({"na_values": [""]}, "na_values.0: String should have at least 1 character"),
        ({"exclude": [""]}, "exclude.0: String should have at least 1 character"),
    ],
)
def test_bad_column_settings_name_the_field(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        make_config(**settings)
    assert message in str(caught.value)
