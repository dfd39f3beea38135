"""Batch scoring: the champion on a new file, checked against what it was trained on.

The file is validated against the registered model's input signature before anything is
predicted, so a renamed, missing or text column fails with a message naming it instead of
a shape error deep inside Keras. The alias is resolved to a version number once, and that
version scores the whole file: a champion moved mid-run cannot mix two models in one output.
Every scoring run is recorded in MLflow next to the pipeline runs that produced the model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

# ScoreSettings lives with the other settings models, where the CLI reads it without pandas.
from wd_pipeline.config import DEFAULT_THRESHOLD, ScoreSettings, make_settings
from wd_pipeline.data import sources
from wd_pipeline.data.drift import DriftReport
from wd_pipeline.data.drift import compare as compare_drift
from wd_pipeline.data.schema import ColumnSpec, Role, TableSchema
from wd_pipeline.data.validation import conform, role_of
from wd_pipeline.errors import DataError, TrackingError

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from wd_pipeline.ml.preprocessing import Preprocessing

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
    inputs: dict[str, dict[str, float]] = field(default_factory=dict)  # per column: missing / unseen shares
    metrics: dict[str, float] = field(default_factory=dict)  # on rows carrying the training label, if any
    drift: DriftReport | None = None  # against the model's training data; None when it has no reference


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


def model_columns(
    table: pa.Table, columns: list[ColumnSpec], model: str, na_values: list[str] | None = None
) -> pd.DataFrame:
    """The whole table as pandas, after checking that every column the model reads is there and usable.

    Other columns (an ID, a key, the label) are kept: they pass through to the output, so
    predictions can be joined back. Numeric columns must be numbers; categorical ones may
    be anything Arrow can write as text. The model's columns are conformed as ingest did for
    training (``na_values`` and the default missing tokens become gaps, numbers named
    categorical become their text), so a token such as ``?`` is a gap here too.
    """
    names = table.column_names
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise DataError(f"data has duplicate columns {duplicates}: give every column a unique name")
    missing = [spec.name for spec in columns if spec.name not in names]
    if missing:
        raise DataError(
            f"data lacks column(s) {missing} that {model} reads; it reads {[spec.name for spec in columns]}. "
            "Add them (an empty column means all values missing)"
        )
    if table.num_rows == 0:
        raise DataError("data holds a header but no rows: nothing to score")
    for spec in columns:
        kind = table.schema.field(spec.name).type
        if spec.role is Role.NUMERIC and role_of(kind) is not Role.NUMERIC:
            example = _first_text(table.column(spec.name))
            raise DataError(
                f"column {spec.name!r} holds {kind} (e.g. {example!r}) but {model} reads it as numeric: "
                "pass numbers, with empty cells for missing values"
            )
    infinite = {
        spec.name: count
        for spec in columns
        if spec.role is Role.NUMERIC and (count := _infinite(table.column(spec.name)))
    }
    if infinite:
        raise DataError(f"numeric columns hold infinite values (column: count) {infinite}: clean or drop those rows")
    frame = table.to_pandas()
    conformed = conform(table, TableSchema("", tuple(columns)), na_values)
    for spec in columns:
        values = conformed.column(spec.name)
        if spec.role is Role.NUMERIC:
            frame[spec.name] = values.to_numpy().astype("float64")
        else:
            frame[spec.name] = pd.Series(values.to_numpy(zero_copy_only=False), dtype=object, index=frame.index)
    return frame


def _infinite(column: pa.ChunkedArray) -> int:
    if not pa.types.is_floating(column.type):
        return 0
    return int(pc.sum(pc.is_inf(column)).as_py() or 0)


def _first_text(column: pa.ChunkedArray) -> str:
    values = pc.drop_null(column).slice(0, 1).to_pylist()
    return str(values[0]) if values else ""


def input_report(frame: pd.DataFrame, prep: Preprocessing) -> dict[str, dict[str, float]]:
    """Per input column, the share of missing values and (categorical) of values unseen in training."""
    report: dict[str, dict[str, float]] = {}
    rows = max(len(frame), 1)
    for column in prep.numeric:
        report[column.name] = {"missing": float(frame[column.name].isna().sum()) / rows}
    for column in prep.categorical:
        values = frame[column.name]
        present = values.notna()
        unseen = present & ~values.isin(set(column.vocabulary))
        report[column.name] = {"missing": float((~present).sum()) / rows, "unseen": float(unseen.sum()) / rows}
    return report


def predictions(frame: pd.DataFrame, probability: np.ndarray, threshold: float) -> pd.DataFrame:
    """Input rows, every column kept, plus ``probability`` and the 0/1 ``label`` at ``threshold``."""
    clash = [name for name in OUTPUT_COLUMNS if name in frame.columns]
    if clash:
        raise DataError(f"input columns {clash} clash with the prediction columns {list(OUTPUT_COLUMNS)}: rename them")
    probability = np.asarray(probability, dtype=np.float64).ravel()
    return frame.assign(probability=probability, label=(probability >= threshold).astype(np.int8))


def labelled_metrics(
    table: pa.Table, probability: np.ndarray, label: str | None, positive_class: str | None, threshold: float
) -> dict[str, float]:
    """Metrics on the rows whose training label is present: an evaluation on new labelled data.

    Empty when the label column is absent, entirely missing, or holds a single class.
    """
    from wd_pipeline.data.validation import encode_label
    from wd_pipeline.ml.metrics import classification_metrics

    if not label or label not in table.column_names:
        return {}
    column = table.column(label)
    known = pc.is_valid(column)
    if not pc.any(known).as_py():
        return {}
    y = encode_label(pc.filter(column, known), label, positive_class)
    if len(np.unique(y)) < 2:
        return {}
    mask = known.to_numpy(zero_copy_only=False)
    return classification_metrics(y, np.asarray(probability)[mask], threshold)


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
    raw = sources.read_source(source)
    sha256 = raw.fingerprint().sha256
    client = client or runs.get_client()
    # First: it turns an unreachable server or missing credentials into one clear message.
    experiment_id = runs.ensure_experiment(client, settings.experiment)
    version, model_uri = resolve_champion(client, settings.model_name)
    config = registry.model_config(model_uri)
    na_values = config.get("na_values") or None
    threshold = settings.threshold or float(config.get("threshold", DEFAULT_THRESHOLD))
    table = sources.parse_source(raw, na_values).table
    del raw
    run_name = f"score {settings.model_name}@champion v{version}"
    run_id = client.create_run(experiment_id, run_name=run_name, tags=dict(tags or {})).info.run_id
    try:
        model = f"{settings.model_name} v{version}"
        frame = model_columns(table, registry.input_schema(model_uri), model, na_values)
        probability = registry.model_probability(model_uri, frame)
        scored = predictions(frame, probability, threshold)
        path = write_parquet(scored, settings.output)
        inputs = input_report(frame, registry.model_preprocessing(model_uri))
        evaluation = labelled_metrics(table, probability, config.get("label"), config.get("positive_class"), threshold)
        moved = drift_against_training(settings, model_uri, model, frame, table, config)
        result = ScoreResult(
            model_uri=model_uri,
            version=version,
            rows=len(scored),
            positive_rate=float(scored["label"].mean()),
            output=str(path),
            run_id=run_id,
            input_sha256=sha256,
            inputs=inputs,
            metrics=evaluation,
            drift=moved,
        )
        _log_scoring(
            client,
            result,
            settings,
            source=source.uri,
            threshold=threshold,
            mean_probability=float(scored["probability"].mean()),
        )
    except BaseException:
        runs.finish(client, run_id, "FAILED")
        raise
    runs.finish(client, run_id)
    return result


def _log_scoring(
    client: MlflowClient,
    result: ScoreResult,
    settings: ScoreSettings,
    *,
    source: str,
    threshold: float,
    mean_probability: float,
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
        "threshold": f"{threshold:g}",
    }
    client.log_batch(result.run_id, params=[Param(key, value) for key, value in params.items()])
    shares = {
        f"input.{kind}.{runs.metric_key(name)}": share
        for name, column in result.inputs.items()
        for kind, share in column.items()
    }
    labelled = {f"labelled_{name}": value for name, value in result.metrics.items()}
    runs.log_metrics(
        client,
        result.run_id,
        {
            "rows": result.rows,
            "positive_rate": result.positive_rate,
            "mean_probability": mean_probability,
            **shares,
            **labelled,
        },
    )
    tags = {"data.sha256": result.input_sha256, "data.source": source, "scored_model": result.model_uri}
    runs.set_tags(client, result.run_id, tags)
    if result.drift is not None:
        from wd_pipeline.tracking.drift_record import log_drift

        log_drift(client, result.run_id, result.drift)


def drift_against_training(
    settings: ScoreSettings,
    model_uri: str,
    model: str,
    frame: pd.DataFrame,
    table: pa.Table,
    config: dict[str, Any],
) -> DriftReport | None:
    """The model's input columns (as conformed for scoring) and the label, when the file has it, against the
    training split's profile logged with the model; None for a model logged without one."""
    from wd_pipeline.tracking.drift_record import model_reference
    from wd_pipeline.tracking.registry import input_columns

    reference = model_reference(model_uri)
    if reference is None:
        return None
    return compare_drift(
        reference,
        pa.Table.from_pandas(frame[input_columns(model_uri)], preserve_index=False),
        warn=settings.drift_warn,
        alert=settings.drift_alert,
        reference_name=model,
        label=config.get("label"),
        current_label=known_labels(table, config.get("label"), config.get("positive_class")),
    )


def known_labels(table: pa.Table, label: str | None, positive_class: str | None) -> np.ndarray | None:
    """The 0/1 training label of the rows that carry one; None when the file has no such column."""
    from wd_pipeline.data.validation import encode_label

    if not label or label not in table.column_names:
        return None
    column = table.column(label)
    known = pc.is_valid(column)
    if not pc.any(known).as_py():
        return None
    return encode_label(pc.filter(column, known), label, positive_class)
