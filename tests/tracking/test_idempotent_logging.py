"""Logging a unit again — after a retry, whole or after a half-applied batch — stores nothing twice."""

from __future__ import annotations

import threading
from pathlib import Path

import pandas as pd
from mlflow.entities import Metric

from wd_pipeline.ml.training import HISTORY_KEYS, FitResult
from wd_pipeline.tracking import runs

EPOCHS = 200  # 6 series × 200 epochs = 1200 values: more than one log_batch (MAX_BATCH = 1000)


def fit_result() -> FitResult:
    history = {key: [1.0 / (epoch + 1) + index for epoch in range(EPOCHS)] for index, key in enumerate(HISTORY_KEYS)}
    return FitResult(
        mode="l2",
        lam=1e-3,
        fold=0,
        key="k" * 20,
        model_path="/nowhere/model.keras",
        history=history,
        train_metrics={"log_loss": 0.2},
        val_metrics={"log_loss": 0.3},
        weight_norm=1.5,
        penalized_weight_norm=1.2,
        penalty=0.01,
        best_epoch=150,
        epochs_run=EPOCHS,
        train_seconds=3.0,
        settings={"mode": "l2", "lambda": 1e-3},
    )


def steps_per_key(client, run_id: str) -> dict[str, list[int]]:
    return {key: sorted(m.step for m in client.get_metric_history(run_id, key)) for key in HISTORY_KEYS}


def test_a_half_logged_unit_logged_again_has_each_step_once(workspace: Path) -> None:
    client = runs.get_client()
    experiment = runs.ensure_experiment(client, "idempotent")
    parent = client.create_run(experiment).info.run_id
    run_id = runs.start_child_run(client, parent, "fold 1/2")
    assert runs.start_child_run(client, parent, "fold 1/2") == run_id  # a retry finds it again
    assert runs.start_child_run(client, parent, "fold 2/2") != run_id

    result = fit_result()
    # What a first attempt leaves when the server goes away after the first of two batches.
    stamp = runs.metric_stamp(client, run_id)
    first = [
        Metric(key, value, stamp, step) for key, series in result.history.items() for step, value in enumerate(series)
    ]
    client.log_batch(run_id, metrics=first[: runs.MAX_BATCH])
    assert sum(map(len, steps_per_key(client, run_id).values())) == runs.MAX_BATCH

    runs.log_fit(client, run_id, result)
    runs.log_fit(client, run_id, result)
    runs.log_metrics(client, run_id, {"summary": 0.5})
    runs.log_metrics(client, run_id, {"summary": 0.5})

    assert steps_per_key(client, run_id) == {key: list(range(EPOCHS)) for key in HISTORY_KEYS}
    assert [m.value for m in client.get_metric_history(run_id, "weight_norm")] == [1.5]
    assert len(client.get_metric_history(run_id, "summary")) == 1
    children = client.search_runs([experiment], f"tags.`{runs.PARENT_RUN_TAG}` = '{parent}'")
    assert sorted(run.info.run_name for run in children) == ["fold 1/2", "fold 2/2"]


def test_runs_logging_the_same_dataset_at_once_all_succeed(workspace: Path) -> None:
    """Two runs of the same data start together: both link the one dataset row, neither fails.

    MLflow looks the dataset up, then inserts it; without the repeat in ``runs.log_dataset``
    the loser of that race failed on the unique key (seen with two real runs on one server).
    """

    client = runs.get_client()
    experiment = runs.ensure_experiment(client, "same-data")
    frame = pd.DataFrame({"x": [0.1, 0.2, 0.3], "y": [0, 1, 0]})
    manifest = {"source": "data.csv", "label": "y", "sha256": "ab" * 32}
    run_ids = [client.create_run(experiment).info.run_id for _ in range(8)]
    barrier = threading.Barrier(len(run_ids))
    errors: list[BaseException] = []

    def log(run_id: str) -> None:
        barrier.wait()
        try:
            runs.log_dataset(client, run_id, manifest, {"train": frame, "test": frame})
        except BaseException as exc:  # collected: the assertion below names it
            errors.append(exc)

    threads = [threading.Thread(target=log, args=(run_id,)) for run_id in run_ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for run_id in run_ids:
        assert sorted(d.dataset.digest for d in client.get_run(run_id).inputs.dataset_inputs) == [
            f"{manifest['sha256'][:12]}-test",
            f"{manifest['sha256'][:12]}-train",
        ]
