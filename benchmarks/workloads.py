"""The measured workloads: each runs in its own process so peak RSS belongs to it alone."""

from __future__ import annotations

import json
import resource
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from wd_pipeline.config import make_config
from wd_pipeline.data import splits
from wd_pipeline.data.schema import ColumnSpec, Role, TableSchema
from wd_pipeline.ml import preprocessing
from wd_pipeline.ml.preprocessing import Encoded, Preprocessing


@dataclass(frozen=True)
class Workload:
    """Train and validation rows of a source as the pipeline trains on them: adapted and encoded once."""

    prep: Preprocessing
    train: tuple[Encoded, np.ndarray]
    validation: tuple[Encoded, np.ndarray]
    raw_train: dict[str, np.ndarray]
    raw_validation: dict[str, np.ndarray]


def load_arrays(source: str, label: str, positive_class: str | None, work: str) -> Workload:
    """Train and validation rows of ``source``, through the pipeline's own ingest and preprocessing."""
    config = make_config(data=source, label=label, positive_class=positive_class, work_dir=work, folds=1)
    folder = splits.prepare(config)
    train, validation = (splits.load_split(folder, name) for name in ("train", "validation"))
    return workload(train.features, train.label, validation.features, validation.label, splits.read_schema(folder))


def workload(
    train: pd.DataFrame, y_train: np.ndarray, validation: pd.DataFrame, y_val: np.ndarray, schema: TableSchema
) -> Workload:
    prep = preprocessing.adapt(train, schema, one_hot_max=make_config().one_hot_max)
    labels = [y.astype(np.float32).reshape(-1, 1) for y in (y_train, y_val)]
    return Workload(
        prep,
        (preprocessing.encode(prep, train), labels[0]),
        (preprocessing.encode(prep, validation), labels[1]),
        preprocessing.model_inputs(train, prep),
        preprocessing.model_inputs(validation, prep),
    )


def baseline(data: Workload, lams: list[float], epochs: int, batch_size: int) -> dict[str, Any]:
    """The reference as a user writes it: one ``model.fit`` per λ, in turn, Keras defaults."""
    from wd_pipeline.ml.network import build_model, predict_probability

    y_train, y_val = data.train[1], data.validation[1]
    accuracies, started = [], time.perf_counter()
    for lam in lams:
        model = build_model(data.prep, lam=lam, seed=0)
        model.fit(
            data.raw_train,
            y_train,
            batch_size=batch_size,
            epochs=epochs,
            validation_data=(data.raw_validation, y_val),
            verbose=0,
        )
        accuracies.append(_accuracy(predict_probability(model, data.raw_validation), y_val))
    return {"seconds": time.perf_counter() - started, "val_accuracy": accuracies}


def packed(data: Workload, lams: list[float], epochs: int, batch_size: int) -> dict[str, Any]:
    """The pipeline's grid training: all λ in one packed model."""
    from wd_pipeline.ml.packed import train_packed

    started = time.perf_counter()
    members = train_packed(
        data.prep,
        data.train,
        data.validation,
        lams=lams,
        mode="l2",
        hidden_units=[10, 10],
        learning_rate=1e-3,
        seed=0,
        batch_size=batch_size,
        epochs=epochs,
        patience=0,
    )
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "val_accuracy": [_accuracy(m.val_probability, data.validation[1]) for m in members],
    }


def _accuracy(probability: np.ndarray | None, y: np.ndarray) -> float:
    return float(np.mean((np.asarray(probability).ravel() >= 0.5) == (y.ravel() >= 0.5)))


def mixed_frame(
    rows: int, numeric: int = 20, categorical: int = 10, largest_vocabulary: int = 200, seed: int = 0
) -> tuple[pd.DataFrame, np.ndarray]:
    """A table like the ones users bring: numeric and string columns, 5 % gaps, label from both kinds.

    Category counts grow from 3 to ``largest_vocabulary`` across the columns; above the
    one-hot threshold a column is embedded.
    """
    rng = np.random.default_rng(seed)
    columns: dict[str, Any] = {}
    score = np.zeros(rows)
    for i in range(numeric):
        values = rng.normal(size=rows)
        score += values * (1.0 if i < 5 else 0.0)
        values[rng.random(rows) < 0.05] = np.nan
        columns[f"x{i}"] = values
    for i in range(categorical):
        size = int(np.geomspace(3, largest_vocabulary, categorical)[i])
        codes = rng.integers(0, size, rows)
        score += (codes % 3 == 0) * (0.8 if i < 3 else 0.0)
        values = np.array([f"c{i}_{code}" for code in range(size)], dtype=object)[codes]
        values[rng.random(rows) < 0.05] = None
        columns[f"cat{i}"] = values
    label = (score + rng.normal(size=rows) > np.median(score)).astype(np.int8)
    return pd.DataFrame(columns), label


def throughput(
    rows: int, lams: list[float], epochs: int, batch_size: int, largest_vocabulary: int = 200, repeats: int = 3
) -> dict[str, Any]:
    """Packed training on a mixed table's encoded rows against a numeric-only table of the same encoded width.

    Both sides train on an encoded matrix of the same width; what differs is the mixed
    table's embedding lookups. The two alternate ``repeats`` times and medians are compared.
    """
    frame, label = mixed_frame(rows, largest_vocabulary=largest_vocabulary)
    cut = int(rows * 0.8)
    mixed_schema = _schema(frame, "y")
    mixed = workload(frame[:cut], label[:cut], frame[cut:], label[cut:], mixed_schema)
    width = mixed.prep.dense_width + sum(column.embedding_dim for column in mixed.prep.embedded)
    rng = np.random.default_rng(1)
    plain = pd.DataFrame(rng.normal(size=(rows, width)), columns=[f"n{i}" for i in range(width)])
    numeric = workload(plain[:cut], label[:cut], plain[cut:], label[cut:], _schema(plain, "y"))
    timings: dict[str, list[float]] = {"mixed": [], "numeric": []}
    for _ in range(repeats):
        for name, data in (("mixed", mixed), ("numeric", numeric)):
            timings[name].append(packed(data, lams, epochs, batch_size)["seconds"])
    return {
        "rows": rows,
        "encoded_width": mixed.prep.dense_width,
        "first_layer_width": mixed.prep.first_layer_width,
        "numeric_width": numeric.prep.first_layer_width,
        "embedded_columns": len(mixed.prep.embedded),
        "mixed_seconds": float(np.median(timings["mixed"])),
        "numeric_seconds": float(np.median(timings["numeric"])),
        "all": timings,
    }


def _schema(frame: pd.DataFrame, label: str) -> TableSchema:
    return TableSchema(
        label,
        tuple(
            ColumnSpec(
                name,
                Role.NUMERIC if pd.api.types.is_numeric_dtype(frame[name]) else Role.CATEGORICAL,
                str(frame[name].dtype),
            )
            for name in frame.columns
        ),
    )


def ingest(source: str, label: str, work: str, repeats: int = 3) -> dict[str, Any]:
    """The pipeline's ingest (read, validate, split, profile, write) against two bare pyarrow round trips.

    Bare Arrow: ``pq.read_table`` + ``pq.write_table`` of the same file, default options.
    Bare with pandas, as issue #5 states it: ``pq.read_table`` + ``to_pandas`` + write of the
    same data (``Table.from_pandas`` + ``pq.write_table``). The three alternate ``repeats``
    times, each ingest into an empty folder (no cached splits), and the medians are
    compared, so no side alone enjoys a warm page cache or a quiet moment. CPU seconds (all
    threads of the process) are recorded too: on a machine others share, they move less
    than wall time.
    """

    bare, bare_arrow, ours = [], [], []
    arrow_cpu, ours_cpu = [], []
    for attempt in range(repeats):
        shutil.rmtree(work, ignore_errors=True)
        Path(work).mkdir(parents=True)
        started, cpu = time.perf_counter(), time.process_time()
        pq.write_table(pq.read_table(source), Path(work) / "bare-arrow.parquet")
        bare_arrow.append(time.perf_counter() - started)
        arrow_cpu.append(time.process_time() - cpu)
        started = time.perf_counter()
        frame = pq.read_table(source).to_pandas()
        pq.write_table(pa.Table.from_pandas(frame), Path(work) / "bare.parquet")
        bare.append(time.perf_counter() - started)
        del frame
        config = make_config(data=source, label=label, positive_class=None, work_dir=f"{work}/{attempt}", folds=1)
        started, cpu = time.perf_counter(), time.process_time()
        splits.prepare(config)
        ours.append(time.perf_counter() - started)
        ours_cpu.append(time.process_time() - cpu)
    return {
        "bare_seconds": float(np.median(bare)),
        "bare_arrow_seconds": float(np.median(bare_arrow)),
        "ingest_seconds": float(np.median(ours)),
        "bare_arrow_cpu_seconds": float(np.median(arrow_cpu)),
        "ingest_cpu_seconds": float(np.median(ours_cpu)),
        "bare_all": bare,
        "bare_arrow_all": bare_arrow,
        "ingest_all": ours,
        "repeats": repeats,
    }


def main() -> None:
    """``python -m benchmarks.workloads NAME JSON-ARGS``: print the workload's result as JSON."""
    name, raw = sys.argv[1], json.loads(sys.argv[2])
    if name == "ingest":
        result = ingest(raw["source"], raw["label"], raw["work"], raw.get("repeats", 3))
    elif name == "throughput":
        result = throughput(raw["rows"], raw["lams"], raw["epochs"], raw["batch_size"], raw["largest_vocabulary"])
    else:
        data = load_arrays(raw["source"], raw["label"], raw.get("positive_class"), raw["work"])
        result = {"baseline": baseline, "packed": packed}[name](data, raw["lams"], raw["epochs"], raw["batch_size"])
        result["train_rows"] = len(data.train[0])
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
