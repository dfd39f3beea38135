"""Batch scoring: the champion on a new file, checked against what it was trained on.

The file is validated against the registered model's input signature before anything is
predicted, so a renamed, missing or text column fails with a message naming it instead of
a shape error deep inside Keras. The alias is resolved to a version number once, and that
version scores the whole file: a champion moved mid-run cannot mix two models in one output.
Every scoring run is recorded in MLflow next to the pipeline runs that produced the model.

A file is scored :data:`BATCH_ROWS` rows at a time (:mod:`wd_pipeline.data.batches`): each
batch is checked, predicted and written as one Parquet row group, while the missing and
unseen shares, the drift buckets and the positive rate are counted as they go, so memory
holds one batch plus the label and probability of each labelled row (for the labelled
metrics), whatever the file's size. The sha256 is read in a stream of its own, so the
fingerprint covers the file as it was when scoring began.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

# ScoreSettings lives with the other settings models, where the CLI reads it without pandas.
from wd_pipeline.config import DEFAULT_THRESHOLD, ScoreSettings, make_settings
from wd_pipeline.data import sources
from wd_pipeline.data.batches import open_batches
from wd_pipeline.data.drift import DriftCounts, DriftReport
from wd_pipeline.data.profile import SplitProfile
from wd_pipeline.data.schema import ColumnSpec, Role, TableSchema
from wd_pipeline.data.validation import conform, role_of
from wd_pipeline.errors import DataError, TrackingError

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from wd_pipeline.ml.preprocessing import Preprocessing

OUTPUT_COLUMNS = ("probability", "label")
BATCH_ROWS = 100_000  # rows read, predicted and written at a time: one row group of the output


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
    categorical become their text), so a token such as ``?`` is a gap here too. All rows at
    once: :func:`score_file` does the same a batch at a time.
    """
    check_columns(table, columns, model)
    check_finite(table, columns)
    frame = table.to_pandas()
    model_frame = as_model_frame(conformed_columns(table, columns, na_values), columns)
    for spec in columns:
        frame[spec.name] = model_frame[spec.name].set_axis(frame.index)
    return frame


def check_columns(table: pa.Table, columns: list[ColumnSpec], model: str) -> None:
    """Names unique, every column the model reads present with a usable type, and at least one row.

    ``table`` is the first batch of a file (its schema is the file's).
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


def check_finite(table: pa.Table, columns: list[ColumnSpec]) -> None:
    """No infinite value in the model's numeric columns (counted in ``table``: the batch at hand)."""
    infinite = {
        spec.name: count
        for spec in columns
        if spec.role is Role.NUMERIC and (count := _infinite(table.column(spec.name)))
    }
    if infinite:
        raise DataError(f"numeric columns hold infinite values (column: count) {infinite}: clean or drop those rows")


def conformed_columns(table: pa.Table, columns: list[ColumnSpec], na_values: list[str] | None) -> pa.Table:
    """The model's columns, in its order, as it reads them: numbers as float64, categories as text."""
    conformed = conform(table, TableSchema("", tuple(columns)), na_values)
    for index, spec in enumerate(columns):
        if spec.role is Role.NUMERIC and conformed.schema.field(index).type != pa.float64():
            conformed = conformed.set_column(index, spec.name, conformed.column(index).cast(pa.float64()))
    return conformed


def as_model_frame(conformed: pa.Table, columns: list[ColumnSpec]) -> pd.DataFrame:
    """Conformed columns as the served model takes them: floats with NaN for gaps, categories as ``str`` or None."""
    frame = pd.DataFrame(index=pd.RangeIndex(conformed.num_rows))
    for spec in columns:
        values = conformed.column(spec.name)
        if spec.role is Role.NUMERIC:
            frame[spec.name] = values.to_numpy()
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
    counts = InputCounts(prep)
    counts.add(frame)
    return counts.shares()


class InputCounts:
    """Missing and unseen values per input column, counted batch by batch (:func:`input_report` over all rows)."""

    def __init__(self, prep: Preprocessing) -> None:
        self.prep = prep
        self.rows = 0
        self.missing = {column.name: 0 for column in (*prep.numeric, *prep.categorical)}
        self.unseen = {column.name: 0 for column in prep.categorical}
        self.vocabularies = {column.name: set(column.vocabulary) for column in prep.categorical}

    def add(self, frame: pd.DataFrame) -> None:
        self.rows += len(frame)
        for column in self.prep.numeric:
            self.missing[column.name] += int(frame[column.name].isna().sum())
        for column in self.prep.categorical:
            values = frame[column.name]
            present = values.notna()
            self.missing[column.name] += int((~present).sum())
            self.unseen[column.name] += int((present & ~values.isin(self.vocabularies[column.name])).sum())

    def shares(self) -> dict[str, dict[str, float]]:
        rows = max(self.rows, 1)
        report = {column.name: {"missing": self.missing[column.name] / rows} for column in self.prep.numeric}
        for column in self.prep.categorical:
            name = column.name
            report[name] = {"missing": self.missing[name] / rows, "unseen": self.unseen[name] / rows}
        return report


def predictions(frame: pd.DataFrame, probability: np.ndarray, threshold: float) -> pd.DataFrame:
    """Input rows, every column kept, plus ``probability`` and the 0/1 ``label`` at ``threshold``."""
    check_clash(list(frame.columns))
    probability = np.asarray(probability, dtype=np.float64).ravel()
    return frame.assign(probability=probability, label=(probability >= threshold).astype(np.int8))


class LabelledRows:
    """The label of every row that has one and the probability scored for it, gathered batch by batch: the
    metrics need them all at once (a ranking for ROC AUC), but not the rest of the row."""

    def __init__(self) -> None:
        self.values: list[pa.ChunkedArray] = []
        self.probability: list[np.ndarray] = []

    def add(self, column: pa.ChunkedArray, probability: np.ndarray) -> None:
        known = pc.is_valid(column)
        self.values.append(pc.filter(column, known))
        self.probability.append(probability[known.to_numpy(zero_copy_only=False)])

    def encoded(self, label: str, positive_class: str | None) -> np.ndarray | None:
        """The 0/1 labels of the rows that have one; None when no row has one."""
        from wd_pipeline.data.validation import encode_label

        chunks = [chunk for values in self.values for chunk in values.chunks if len(chunk)]
        if not chunks:
            return None
        return encode_label(pa.chunked_array(chunks), label, positive_class)

    def metrics(self, label: str, positive_class: str | None, threshold: float) -> dict[str, float]:
        """The pipeline's metrics on every labelled row, by one sort (scikit-learn's calls take several times
        the time and memory on millions of rows; the values agree, ``tests/ml/test_member_metrics.py``)."""
        from wd_pipeline.ml.member_metrics import members_metrics

        y = self.encoded(label, positive_class)
        if y is None or len(np.unique(y)) < 2:
            return {}
        return members_metrics(y, np.concatenate(self.probability)[None, :], threshold)[0]


def write_batches(tables: Iterator[pa.Table], output: str | Path) -> Path:
    """Each table as one row group of one Parquet file, written atomically: a reader never sees half a
    predictions file, and a failure mid-file leaves none."""
    path = Path(output).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    writer: pq.ParquetWriter | None = None
    try:
        for table in tables:
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table.cast(writer.schema), row_group_size=max(table.num_rows, 1))
        if writer is None:
            raise DataError("data holds a header but no rows: nothing to score")
        writer.close()
    except BaseException:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)
    return path


@dataclass
class BatchScorer:
    """What scoring one file keeps from batch to batch: the model, its columns, and the running counts."""

    model: str  # e.g. "adult v3", for messages
    columns: list[ColumnSpec]
    na_values: list[str] | None
    threshold: float
    probability: Callable[[pd.DataFrame], np.ndarray]
    inputs: InputCounts
    reference: SplitProfile | None = None  # the training split's profile logged with the model, if any
    label: str | None = None
    drift: DriftCounts | None = None
    labelled: LabelledRows = field(default_factory=LabelledRows)
    rows: int = 0
    positives: int = 0
    probability_sum: float = 0.0

    def checked(self, batches: Iterator[pa.Table], schema: pa.Schema) -> Iterator[pa.Table]:
        """The non-empty batches, the file's columns checked on the first, each batch's numbers checked."""
        first = True
        for batch in batches:
            if not batch.num_rows:
                continue
            if first:
                check_columns(batch, self.columns, self.model)
                check_clash(batch.column_names)
                first = False
            check_finite(batch, self.columns)
            yield batch
        if first:
            check_columns(schema.empty_table(), self.columns, self.model)

    def score(self, batch: pa.Table) -> pa.Table:
        """One batch: predicted, counted, and returned as its output rows (every column, then the predictions)."""
        conformed = conformed_columns(batch, self.columns, self.na_values)
        frame = as_model_frame(conformed, self.columns)
        probability = np.asarray(self.probability(frame), dtype=np.float64).ravel()
        decided = probability >= self.threshold
        self.rows += batch.num_rows
        self.positives += int(decided.sum())
        self.probability_sum += float(probability.sum())
        self.inputs.add(frame)
        if self.reference is not None:
            self.drift = self.drift or DriftCounts(self.reference, conformed.schema)
            self.drift.add(conformed)
        if self.label and self.label in batch.column_names:
            self.labelled.add(batch.column(self.label), probability)
        return output_rows(batch, conformed, probability, decided)


def check_clash(names: list[str]) -> None:
    clash = [name for name in OUTPUT_COLUMNS if name in names]
    if clash:
        raise DataError(f"input columns {clash} clash with the prediction columns {list(OUTPUT_COLUMNS)}: rename them")


def output_rows(batch: pa.Table, conformed: pa.Table, probability: np.ndarray, decided: np.ndarray) -> pa.Table:
    """The batch's columns in their order (the model's as conformed, the others as read), ``probability`` and the
    0/1 ``label``."""
    columns = [
        conformed.column(name) if name in conformed.column_names else batch.column(name) for name in batch.column_names
    ]
    columns += [pa.array(probability, type=pa.float64()), pa.array(decided.astype(np.int8), type=pa.int8())]
    # The file's own metadata (pandas' among it) goes along, so its columns read back as they were written.
    return pa.table(columns, names=[*batch.column_names, *OUTPUT_COLUMNS]).replace_schema_metadata(
        batch.schema.metadata
    )


def score_file(
    settings: ScoreSettings,
    client: MlflowClient | None = None,
    tags: dict[str, str] | None = None,
    *,
    batch_rows: int = BATCH_ROWS,
) -> ScoreResult:
    """Validate, predict, write and record one file with the current champion, ``batch_rows`` rows at a time."""
    from wd_pipeline.tracking import registry, runs
    from wd_pipeline.tracking.drift_record import model_reference

    source = sources.locate(settings.data)
    client = client or runs.get_client()
    # First: it turns an unreachable server or missing credentials into one clear message.
    experiment_id = runs.ensure_experiment(client, settings.experiment)
    version, model_uri = resolve_champion(client, settings.model_name)
    config = registry.model_config(model_uri)
    na_values = config.get("na_values") or None
    threshold = settings.threshold or float(config.get("threshold", DEFAULT_THRESHOLD))
    data = open_batches(source, na_values, batch_rows)
    run_name = f"score {settings.model_name}@champion v{version}"
    run_id = client.create_run(experiment_id, run_name=run_name, tags=dict(tags or {})).info.run_id
    try:
        model = f"{settings.model_name} v{version}"
        scorer = BatchScorer(
            model=model,
            columns=registry.input_schema(model_uri),
            na_values=na_values,
            threshold=threshold,
            probability=registry.probability_function(model_uri),
            inputs=InputCounts(registry.model_preprocessing(model_uri)),
            reference=model_reference(model_uri),
            label=config.get("label"),
        )
        path = write_batches(map(scorer.score, scorer.checked(data.batches, data.schema)), settings.output)
        label, positive_class = config.get("label"), config.get("positive_class")
        evaluation = scorer.labelled.metrics(label, positive_class, threshold) if label else {}
        moved = None
        if scorer.drift is not None:
            if label in data.schema.names:
                known = scorer.labelled.encoded(label, positive_class)
                scorer.drift.count_labels(known if known is not None else np.zeros(0, dtype=np.int8))
            moved = scorer.drift.report(
                warn=settings.drift_warn, alert=settings.drift_alert, reference_name=model, label=label
            )
        result = ScoreResult(
            model_uri=model_uri,
            version=version,
            rows=scorer.rows,
            positive_rate=scorer.positives / scorer.rows,
            output=str(path),
            run_id=run_id,
            input_sha256=data.sha256,
            inputs=scorer.inputs.shares(),
            metrics=evaluation,
            drift=moved,
        )
        _log_scoring(
            client,
            result,
            settings,
            source=source.uri,
            threshold=threshold,
            mean_probability=scorer.probability_sum / scorer.rows,
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
