"""``python -m benchmarks.xla``: when XLA compilation of the packed epoch pays for itself.

The work: the bundled data's default grid (12 λ) over 5 folds, each fold adapted and encoded
on its own 60 % of the rows (validated on another 20 %), batch 32, no early stopping; the
table repeated ``--repeat`` times to make it longer. Each configuration is trained twice, in
fresh processes: the epoch function XLA-compiled, and as a plain graph. CPU seconds include
tracing, compilation and the training itself, not the imports. The threshold
``XLA_MIN_STEPS`` in ``wd_pipeline/ml/packed.py`` sits between the cases where the plain
graph wins and those where XLA does.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np
import pandas as pd

from benchmarks.__main__ import ROOT
from wd_pipeline.config import DEFAULT_GRID

BATCH = 32
FOLDS = 5


def train_once(repeat: int, epochs: int, xla: bool) -> dict[str, float]:
    """Train the packed folds in this process; its CPU seconds and the first member's last validation loss."""
    from wd_pipeline.data.schema import ColumnSpec, Role, TableSchema
    from wd_pipeline.ml import packed, preprocessing

    frame = pd.concat([pd.read_csv(ROOT / "data" / "breast_cancer.csv")] * repeat, ignore_index=True)
    label = (frame.pop("diagnosis") == "malignant").to_numpy(np.float32).reshape(-1, 1)
    schema = TableSchema("diagnosis", tuple(ColumnSpec(name, Role.NUMERIC, "double") for name in frame.columns))
    rng = np.random.default_rng(0)
    packs = []
    for fold in range(FOLDS):
        order = rng.permutation(len(frame))
        train, validation = order[: int(0.6 * len(frame))], order[int(0.6 * len(frame)) : int(0.8 * len(frame))]
        prep = preprocessing.adapt(frame.iloc[train], schema, one_hot_max=64)
        packs.append(
            packed.FoldPack(
                prep,
                (preprocessing.encode(prep, frame.iloc[train]), label[train]),
                (preprocessing.encode(prep, frame.iloc[validation]), label[validation]),
                seed=fold,
                lams=list(DEFAULT_GRID),
            )
        )
    packed.XLA_MIN_STEPS = 0 if xla else sys.maxsize
    started = time.process_time()
    fits = packed.train_folds_packed(
        packs, mode="l2", hidden_units=[10, 10], learning_rate=1e-3, batch_size=BATCH, epochs=epochs, patience=0
    )
    return {"cpu_seconds": time.process_time() - started, "val_bce": fits[0][0].history["val_bce"][-1]}


def measure(repeat: int, epochs: int, xla: bool) -> dict[str, float]:
    """``train_once`` in a fresh process (no compiled function or warm cache carried over)."""
    code = (
        f"import json; from benchmarks.xla import train_once; print(json.dumps(train_once({repeat}, {epochs}, {xla})))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="1:3,1:100,20:10", help="repeat:epochs pairs, comma-separated")
    args = parser.parse_args()
    print("| rows | epochs | steps | XLA CPU s | plain graph CPU s | val BCE (XLA / plain) |")
    print("|---:|---:|---:|---:|---:|---|")
    for case in args.cases.split(","):
        repeat, epochs = (int(part) for part in case.split(":"))
        rows = 569 * repeat
        steps = epochs * -(-int(0.6 * rows) // BATCH)
        compiled, plain = measure(repeat, epochs, True), measure(repeat, epochs, False)
        print(
            f"| {rows:,} | {epochs} | {steps:,} | {compiled['cpu_seconds']:.1f} | {plain['cpu_seconds']:.1f} | "
            f"{compiled['val_bce']:.4f} / {plain['val_bce']:.4f} |"
        )


if __name__ == "__main__":
    main()
