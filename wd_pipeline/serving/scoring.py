"""Batch scoring: the champion on a new file, checked against what it was trained on.

The file is validated against the registered model's input signature before anything is
predicted, so a renamed, missing or text column fails with a message naming it instead of
a shape error deep inside Keras. The alias is resolved to a version number once, and that
version scores the whole file: a champion moved mid-run cannot mix two models in one output.
Every scoring run is recorded in MLflow next to the pipeline runs that produced the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

# ScoreSettings lives with the other settings models, where the CLI reads it without pandas.
from wd_pipeline.config import ScoreSettings, make_settings
from wd_pipeline.data import sources
from wd_pipeline.errors import DataError, TrackingError

if TYPE_CHECKING:
    from mlflow import MlflowClient

OUTPUT_COLUMNS = ("probability", "label")


def make_score_settings(**settings: Any) -> ScoreSettings:
    return make_settings(ScoreSettings, **settings)


@dataclass(frozen=True)
class ScoreResult:
    """Where the predictions went and what produced them."""

    model_uri: str
    version: str
    rows: int
    positive_rate: float
    output: str
    run_id: str
    input_sha256: str


def resolve_champion(client: MlflowClient, name: str) -> tuple[str, str]:
    """(version, pinned model URI) of ``name@champion``."""
    from wd_pipeline.tracking.registry import current_champion

    version = current_champion(client, name)
    if version is None:
        raise TrackingError(
            f"model {name!r} has no @champion version in the registry at {client.tracking_uri}: "
            "run the pipeline first, or pass --model-name with a registered model"
        )
    return version, f"models:/{name}/{version}"


def check_features(table: pa.Table, expected: list[str], model: str) -> pd.DataFrame:
    """The table's feature columns, in signature order, as float64 — or a DataError naming the columns."""
    names = table.column_names
    duplicates = sorted({name for name in names if names.count(name) > 1})
    missing = [name for name in expected if name not in names]
    unexpected = [name for name in names if name not in expected]
    if duplicates or missing or unexpected:
        problems = [
            f"{label} {columns}"
            for label, columns in (("duplicated", duplicates), ("missing", missing), ("unexpected", unexpected))
            if columns
        ]
        raise DataError(
            f"columns do not match the input signature of {model}: {', '.join(problems)}. "
            f"The model takes exactly {expected}"
        )
    if table.num_rows == 0:
        raise DataError("data holds a header but no rows: nothing to score")
    text = [
        f"{name} ({table.schema.field(name).type})" for name in expected if not _numeric(table.schema.field(name).type)
    ]
    if text:
        raise DataError(f"feature columns must be numeric for {model}; non-numeric: {text}")
    frame = table.select(expected).to_pandas().astype("float64")
    finite = np.isfinite(frame.to_numpy())
    bad = {name: int((~finite[:, i]).sum()) for i, name in enumerate(expected) if not finite[:, i].all()}
    if bad:
        raise DataError(
            f"feature columns hold missing or infinite values (column: count) {bad}: clean or drop those rows"
        )
    return frame


def _numeric(kind: pa.DataType) -> bool:
    # An all-empty CSV column arrives as the null type: the finite-value check names it.
    checks = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean, pa.types.is_decimal, pa.types.is_null)
    return any(check(kind) for check in checks)


def predictions(features: pd.DataFrame, probability: np.ndarray, threshold: float) -> pd.DataFrame:
    """Input features plus ``probability`` and the 0/1 ``label`` at ``threshold``."""
    clash = [name for name in OUTPUT_COLUMNS if name in features.columns]
    if clash:
        raise DataError(f"feature columns {clash} clash with the prediction columns {list(OUTPUT_COLUMNS)}")
    probability = np.asarray(probability, dtype=np.float64).ravel()
    return features.assign(probability=probability, label=(probability >= threshold).astype(np.int8))


def write_parquet(frame: pd.DataFrame, output: str | Path) -> Path:
    """Write atomically: a reader never sees half a predictions file."""
    path = Path(output).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    frame.to_parquet(tmp, index=False)
    tmp.replace(path)
    return path


def score_file(
    settings: ScoreSettings, client: MlflowClient | None = None, tags: dict[str, str] | None = None
) -> ScoreResult:
    """Validate, predict, write and record one file with the current champion."""
    from wd_pipeline.tracking import registry, runs

    source = sources.locate(settings.data)
    raw = sources.read_bytes(source)
    sha256 = sources.fingerprint(raw)
    table = sources.parse_table(raw, source)
    del raw
    client = client or runs.get_client()
    # First: it turns an unreachable server or missing credentials into one clear message.
    experiment_id = runs.ensure_experiment(client, settings.experiment)
    version, model_uri = resolve_champion(client, settings.model_name)
    run_name = f"score {settings.model_name}@champion v{version}"
    run_id = client.create_run(experiment_id, run_name=run_name, tags=dict(tags or {})).info.run_id
    try:
        features = check_features(table, registry.input_columns(model_uri), f"{settings.model_name} v{version}")
        scored = predictions(features, registry.model_probability(model_uri, features), settings.threshold)
        path = write_parquet(scored, settings.output)
        result = ScoreResult(
            model_uri=model_uri,
            version=version,
            rows=len(scored),
            positive_rate=float(scored["label"].mean()),
            output=str(path),
            run_id=run_id,
            input_sha256=sha256,
        )
        _log_scoring(client, result, settings, source=source.uri, mean_probability=float(scored["probability"].mean()))
    except BaseException:
        runs.finish(client, run_id, "FAILED")
        raise
    runs.finish(client, run_id)
    return result


def _log_scoring(
    client: MlflowClient, result: ScoreResult, settings: ScoreSettings, *, source: str, mean_probability: float
) -> None:
    from mlflow.entities import Param

    from wd_pipeline.tracking import runs

    params = {
        "model_uri": result.model_uri,
        "model_name": settings.model_name,
        "model_version": result.version,
        "input": source,
        "input_sha256": result.input_sha256,
        "output": result.output,
        "rows": str(result.rows),
        "threshold": f"{settings.threshold:g}",
    }
    client.log_batch(result.run_id, params=[Param(key, value) for key, value in params.items()])
    runs.log_metrics(
        client,
        result.run_id,
        {"rows": result.rows, "positive_rate": result.positive_rate, "mean_probability": mean_probability},
    )
    tags = {"data.sha256": result.input_sha256, "data.source": source, "scored_model": result.model_uri}
    runs.set_tags(client, result.run_id, tags)
