"""Bad-input matrix (issue #6, "nothing lost"): every case ends in one exact message, a FAILED
flow run or exit code 2, and leaves the registry as it was — no new model version, and the
champion alias still on the version it pointed to before.

Most cases run in this process through the Prefect flow or ``cli.main`` (fast); the real
command runs as a subprocess for two representative cases. One MLflow store serves the
module, seeded with a champion so "champion unchanged" is a real check, not a vacuous one.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.pipeline import weight_decay_pipeline
from tests.helpers.registry_models import labelled_frame, log_pyfunc, register_champion, train_keras
from tests.helpers.s3 import BUCKET as S3_BUCKET
from tests.helpers.s3 import SeaweedS3
from tests.helpers.templates import seed_prefect_home
from wd_pipeline.cli import EXIT_BAD_SETTINGS, EXIT_RUN_FAILED, main
from wd_pipeline.ops import stack
from wd_pipeline.ops.stack import free_port
from wd_pipeline.tracking import runs

pytestmark = pytest.mark.slow

MODEL = "wd-bad-matrix"
RUN = {"label": "y", "positive_class": None, "grid": [0.0], "epochs": 1, "folds": 1, "model_name": MODEL}
BAD_PARAMS = "Flow run received invalid parameters:\n - "


@pytest.fixture(scope="module")
def store(module_store: Path, prefect_api) -> Path:
    """The module's MLflow store with ``MODEL@champion`` = v1, so every case can check it is kept."""
    frame = labelled_frame(rows=120)
    keras_path = train_keras(frame, module_store / "seed", epochs=0)
    model_uri, run_id = log_pyfunc(keras_path, frame, ["a", "b", "c"], experiment="matrix-seed")
    decision = register_champion(
        MODEL, model_uri, run_id, frame[["a", "b", "c"]], frame["y"].to_numpy(), min_test_roc_auc=0.0
    )
    assert decision.version == "1"
    return module_store


def registry_state() -> tuple[list[str], str]:
    client = runs.get_client()
    versions = sorted(str(v.version) for v in client.search_model_versions(f"name = '{MODEL}'"))
    return versions, str(client.get_model_version_by_alias(MODEL, "champion").version)


UNCHANGED = (["1"], "1")


# --- data files: each builder writes into the folder and returns (data path, expected message) ---------------


def csv(folder: Path, frame: pd.DataFrame, name: str) -> str:
    path = folder / name
    frame.to_csv(path, index=False)
    return str(path)


def good(rows: int = 120) -> pd.DataFrame:
    return labelled_frame(rows=rows)


def raw(folder: Path, name: str, content: bytes) -> str:
    path = folder / name
    path.write_bytes(content)
    return str(path)


def truncated_parquet(folder: Path) -> str:
    path = folder / "cut.parquet"
    good().to_parquet(path)
    path.write_bytes(path.read_bytes()[:300])
    return str(path)


DataCase = Callable[[Path], tuple[str, str]]
NOT_PARQUET = "is not a valid Parquet file (truncated or another format): write it again completely, or pass a CSV"
INFINITE = (
    "features hold infinite values (column: count) {'a': 1}: replace them with numbers, "
    "or leave those cells empty to mark them missing"
)


def parquet(folder: Path, table: pa.Table, name: str) -> str:
    path = folder / name
    pq.write_table(table, path)
    return str(path)


def empty_folder(folder: Path) -> str:
    path = folder / "landing"
    path.mkdir(exist_ok=True)
    return str(path)


def mixed_numbers(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(c=frame.c.round(3).astype(str).mask(frame.index == 4, "?"))


DATA_CASES: dict[str, tuple[DataCase, dict]] = {
    "missing file": (
        lambda f: (
            p := str(f / "nowhere.csv"),
            f"data file not found: {p}. Pass --data with the path of a CSV or Parquet file, or of a folder of them",
        ),
        {},
    ),
    "empty file": (
        lambda f: (
            p := raw(f, "empty.csv", b""),
            f"data file {p} is empty. Pass a CSV with a header row or a Parquet file",
        ),
        {},
    ),
    "not CSV or Parquet": (
        lambda f: (
            p := raw(f, "image.csv", bytes(range(256)) * 8),
            f"data file {p} is neither Parquet nor readable CSV: CSV parse error",
        ),
        {},
    ),
    "Parquet name, other bytes": (
        lambda f: (p := raw(f, "x.parquet", b"a,b\n1,2\n"), f"data file {p} {NOT_PARQUET}"),
        {},
    ),
    "truncated Parquet": (lambda f: (p := truncated_parquet(f), f"data file {p} {NOT_PARQUET}"), {}),
    "semicolon delimiter": (
        lambda f: (
            p := raw(f, "semi.csv", good().to_csv(index=False, sep=";").encode()),
            f"data file {p} looks semicolon-separated (its one column is 'a;b;c;d;y'): "
            "save it comma-separated, or as Parquet",
        ),
        {},
    ),
    "header only": (
        lambda f: (
            raw(f, "header.csv", b"a,b,y\n"),
            "data holds a header but no rows: pass a file with data rows under the header",
        ),
        {},
    ),
    "missing label": (
        lambda f: (
            csv(f, good().drop(columns="y"), "nolabel.csv"),
            "label column 'y' not found; columns are ['a', 'b', 'c', 'd']. "
            "Pass --label with the name of the binary target column",
        ),
        {},
    ),
    "misspelled label": (
        lambda f: (
            csv(f, good().rename(columns={"y": "target"}), "target.csv"),
            "label column 'targt' not found; columns are ['a', 'b', 'c', 'd', 'target']. Did you mean 'target'? "
            "Pass --label with the name of the binary target column",
        ),
        {"label": "targt"},
    ),
    "three classes": (
        lambda f: (
            csv(f, good().assign(y=np.arange(120) % 3), "three.csv"),
            "label column 'y' must be binary (0/1, booleans or two strings); it holds [0, 1, 2]: "
            "map it to two classes, or pass --label with another column",
        ),
        {},
    ),
    "two strings, no positive class": (
        lambda f: (
            csv(f, good().assign(y=lambda d: d.y.map({0: "no", 1: "yes"})), "strings.csv"),
            "label column 'y' holds strings ['no', 'yes']: name the positive class, e.g. --positive-class 'yes'",
        ),
        {},
    ),
    "positive class not in label": (
        lambda f: (
            csv(f, good().assign(y=lambda d: d.y.map({0: "no", 1: "yes"})), "strings2.csv"),
            "positive class 'si' is not a value of label column 'y'; it holds ['no', 'yes']",
        ),
        {"positive_class": "si"},
    ),
    "label mostly missing": (
        lambda f: (
            csv(f, good().assign(y=lambda d: d.y.astype("Int64").mask(d.index % 3 != 0)), "holes.csv"),
            "label column 'y' is missing on 80 of 120 rows (more than half): "
            "fill it in, or pass --label with another column",
        ),
        {},
    ),
    "inf feature": (
        lambda f: (csv(f, good().assign(a=lambda d: d.a.mask(d.index == 3, np.inf)), "inf.csv"), INFINITE),
        {},
    ),
    "all-missing column": (
        lambda f: (
            csv(f, good().assign(e=np.nan), "empty-column.csv"),
            "column 'e' is empty (every value missing): leave it out with --exclude e",
        ),
        {},
    ),
    "identifier column": (
        lambda f: (
            csv(f, good().assign(name=[f"user-{i}" for i in range(120)]), "ids.csv"),
            "column 'name' looks like an identifier (120 distinct values in 120 rows): "
            "leave it out with --exclude name, or pass --categorical name if it is a category",
        ),
        {},
    ),
    "numbers mixed with text": (
        lambda f: (
            csv(f, mixed_numbers(good()), "mixed.csv"),
            "column 'c' mixes numbers and text: 119 of its 120 values are numbers, but row 5 holds '?'. "
            "Declare such values missing with --na-values '?', or take the column as categorical with --categorical c",
        ),
        {},
    ),
    "too many categories": (
        lambda f: (
            csv(f, good().assign(city=[f"c{i % 30}" for i in range(120)]), "cities.csv"),
            "categorical columns have more distinct values than --max-categories 20 (column: count) {'city': 30}: "
            "raise --max-categories, or leave it out with --exclude city",
        ),
        {"max_categories": 20},
    ),
    "unknown --categorical column": (
        lambda f: (
            csv(f, good().assign(city=[f"c{i % 3}" for i in range(120)]), "city.csv"),
            "--categorical names column 'cty' that is not in the data; columns are ['a', 'b', 'c', 'd', 'y', 'city']. "
            "Did you mean 'city'? Pass --categorical with names of the header",
        ),
        {"categorical": ["cty"]},
    ),
    "unknown --exclude column": (
        lambda f: (
            csv(f, good(), "plain.csv"),
            "--exclude names column 'ID' that is not in the data; columns are ['a', 'b', 'c', 'd', 'y']. "
            "Pass --exclude with names of the header",
        ),
        {"exclude": ["ID"]},
    ),
    "date column": (
        lambda f: (
            parquet(
                f,
                pa.Table.from_pandas(good(), preserve_index=False).append_column(
                    "day", pa.array([datetime.date(2024, 1, 1 + i % 28) for i in range(120)])
                ),
                "dated.parquet",
            ),
            "date/time columns ['day (date32[day])'] cannot be model inputs: "
            "leave them out with --exclude day (or derive numeric columns from them first)",
        ),
        {},
    ),
    "empty data folder": (
        lambda f: (
            p := empty_folder(f),
            f"data folder {p} holds no Parquet or CSV files (*.parquet, *.pq, *.csv): "
            "pass --data with a folder of them, or with one file",
        ),
        {},
    ),
    "duplicate columns": (
        lambda f: (
            raw(f, "dup.csv", ("a,a,y\n" + "\n".join(f"{i},{i},{i % 2}" for i in range(60))).encode()),
            "data has duplicate columns ['a']: give every column a unique name",
        ),
        {},
    ),
    "one class only": (
        lambda f: (
            csv(f, good().assign(y=0), "one.csv"),
            "label column 'y' has a single class, 0 (negative): a classifier needs both",
        ),
        {},
    ),
    "fewer rows than needed": (
        lambda f: (csv(f, good(rows=12), "tiny.csv"), "too few rows per class"),
        {},
    ),
    "folds larger than a class": (
        lambda f: (
            csv(f, pd.DataFrame({"a": np.linspace(0, 1, 140), "y": [1] * 20 + [0] * 120}), "rare.csv"),
            "19 folds need at least 19 rows of each class in the training data; "
            "the smallest class has 18: lower --folds",
        ),
        {"folds": 19, "val_fraction": 0.1, "test_fraction": 0.1},
    ),
    "unknown --group-column": (
        lambda f: (
            csv(f, good().assign(team=np.arange(120) // 10), "teams.csv"),
            "--group-column names column 'tem' that is not in the data; columns are ['a', 'b', 'c', 'd', 'y', 'team']. "
            "Did you mean 'team'? Pass --group-column with a column of the header",
        ),
        {"group_column": "tem"},
    ),
    "single group": (
        lambda f: (
            csv(f, good().assign(team="ward-1"), "one-team.csv"),
            "group column 'team' holds a single group: a grouped split needs groups to keep apart; "
            "pass --group-column with the column that tells the groups apart, or leave it out",
        ),
        {"group_column": "team"},
    ),
    "too few groups for test and validation": (
        lambda f: (
            csv(f, good().assign(team=np.arange(120) % 2), "two-teams.csv"),
            "group column 'team' holds 2 groups: test, validation and training each take whole groups, "
            "so at least 3 are needed; pass --group-column with a column of more groups, or leave it out",
        ),
        {"group_column": "team"},
    ),
    "missing group": (
        lambda f: (
            csv(
                f,
                good()
                .assign(team=(np.arange(120) // 10).astype(float))
                .assign(team=lambda d: d.team.mask(d.index.isin([3, 50]))),
                "team-holes.csv",
            ),
            "group column 'team' is missing on 2 of 120 rows: every row needs a group; "
            "fill it in, or pass --group-column with another column",
        ),
        {"group_column": "team"},
    ),
    "more folds than groups": (
        lambda f: (
            csv(f, good().assign(team=np.arange(120) // 12), "ten-teams.csv"),
            "9 folds need at least 9 groups in the training data (train + validation); "
            "it holds 8 groups of 'team': lower --folds",
        ),
        {"group_column": "team", "folds": 9},
    ),
    "positives in one group": (
        lambda f: (
            csv(f, good().assign(y=[1] * 30 + [0] * 90, team=np.arange(120) // 30), "one-positive-team.csv"),
            "grouped split left the validation split without positive rows: they lie in 1 group of 'team', "
            "and test, validation and training each need some; pass --group-column with a column that spreads "
            "them over more groups, or leave it out",
        ),
        {"group_column": "team"},
    ),
    "outside the data roots": (
        lambda f: ("/etc/passwd", "data source /etc/passwd resolves to /etc/passwd, outside the allowed data folders"),
        {},
    ),
    "disallowed scheme": (
        lambda f: (
            "http://127.0.0.1:9/d.csv",
            "data URI scheme 'http' of 'http://127.0.0.1:9/d.csv' is not allowed; "
            "allowed schemes are ['file', 's3', 'gs', 'hdfs']. Copy the file to an allowed location, "
            "or set WD_PIPELINE_DATA_SCHEMES=file,s3,gs,hdfs,http",
        ),
        {},
    ),
}


def failure(state) -> str:
    assert state.is_failed(), state
    return str(state.result(raise_on_failure=False))


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_bad_data_file(case: str, store: Path) -> None:
    build, settings = DATA_CASES[case]
    folder = store / "inputs"
    folder.mkdir(exist_ok=True)
    path, expected = build(folder)
    message = failure(weight_decay_pipeline(**{**RUN, "data": path, **settings}, return_state=True))
    if case in {"not CSV or Parquet", "fewer rows than needed", "outside the data roots"}:
        assert message.startswith(expected), message  # the rest names arrow's parse error / counts / the roots
    else:
        assert message == expected
    assert registry_state() == UNCHANGED


# --- parameters, three ways in ----------------------------------------------------------------------------------

FLOW_PARAMS = {
    "empty λ grid": ({"grid": []}, "grid: List should have at least 1 item after validation, not 0"),
    "negative λ": ({"grid": [0.0, -1e-3]}, "grid.1: Input should be greater than or equal to 0"),
    "NaN λ": ({"grid": [float("nan")]}, "grid.0: Input should be a finite number"),
    "zero epochs": ({"epochs": 0}, "epochs: Input should be greater than or equal to 1"),
    "huge epochs": ({"epochs": 10**9}, "epochs: Input should be less than or equal to 100000"),
    "batch size 0": ({"batch_size": 0}, "batch_size: Input should be greater than or equal to 1"),
    "unknown mode": ({"modes": ["l3"]}, "modes.0: Input should be 'l2', 'decoupled' or 'dropout'"),
    "too many folds": ({"folds": 50}, "folds: Input should be less than or equal to 20"),
    "max categories 1": ({"max_categories": 1}, "max_categories: Input should be greater than or equal to 2"),
    "empty na value": ({"na_values": [""]}, "na_values.0: String should have at least 1 character"),
    "dropout rate 1": ({"dropout_grid": [0.0, 1.0]}, "dropout_grid.1: Input should be less than 1"),
    "not a threshold metric": (
        {"threshold": "auto", "threshold_metric": "roc_auc"},
        "threshold_metric: Input should be 'f1', 'accuracy', 'balanced_accuracy' or 'youden'",
    ),
    "unknown class weight": ({"class_weight": "auto"}, "class_weight: Input should be 'none' or 'balanced'"),
    "min slice rows 0": ({"min_slice_rows": 0}, "min_slice_rows: Input should be greater than or equal to 1"),
    "unknown reuse": ({"reuse": "always"}, "reuse: Input should be 'finished' or 'never'"),
}


@pytest.mark.parametrize("case", list(FLOW_PARAMS))
def test_bad_flow_parameter(case: str, store: Path) -> None:
    params, expected = FLOW_PARAMS[case]
    assert failure(weight_decay_pipeline(**{**RUN, **params}, return_state=True)) == BAD_PARAMS + expected
    assert registry_state() == UNCHANGED


CLI_FLAGS = {
    "empty λ grid": (["--grid", ""], "--grid is empty: give comma-separated λ values, e.g. --grid 0,1e-4,1e-2"),
    "negative λ": (["--grid=-1e-3"], "invalid settings: grid.0: Input should be greater than or equal to 0"),
    "NaN λ": (["--grid", "nan"], "invalid settings: grid.0: Input should be a finite number"),
    "text λ": (
        ["--grid", "0,small"],
        "--grid must hold numbers separated by commas (e.g. 0,1e-4,1e-2): could not convert string to float: 'small'",
    ),
    "zero epochs": (["--epochs", "0"], "invalid settings: epochs: Input should be greater than or equal to 1"),
    "huge epochs": (
        ["--epochs", "1000000000"],
        "invalid settings: epochs: Input should be less than or equal to 100000",
    ),
    "batch size 0": (["--batch-size", "0"], "invalid settings: batch_size: Input should be greater than or equal to 1"),
    "unknown mode": (["--modes", "l3"], "invalid settings: modes.0: Input should be 'l2', 'decoupled' or 'dropout'"),
    "folds 0": (["--folds", "0"], "invalid settings: folds: Input should be greater than or equal to 1"),
    "text max categories": (
        ["--max-categories", "lots"],
        "--max-categories 'lots' is not valid: give a whole number, e.g. --max-categories 1000",
    ),
    "max categories 1": (
        ["--max-categories", "1"],
        "invalid settings: max_categories: Input should be greater than or equal to 2",
    ),
    "dropout rate 1": (["--dropout-grid", "0,1"], "invalid settings: dropout_grid.1: Input should be less than 1"),
    "threshold neither number nor auto": (
        ["--threshold", "high"],
        "invalid settings: threshold: 'high' is neither a probability strictly between 0 and 1 nor auto",
    ),
    "not a threshold metric": (
        ["--threshold", "auto", "--threshold-metric", "roc_auc"],
        "invalid settings: threshold_metric: Input should be 'f1', 'accuracy', 'balanced_accuracy' or 'youden'",
    ),
    "drift warn above alert": (
        ["--drift-warn", "0.3"],
        "invalid settings: config: drift_warn (0.3) must be below drift_alert (0.25): a warning comes before an alert",
    ),
    "unknown reuse": (["--reuse", "no"], "invalid settings: reuse: Input should be 'finished' or 'never'"),
    "group column is the label": (
        ["--group-column", "diagnosis"],
        "invalid settings: config: group_column 'diagnosis' is the label: name the column that holds each row's group",
    ),
}

CONFIG_FILES = {
    "empty λ grid": ("grid = []\n", "invalid settings: grid: List should have at least 1 item after validation, not 0"),
    "negative λ": ("grid = [0.0, -0.5]\n", "invalid settings: grid.1: Input should be greater than or equal to 0"),
    "NaN λ": ("grid = [nan]\n", "invalid settings: grid.0: Input should be a finite number"),
    "zero epochs": ("[pipeline]\nepochs = 0\n", "invalid settings: epochs: Input should be greater than or equal to 1"),
    "batch size 0": ("batch_size = 0\n", "invalid settings: batch_size: Input should be greater than or equal to 1"),
    "unknown mode": ("modes = ['l3']\n", "invalid settings: modes.0: Input should be 'l2', 'decoupled' or 'dropout'"),
    "misspelled key": ("epoch = 5\n", "invalid settings: epoch: Extra inputs are not permitted"),
    "categorical not a list": ("categorical = 5\n", "invalid settings: categorical: Input should be a valid list"),
    "reuse not a choice": ("reuse = false\n", "invalid settings: reuse: Input should be 'finished' or 'never'"),
    "not TOML": ("epochs = = 5\n", "is not valid: Invalid value (at line 1, column 10)"),
}


def one_line_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["run", *argv]) == EXIT_BAD_SETTINGS
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err.removeprefix("error: ")


@pytest.mark.parametrize("case", list(CLI_FLAGS))
def test_bad_cli_flag(case: str, store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv, expected = CLI_FLAGS[case]
    assert one_line_exit_2(argv, capsys) == expected
    assert registry_state() == UNCHANGED


@pytest.mark.parametrize("case", list(CONFIG_FILES))
def test_bad_config_file(case: str, store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text, expected = CONFIG_FILES[case]
    path = store / "bad.toml"
    path.write_text(text)
    message = one_line_exit_2(["--config", str(path)], capsys)
    assert message.endswith(expected) if case == "not TOML" else message == expected
    assert registry_state() == UNCHANGED


# --- environment --------------------------------------------------------------------------------------------------


def test_unreachable_tracking_server(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The flow itself: FAILED with the one line, not retried by Prefect; the real store untouched."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    message = failure(weight_decay_pipeline(**RUN, return_state=True))
    monkeypatch.undo()
    assert message == (
        "cannot reach the MLflow tracking server at http://127.0.0.1:9: connection refused (3 attempts). "
        "Check MLFLOW_TRACKING_URI and that the server is running"
    )
    assert registry_state() == UNCHANGED


def unwritable_work_dir(store: Path) -> tuple[str, str]:
    """A work folder that cannot be created: its parent is a file (read-only even for root)."""
    blocker = store / "blocker"
    blocker.write_text("a file where a folder should be")
    return str(blocker / "work"), "Not a directory"


def test_work_folder_not_writable_flow(store: Path) -> None:
    work, reason = unwritable_work_dir(store)
    path = csv(store, good(), "fine.csv")
    message = failure(weight_decay_pipeline(**{**RUN, "data": path, "work_dir": work}, return_state=True))
    assert (
        message
        == f"work folder {work} is not writable ({reason}): pass --work-dir (or set WD_PIPELINE_WORK_DIR) to a folder you can write"
    )
    assert registry_state() == UNCHANGED


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; the file-as-parent case covers it")
def test_read_only_work_folder_cli(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = store / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        message = one_line_exit_2(["--work-dir", str(folder / "work")], capsys)
    finally:
        folder.chmod(0o755)
    assert (
        message
        == f"work folder {folder / 'work'} is not writable (Permission denied): pass --work-dir (or set WD_PIPELINE_WORK_DIR) to a folder you can write"
    )


# --- the real command, for representative cases -------------------------------------------------------------------


def cli(store: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PREFECT_HOME": str(seed_prefect_home(store / "prefect-cli"))}
    # a busy two-core machine can take longer than Prefect's default 20 s to start the temporary API
    env.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    env.pop("PREFECT_API_URL", None)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "wd_pipeline.cli",
            "run",
            "--label",
            "y",
            "--grid",
            "0",
            "--epochs",
            "1",
            "--folds",
            "1",
            "--model-name",
            MODEL,
            *argv,
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=store,
        timeout=300,
    )


def test_cli_unwritable_work_folder_exits_2_before_anything_starts(store: Path) -> None:
    work, reason = unwritable_work_dir(store)
    done = cli(store, "--data", csv(store, good(), "fine.csv"), "--work-dir", work)
    assert done.returncode == EXIT_BAD_SETTINGS
    assert done.stderr.strip() == (
        f"error: work folder {work} is not writable ({reason}): pass --work-dir (or set WD_PIPELINE_WORK_DIR) to a folder you can write"
    )
    assert registry_state() == UNCHANGED


def test_cli_semicolon_file_exits_1_with_one_line(store: Path) -> None:
    path = raw(store, "semi-cli.csv", good().to_csv(index=False, sep=";").encode())
    done = cli(store, "--data", path)
    assert done.returncode == EXIT_RUN_FAILED
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: data file {path} looks semicolon-separated (its one column is 'a;b;c;d;y'): "
        "save it comma-separated, or as Parquet"
    ], done.stderr[-4000:]
    assert "Traceback" not in done.stderr
    assert registry_state() == UNCHANGED


# --- data cases the command refuses before the flow starts (the flow's own checks come with the columns' use) -----

CLI_DATA_CASES = {
    "unknown --slice-by column": (
        ["--slice-by", "a,sex"],
        "--slice-by names column 'sex' that is not in the data; columns are ['a', 'b', 'c', 'd', 'y']. "
        "Pass --slice-by with a column of the header",
    ),
    "unknown --group-column column": (
        ["--group-column", "B"],
        "--group-column names column 'B' that is not in the data; columns are ['a', 'b', 'c', 'd', 'y']. "
        "Did you mean 'b'? Pass --group-column with a column of the header",
    ),
}


@pytest.mark.parametrize("case", list(CLI_DATA_CASES))
def test_bad_data_for_the_cli(case: str, store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv, expected = CLI_DATA_CASES[case]
    path = csv(store, good(), "columns.csv")
    assert main(["run", "--data", path, "--label", "y", *argv]) == EXIT_RUN_FAILED
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.removeprefix("error: ") == expected
    assert registry_state() == UNCHANGED


# --- moving @champion by hand: refused with one line, exit 2, the champion where it was --------------------------

CHAMPION_MOVES = {
    "promote a version that does not exist": (
        ["promote", MODEL, "9", "--reason", "reviewed"],
        f"model '{MODEL}' has no version 9; its versions are 1: pass one of them, e.g. ./wd promote {MODEL} 1 --reason ...",
    ),
    "promote the champion": (
        ["promote", MODEL, "1", "--reason", "reviewed"],
        f"version 1 of '{MODEL}' is already @champion: nothing to promote",
    ),
    "promote with an empty reason": (
        ["promote", MODEL, "1", "--reason", ""],
        "--reason is empty: say why the gate is overridden, e.g. --reason 'new columns reviewed'",
    ),
    "promote a version that is not a number": (
        ["promote", MODEL, "v1", "--reason", "reviewed"],
        "VERSION 'v1' is not a version number: give one like 3",
    ),
    "promote a model that is not registered": (
        ["promote", "wd-nope", "1", "--reason", "reviewed"],
        "no registered model named 'wd-nope' in the registry: check the name (a run's summary prints it)",
    ),
    "roll back past the first champion": (
        ["rollback", MODEL],
        f"@champion v1 of '{MODEL}' records no champion before it: choose one with ./wd promote {MODEL} VERSION --reason ...",
    ),
}


@pytest.mark.parametrize("case", list(CHAMPION_MOVES))
def test_bad_champion_move(case: str, store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv, expected = CHAMPION_MOVES[case]
    assert main(argv) == EXIT_BAD_SETTINGS
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.removeprefix("error: ") == expected
    assert registry_state() == UNCHANGED


# --- run settings given to deploy for the nightly deployment: checked as a run's, nothing deployed ---------------

DEPLOY_FLAGS = {
    "deploy with zero epochs": (
        ["--epochs", "0"],
        "invalid settings: epochs: Input should be greater than or equal to 1",
    ),
    "deploy with a misspelled config key": (
        ["--config", "{folder}/nightly.toml"],
        "invalid settings: epoch: Extra inputs are not permitted",
    ),
}


@pytest.mark.parametrize("case", list(DEPLOY_FLAGS))
def test_bad_deploy_setting(case: str, store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv, expected = DEPLOY_FLAGS[case]
    (store / "nightly.toml").write_text("epoch = 5\n")
    argv = [arg.format(folder=store) for arg in argv]
    assert main(["deploy", *argv, "--state-dir", str(store / "no-stack")]) == EXIT_BAD_SETTINGS
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.removeprefix("error: ") == expected


# --- gc's age: refused before the store or the work folder is read, nothing removed ---------------------------

AGE_HINT = "is not an age: give a positive whole number and a unit (s, m, h, d or w), e.g. --older-than 30d"
GC_AGES = {
    "gc age without a unit": ("30", f"--older-than '30' {AGE_HINT}"),
    "gc negative age": ("-1d", f"--older-than '-1d' {AGE_HINT}"),
    "gc age that is not a number": ("abc", f"--older-than 'abc' {AGE_HINT}"),
}


@pytest.mark.parametrize("case", list(GC_AGES))
def test_bad_gc_age(case: str, store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    age, expected = GC_AGES[case]
    work = store / "work"
    before = sorted(work.rglob("*")) if work.exists() else []
    assert main(["gc", f"--older-than={age}"]) == EXIT_BAD_SETTINGS
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.removeprefix("error: ") == expected
    assert (sorted(work.rglob("*")) if work.exists() else []) == before
    assert registry_state() == UNCHANGED


# --- the pipeline flow's ceiling from the environment of the process that runs it -------------------------------

CEILING_HINT = "is not a number of seconds: give a positive number, e.g. 3600, or unset it for the default of 43200 s"
FLOW_CEILINGS = {
    "flow timeout that is not a number": ("abc", f"WD_PIPELINE_FLOW_TIMEOUT_SECONDS='abc' {CEILING_HINT}"),
    "flow timeout of zero": ("0", f"WD_PIPELINE_FLOW_TIMEOUT_SECONDS='0' {CEILING_HINT}"),
    "negative flow timeout": ("-5", f"WD_PIPELINE_FLOW_TIMEOUT_SECONDS='-5' {CEILING_HINT}"),
}


@pytest.mark.parametrize("case", list(FLOW_CEILINGS))
def test_bad_flow_timeout(case: str) -> None:
    from flows.timeouts import PIPELINE_CEILING_ENV, pipeline_ceiling
    from wd_pipeline.errors import ConfigError

    value, expected = FLOW_CEILINGS[case]
    with pytest.raises(ConfigError) as refused:
        pipeline_ceiling({PIPELINE_CEILING_ENV: value})
    assert str(refused.value) == expected


# --- an S3 work folder or artifact store (SeaweedFS, tests/helpers/s3.py) ------------------------------------------


def s3_cases(server: SeaweedS3) -> dict[str, tuple[dict[str, str | None], str, str]]:
    """Per case: environment changes, the s3:// location, and the message for a work folder there."""
    where = server.endpoint
    return {
        "S3 bucket that does not exist": (
            {},
            "s3://no-such-bucket/work",
            f"S3 bucket 'no-such-bucket' of work folder s3://no-such-bucket/work does not exist at {where}: "
            "create it or pass --work-dir with an existing bucket",
        ),
        "no S3 credentials": (
            {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None, "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent"},
            f"s3://{S3_BUCKET}/work",
            f"no S3 credentials for work folder s3://{S3_BUCKET}/work: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for a store other than AWS)",
        ),
        "wrong S3 secret": (
            {"AWS_SECRET_ACCESS_KEY": "not-the-secret"},
            f"s3://{S3_BUCKET}/work",
            f"the S3 store at {where} refused the credentials for work folder s3://{S3_BUCKET}/work "
            "(SignatureDoesNotMatch): set the right AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
        ),
    }


def with_env(monkeypatch: pytest.MonkeyPatch, changes: dict[str, str | None]) -> None:
    for key, value in changes.items():
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)


S3_CASES = ["S3 bucket that does not exist", "no S3 credentials", "wrong S3 secret"]


@pytest.mark.parametrize("case", S3_CASES)
def test_bad_s3_work_folder(
    case: str, store: Path, s3_env: SeaweedS3, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    changes, location, expected = s3_cases(s3_env)[case]
    with_env(monkeypatch, changes)
    assert one_line_exit_2(["--work-dir", location], capsys) == expected
    assert registry_state() == UNCHANGED


@pytest.mark.parametrize("case", S3_CASES)
def test_bad_s3_artifacts_destination(
    case: str, store: Path, s3_env: SeaweedS3, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``stack up`` refuses before it starts anything: the same line, naming MLflow's destination and flag."""
    changes, location, expected = s3_cases(s3_env)[case]
    with_env(monkeypatch, changes)
    state_dir = store / "s3-stack"
    argv = ["stack", "up", "--state-dir", str(state_dir), "--mlflow-artifacts-destination", location]
    try:
        code = main([*argv, "--prefect-port", str(free_port()), "--mlflow-port", str(free_port())])
    finally:
        if (state_dir / "stack.json").exists():  # started after all: stop it before failing
            stack.down(state_dir)
    assert code == EXIT_RUN_FAILED
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    message = expected.replace("work folder", "MLflow artifacts destination").replace(
        "--work-dir", "--mlflow-artifacts-destination"
    )
    assert err.removeprefix("error: ") == message
    assert not (state_dir / "stack.json").exists()
