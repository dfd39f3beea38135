"""``python -m benchmarks.baselines SPLIT_FOLDER``: scikit-learn baselines on a split the pipeline wrote.

The pipeline's test ROC AUC means little alone; these are the models a practitioner would try
first on the same rows. Each is fitted on train + validation (the rows the pipeline's refit
sees) and scored on test:

- logistic regression and ``MLPClassifier((10, 10))`` — the pipeline's network shape — on
  one-hot categories (a missing value is a category of its own, an unseen one encodes as all
  zeros) and standardised, median-imputed numbers with a 0/1 "was missing" column for every
  numeric column that had gaps in the fitted rows;
- ``HistGradientBoostingClassifier`` with its native categorical splits, categories given as
  ordinal codes (missing and unseen values become NaN, which it routes as missing).

A feature is categorical when its Arrow type in the split files is a string or a dictionary;
every other feature is numeric.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.base import ClassifierMixin, clone
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.impute import MissingIndicator, SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

SEED = 0
# HistGradientBoosting bins a categorical feature into at most 255 codes; rarer categories
# beyond that share one code instead of failing the fit.
MAX_TREE_CATEGORIES = 255


@dataclass(frozen=True)
class SplitData:
    """The rows a baseline fits on and is tested on, with each feature's role."""

    fit_x: pd.DataFrame
    fit_y: np.ndarray
    test_x: pd.DataFrame
    test_y: np.ndarray
    categorical: list[str]
    numeric: list[str]


@dataclass(frozen=True)
class Score:
    """One baseline's test metrics."""

    model: str
    roc_auc: float
    average_precision: float
    log_loss: float
    fit_seconds: float


def is_categorical(field: pa.Field) -> bool:
    kind = field.type
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_dictionary(kind)


def read_part(folder: Path, name: str, label: str, features: list[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """One split as features (categories as object arrays, missing as NaN) and its 0/1 label."""
    table = pq.read_table(folder / f"{name}.parquet", columns=[*features, label])
    frame = table.to_pandas()
    y = frame.pop(label).to_numpy(dtype=np.int8)
    for field in table.schema:
        if field.name != label and is_categorical(field):
            frame[field.name] = frame[field.name].astype(object).where(frame[field.name].notna(), np.nan)
    return frame, y


def load(folder: Path) -> SplitData:
    """Train + validation as the fitted rows, test as the scored rows, roles from the Arrow schema."""
    manifest = json.loads((folder / "manifest.json").read_text())
    label, features = manifest["label"], list(manifest["features"])
    schema = pq.read_schema(folder / "train.parquet")
    categorical = [name for name in features if is_categorical(schema.field(name))]
    numeric = [name for name in features if name not in categorical]
    parts = [read_part(folder, name, label, features) for name in ("train", "validation", "test")]
    fit_x = pd.concat([parts[0][0], parts[1][0]], ignore_index=True)
    fit_y = np.concatenate([parts[0][1], parts[1][1]])
    return SplitData(fit_x, fit_y, parts[2][0], parts[2][1], categorical, numeric)


def one_hot_inputs(categorical: list[str], numeric: list[str]) -> ColumnTransformer:
    """Standardised median-imputed numbers, their 0/1 gap columns, and one-hot categories."""
    return ColumnTransformer(
        [
            ("numeric", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric),
            ("was_missing", MissingIndicator(features="missing-only", error_on_new=False), numeric),
            ("categorical", OneHotEncoder(handle_unknown="ignore", sparse_output=False), categorical),
        ]
    )


def tree_inputs(categorical: list[str], numeric: list[str]) -> ColumnTransformer:
    """Categories as ordinal codes (NaN for missing and unseen), numbers as they are; categories first."""
    encoder = OrdinalEncoder(
        handle_unknown="use_encoded_value",
        unknown_value=np.nan,
        encoded_missing_value=np.nan,
        max_categories=MAX_TREE_CATEGORIES,
    )
    return ColumnTransformer([("categorical", encoder, categorical), ("numeric", "passthrough", numeric)])


def models(categorical: list[str], numeric: list[str]) -> dict[str, Pipeline]:
    categorical_mask = [True] * len(categorical) + [False] * len(numeric)
    return {
        "LogisticRegression (one-hot)": Pipeline(
            [("inputs", one_hot_inputs(categorical, numeric)), ("model", LogisticRegression(max_iter=2000))]
        ),
        "MLPClassifier((10, 10)) (one-hot)": Pipeline(
            [
                ("inputs", one_hot_inputs(categorical, numeric)),
                ("model", MLPClassifier(hidden_layer_sizes=(10, 10), random_state=SEED)),
            ]
        ),
        "HistGradientBoosting (native categories)": Pipeline(
            [
                ("inputs", tree_inputs(categorical, numeric)),
                ("model", HistGradientBoostingClassifier(categorical_features=categorical_mask, random_state=SEED)),
            ]
        ),
    }


def evaluate(name: str, model: ClassifierMixin, data: SplitData) -> Score:
    """Fit a fresh copy on the fitted rows, score the test rows."""
    model = clone(model)
    started = time.perf_counter()
    model.fit(data.fit_x, data.fit_y)
    seconds = time.perf_counter() - started
    probability = model.predict_proba(data.test_x)[:, 1]
    return Score(
        model=name,
        roc_auc=float(roc_auc_score(data.test_y, probability)),
        average_precision=float(average_precision_score(data.test_y, probability)),
        log_loss=float(log_loss(data.test_y, probability, labels=[0, 1])),
        fit_seconds=round(seconds, 2),
    )


def markdown(scores: list[Score], data: SplitData) -> str:
    lines = [
        f"fitted on {len(data.fit_y)} rows (train + validation), tested on {len(data.test_y)}; "
        f"{len(data.categorical)} categorical, {len(data.numeric)} numeric features",
        "",
        "| model | test ROC AUC | test average precision | test log loss | fit s |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [
        f"| {s.model} | {s.roc_auc:.4f} | {s.average_precision:.4f} | {s.log_loss:.4f} | {s.fit_seconds:.1f} |"
        for s in scores
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[Score]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a split folder: train/validation/test.parquet and manifest.json")
    parser.add_argument("--json", type=Path, help="also write the scores to this JSON file")
    args = parser.parse_args(argv)
    data = load(args.folder)
    scores = [evaluate(name, model, data) for name, model in models(data.categorical, data.numeric).items()]
    print(markdown(scores, data))
    if args.json:
        report = {"folder": str(args.folder), "fit_rows": len(data.fit_y), "test_rows": len(data.test_y)}
        report["scores"] = [asdict(score) for score in scores]
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return scores


if __name__ == "__main__":
    main()
