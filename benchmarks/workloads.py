"""The measured workloads: each runs in its own process so peak RSS belongs to it alone."""

from __future__ import annotations

import json
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from wd_pipeline.config import make_config
from wd_pipeline.data import splits


def load_arrays(source: str, label: str, positive_class: str | None, work: str) -> tuple[np.ndarray, ...]:
    """Train and validation arrays of ``source``, through the pipeline's own ingest."""
    config = make_config(data=source, label=label, positive_class=positive_class, work_dir=work, folds=1)
    folder = splits.prepare(config)
    parts = [splits.load_split(folder, name) for name in ("train", "validation")]
    return tuple(
        array
        for part in parts
        for array in (part.features.to_numpy(np.float32), part.label.astype(np.float32).reshape(-1, 1))
    )


def baseline(arrays: tuple[np.ndarray, ...], lams: list[float], epochs: int, batch_size: int) -> dict[str, Any]:
    """The reference as a user writes it: one ``model.fit`` per λ, in turn, Keras defaults."""
    from wd_pipeline.ml.network import build_model

    x_train, y_train, x_val, y_val = arrays
    accuracies, started = [], time.perf_counter()
    for lam in lams:
        model = build_model(x_train, lam=lam, seed=0)
        model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, validation_data=(x_val, y_val), verbose=0)
        accuracies.append(_accuracy(model, x_val, y_val))
    return {"seconds": time.perf_counter() - started, "val_accuracy": accuracies}


def packed(arrays: tuple[np.ndarray, ...], lams: list[float], epochs: int, batch_size: int) -> dict[str, Any]:
    """The pipeline's grid training: all λ in one packed model."""
    from wd_pipeline.ml.packed import train_packed

    x_train, y_train, x_val, y_val = arrays
    started = time.perf_counter()
    members = train_packed(
        x_train,
        y_train,
        (x_val, y_val),
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
    return {"seconds": seconds, "val_accuracy": [_accuracy(m.model, x_val, y_val) for m in members]}


def _accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> float:
    probability = np.asarray(model.predict(x, batch_size=65536, verbose=0)).ravel()
    return float(np.mean((probability >= 0.5) == (y.ravel() >= 0.5)))


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
    else:
        arrays = load_arrays(raw["source"], raw["label"], raw.get("positive_class"), raw["work"])
        result = {"baseline": baseline, "packed": packed}[name](arrays, raw["lams"], raw["epochs"], raw["batch_size"])
        result["train_rows"] = len(arrays[0])
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
