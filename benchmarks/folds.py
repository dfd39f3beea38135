"""``python -m benchmarks.folds``: every (fold, λ) of cross-validation as one packed model, against the paths before it.

The work: 16 λ × 5 folds on the synthetic 40,000 × 30 table, 20 epochs, batch 32, no early
stopping, each fold adapted and encoded on its own training rows as the pipeline does. Three
ways to train it, each in its own process:

- ``folds``: the pipeline's path, all 80 members in one packed model (``train_folds_packed``);
- ``per_fold``: one packed model per fold, one fold after the other (the path before fold
  packing; the pipeline ran two such folds at a time on its two threads, see
  ``per_fold_threads``);
- ``plain``: one ``model.fit`` per (fold, λ), Keras defaults, measured on a sample of fits
  and scaled to all 80, as ``python -m benchmarks`` does for its baseline.

Validation accuracy of the fold-packed members is compared with the per-fold packed ones
(the same training) and with the sampled plain fits (Keras' own shuffling: seed noise), within
the benchmark's tolerance for the synthetic data. With ``--pipeline-1m`` the 1M-row pipeline
run of ``python -m benchmarks`` (default grid, 5 folds) is repeated at 20 epochs and its time
outside training reported, the background Prefect API already running as for every run but a
machine's first. Figures go to ``results.json`` under ``folds`` (other keys are
kept); the table is printed for ``RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from benchmarks.__main__ import (
    CACHE,
    LARGE_PIPELINE,
    ROOT,
    TOLERANCE,
    grid_of,
    machine,
    pipeline_breakdown,
    result_of,
    synthetic,
)

ROWS, FOLDS, GRID, EPOCHS, BATCH, SEED = 40_000, 5, 16, 20, 32, 42


@dataclass(frozen=True)
class FoldRows:
    """One fold as the pipeline trains it: its adapted preprocessing, encoded rows and seed."""

    pack: Any  # packed.FoldPack without members
    raw_train: dict[str, np.ndarray]
    raw_validation: dict[str, np.ndarray]


def load_folds(rows: int, folds: int) -> list[FoldRows]:
    """The synthetic table ingested, cut into folds and each fold adapted and encoded, through the pipeline's code."""
    from wd_pipeline.config import make_config
    from wd_pipeline.data import splits
    from wd_pipeline.ml import preprocessing, training
    from wd_pipeline.ml.packed import FoldPack

    config = make_config(
        data=str(synthetic(rows)), label="y", positive_class=None, work_dir=str(CACHE / "folds"), folds=folds
    )
    folder = splits.prepare(config)
    schema = splits.read_schema(folder)
    parts = training.folds_data(folder, folds, list(range(folds)), config.seed)
    loaded = []
    for fold in range(folds):
        train, validation = parts[fold]
        prep = preprocessing.adapt(train.features, schema, one_hot_max=config.one_hot_max)
        encoded = [
            (preprocessing.encode(prep, part.features), part.label.astype(np.float32).reshape(-1, 1))
            for part in (train, validation)
        ]
        pack = FoldPack(prep, encoded[0], encoded[1], seed=config.seed + fold * 101, lams=[])
        loaded.append(
            FoldRows(
                pack,
                preprocessing.model_inputs(train.features, prep),
                preprocessing.model_inputs(validation.features, prep),
            )
        )
    return loaded


def _train(packs: list[Any], epochs: int) -> list[list[Any]]:
    from wd_pipeline.ml.packed import train_folds_packed

    return train_folds_packed(
        packs, mode="l2", hidden_units=[10, 10], learning_rate=1e-3, batch_size=BATCH, epochs=epochs, patience=0
    )


def _accuracy(probability: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((np.asarray(probability).ravel() >= 0.5) == (y.ravel() >= 0.5)))


def _with_lams(fold: FoldRows, lams: list[float]) -> Any:
    from dataclasses import replace

    return replace(fold.pack, lams=lams)


def run_folds(folds: list[FoldRows], lams: list[float], epochs: int) -> dict[str, Any]:
    started, cpu = time.perf_counter(), time.process_time()
    fits = _train([_with_lams(fold, lams) for fold in folds], epochs)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    accuracy = [
        [_accuracy(m.val_probability, f.pack.validation[1]) for m in ms] for f, ms in zip(folds, fits, strict=True)
    ]
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "val_accuracy": accuracy}


def run_per_fold(folds: list[FoldRows], lams: list[float], epochs: int, threads: int = 1) -> dict[str, Any]:
    started, cpu = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(threads) as pool:
        fits = list(pool.map(lambda fold: _train([_with_lams(fold, lams)], epochs)[0], folds))
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu
    accuracy = [
        [_accuracy(m.val_probability, f.pack.validation[1]) for m in ms] for f, ms in zip(folds, fits, strict=True)
    ]
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "val_accuracy": accuracy}


def run_plain(folds: list[FoldRows], lams: list[float], epochs: int, sample: list[list[int]]) -> dict[str, Any]:
    """``model.fit`` for the sampled (fold, λ index) pairs only; seconds per fit."""
    from wd_pipeline.ml.network import build_model, predict_probability

    accuracy, started, cpu = [], time.perf_counter(), time.process_time()
    for fold_index, lam_index in sample:
        fold = folds[fold_index]
        model = build_model(fold.pack.prep, lam=lams[lam_index], seed=fold.pack.seed)
        y_train, y_val = fold.pack.train[1], fold.pack.validation[1]
        model.fit(
            fold.raw_train,
            y_train,
            batch_size=BATCH,
            epochs=epochs,
            validation_data=(fold.raw_validation, y_val),
            verbose=0,
        )
        accuracy.append(_accuracy(predict_probability(model, fold.raw_validation), y_val))
    return {
        "seconds_per_fit": (time.perf_counter() - started) / len(sample),
        "cpu_seconds_per_fit": (time.process_time() - cpu) / len(sample),
        "val_accuracy": accuracy,
    }


def workload(name: str, raw: dict[str, Any]) -> dict[str, Any]:
    folds = load_folds(raw["rows"], raw["folds"])
    lams, epochs = raw["lams"], raw["epochs"]
    if name == "folds":
        result = run_folds(folds, lams, epochs)
    elif name == "per_fold":
        result = run_per_fold(folds, lams, epochs, raw.get("threads", 1))
    else:
        result = run_plain(folds, lams, epochs, raw["sample"])
    result["train_rows"] = [len(fold.pack.train[0]) for fold in folds]
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def _in_process(name: str, **args: Any) -> dict[str, Any]:
    result = result_of(
        ["benchmarks.folds", "--workload", name, json.dumps(args)], f"workload {name}", quiet_tensorflow=True
    )
    print(f"{name}: {json.dumps({k: v for k, v in result.items() if k != 'val_accuracy'})}", flush=True)
    return result


def compare(rows: int, folds: int, grid: int, epochs: int, plain_fits: int, threads: bool) -> dict[str, Any]:
    lams = grid_of(grid)
    common = {"rows": rows, "folds": folds, "lams": lams, "epochs": epochs}
    load = [os.getloadavg()]
    packed = _in_process("folds", **common)
    per_fold = _in_process("per_fold", **common)
    per_fold_threads = _in_process("per_fold", **common, threads=2) if threads else None
    sample = [[i % folds, (i * 7) % grid] for i in range(plain_fits)]
    plain = _in_process("plain", **common, sample=sample)
    load.append(os.getloadavg())
    plain_seconds = plain["seconds_per_fit"] * folds * grid
    same_training = max(
        abs(a - b)
        for fa, fb in zip(packed["val_accuracy"], per_fold["val_accuracy"], strict=True)
        for a, b in zip(fa, fb, strict=True)
    )
    seed_noise = max(
        abs(packed["val_accuracy"][f][i] - acc) for (f, i), acc in zip(sample, plain["val_accuracy"], strict=True)
    )
    return {
        "rows": rows,
        "train_rows": packed["train_rows"],
        "folds": folds,
        "grid": grid,
        "epochs": epochs,
        "fold_packed_seconds": packed["seconds"],
        "per_fold_seconds": per_fold["seconds"],
        "per_fold_two_threads_seconds": per_fold_threads["seconds"] if per_fold_threads else None,
        "plain_seconds": plain_seconds,
        "plain_extrapolated_from": plain_fits,
        "speedup_over_per_fold": per_fold["seconds"] / packed["seconds"],
        "speedup_over_per_fold_two_threads": per_fold_threads["seconds"] / packed["seconds"]
        if per_fold_threads
        else None,
        "speedup_over_plain": plain_seconds / packed["seconds"],
        "cpu_seconds": {
            "fold_packed": packed["cpu_seconds"],
            "per_fold": per_fold["cpu_seconds"],
            "per_fold_two_threads": per_fold_threads["cpu_seconds"] if per_fold_threads else None,
            "plain": plain["cpu_seconds_per_fit"] * folds * grid,
        },
        "peak_rss_mib": {"fold_packed": packed["peak_rss_mib"], "per_fold": per_fold["peak_rss_mib"]},
        "max_accuracy_gap_per_fold": same_training,
        "max_accuracy_gap_plain": seed_noise,
        "accuracy_within_tolerance": max(same_training, seed_noise) <= TOLERANCE["synthetic"],
        "load_average": load,
    }


def markdown(result: dict[str, Any]) -> str:
    r = result
    cpu = r["cpu_seconds"]
    return "\n".join(
        [
            "| path | wall s | fold-packed speed-up (wall) | CPU s | speed-up (CPU) | peak RSS MiB |",
            "|---|---|---|---|---|---|",
            f"| all {r['folds'] * r['grid']} (fold, λ) in one packed model | {r['fold_packed_seconds']:.1f} | – | "
            f"{cpu['fold_packed']:.1f} | – | {r['peak_rss_mib']['fold_packed']:.0f} |",
            f"| one packed model per fold, in turn | {r['per_fold_seconds']:.1f} | ×{r['speedup_over_per_fold']:.1f} | "
            f"{cpu['per_fold']:.1f} | ×{cpu['per_fold'] / cpu['fold_packed']:.1f} | {r['peak_rss_mib']['per_fold']:.0f} |",
            *(
                [
                    f"| one packed model per fold, two threads | {r['per_fold_two_threads_seconds']:.1f} | "
                    f"×{r['speedup_over_per_fold_two_threads']:.1f} | {cpu['per_fold_two_threads']:.1f} | "
                    f"×{cpu['per_fold_two_threads'] / cpu['fold_packed']:.1f} | |"
                ]
                if r["per_fold_two_threads_seconds"]
                else []
            ),
            f"| one `fit` per (fold, λ) (×{r['folds'] * r['grid']} from {r['plain_extrapolated_from']}) | "
            f"{r['plain_seconds']:.1f} | ×{r['speedup_over_plain']:.1f} | {cpu['plain']:.1f} | "
            f"×{cpu['plain'] / cpu['fold_packed']:.1f} | |",
            "",
            f"Max Δ val accuracy: fold-packed vs per-fold packed {r['max_accuracy_gap_per_fold']:.4f}, vs the plain fits "
            f"{r['max_accuracy_gap_plain']:.4f} (tolerance {TOLERANCE['synthetic']}): "
            f"{'within' if r['accuracy_within_tolerance'] else 'OUTSIDE'}; load average before/after {r['load_average']}.",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.folds", description=__doc__)
    parser.add_argument("--workload", nargs=2, metavar=("NAME", "JSON"), help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--plain-fits", type=int, default=1, help="sampled one-fit-per-(fold, λ) fits")
    parser.add_argument("--pipeline-1m", action="store_true", help="also the 1M-row pipeline run at 20 epochs")
    parser.add_argument("--threads", action="store_true", help="also the per-fold path on two threads")
    parser.add_argument("--skip-grid", action="store_true", help="only the 1M-row pipeline run")
    args = parser.parse_args()
    if args.workload:
        name, raw = args.workload
        print("RESULT " + json.dumps(workload(name, json.loads(raw))))
        return
    saved = ROOT / "benchmarks" / "results.json"
    report = json.loads(saved.read_text()) if saved.exists() else {}
    folds_report = report.get("folds", {})
    folds_report["machine"] = machine()
    if not args.skip_grid:
        folds_report["grid"] = compare(args.rows, FOLDS, GRID, args.epochs, args.plain_fits, args.threads)
        print(markdown(folds_report["grid"]), flush=True)
    if args.pipeline_1m:
        arguments = [*LARGE_PIPELINE[: LARGE_PIPELINE.index("--epochs")], "--epochs", "20", "--patience", "0"]
        run = pipeline_breakdown("synthetic-1000000-20-epochs", arguments, synthetic(1_000_000), warm_api=True)
        folds_report["pipeline_1m_20_epochs"] = run
        print(json.dumps(run, indent=2), flush=True)
    report["folds"] = folds_report
    saved.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
