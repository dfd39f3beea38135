"""The scikit-learn baselines run on a split folder laid out as the pipeline writes it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from benchmarks import baselines
from tests.conftest import PROJECT_ROOT

ADULT = PROJECT_ROOT / "data" / "adult.parquet"


def write_split_folder(folder: Path, rows: int = 300) -> None:
    """The first rows of the bundled adult table: ``?`` as null, a 0/1 int8 label, float numbers
    with gaps, and a category that only the test rows hold."""
    table = pq.read_table(ADULT).slice(0, rows)
    label = pc.equal(table["income"], ">50K").cast(pa.int8())
    columns = {}
    for name in table.column_names[:-1]:
        column = table[name]
        if pa.types.is_string(column.type):
            column = pc.if_else(pc.equal(column, "?"), pa.scalar(None, pa.string()), column)
        else:
            values = column.to_numpy().astype(np.float64)
            values[::17] = np.nan
            column = pa.array(values, from_pandas=True)
        columns[name] = column
    columns["workclass"] = pa.array(["Unseen-in-training"] * 30 + columns["workclass"].to_pylist()[30:])
    features = pa.table(columns).append_column("income", label)
    bounds = {"test": (0, 60), "validation": (60, 120), "train": (120, rows)}
    folder.mkdir()
    for name, (start, stop) in bounds.items():
        pq.write_table(features.slice(start, stop - start), folder / f"{name}.parquet")
    manifest = {"label": "income", "features": table.column_names[:-1]}
    (folder / "manifest.json").write_text(json.dumps(manifest))


# 240 rows are too few for the MLP's default 200 epochs to settle; the scores are what is checked.
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_three_baselines_score_the_test_rows(tmp_path: Path) -> None:
    folder, report = tmp_path / "split", tmp_path / "baselines.json"
    write_split_folder(folder)

    scores = baselines.main([str(folder), "--json", str(report)])

    assert [score.model for score in scores] == [
        "LogisticRegression (one-hot)",
        "MLPClassifier((10, 10)) (one-hot)",
        "HistGradientBoosting (native categories)",
    ]
    # Income is predictable from these columns: a model that learnt nothing sits near 0.5.
    assert all(score.roc_auc > 0.7 for score in scores)
    written = json.loads(report.read_text())
    assert (written["fit_rows"], written["test_rows"]) == (240, 60)
    assert [entry["roc_auc"] for entry in written["scores"]] == [score.roc_auc for score in scores]


def test_roles_come_from_the_arrow_types(tmp_path: Path) -> None:
    folder = tmp_path / "split"
    write_split_folder(folder)

    data = baselines.load(folder)

    assert data.categorical == [
        "workclass",
        "education",
        "marital-status",
        "occupation",
        "relationship",
        "race",
        "gender",
        "native-country",
    ]
    assert data.numeric == ["age", "fnlwgt", "educational-num", "capital-gain", "capital-loss", "hours-per-week"]


def test_one_hot_inputs_flag_gaps_and_zero_unseen_categories(tmp_path: Path) -> None:
    folder = tmp_path / "split"
    write_split_folder(folder)
    data = baselines.load(folder)

    inputs = baselines.one_hot_inputs(data.categorical, data.numeric).fit(data.fit_x)
    names = list(inputs.get_feature_names_out())
    encoded = inputs.transform(data.test_x.head(30))

    assert [name for name in names if name.startswith("was_missing__")] == [
        f"was_missing__missingindicator_{name}" for name in data.numeric
    ]
    workclass = [i for i, name in enumerate(names) if name.startswith("categorical__workclass_")]
    assert "categorical__workclass_nan" in names
    assert encoded[:, workclass].sum() == 0
