"""Prefect flow ``train-grid``: one task per (mode, chunk of (fold, λ) units), run concurrently.

Each mode trains its own grid: λ from ``--grid`` for l2 and decoupled, rates from
``--dropout-grid`` for dropout (``dropout p=0.2``).

A chunk's units, every fold of every λ by default, train together as one packed model
(see ``wd_pipeline/ml/packed.py``); ``chunk_size`` n cuts a mode's units, fold by fold,
into tasks of n, so a cluster can spread them (1: a task per unit). MLflow layout is the
same either way: a run per grid point (``l2 λ=1e-03``) under the pipeline's parent run, and
with k > 1 folds a nested run per fold (``fold 2/5``) under it; the grid point's run holds
the fold means, standard deviations and standard errors.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import PrefectFuture, as_completed
from prefect.runtime import flow_run

from flows.retry import TRACKING_TASK, finish_quietly
from flows.timeouts import table_rows, training_seconds
from wd_pipeline import progress, timing
from wd_pipeline.config import PipelineConfig
from wd_pipeline.errors import first_line
from wd_pipeline.ml import modes, selection, training
from wd_pipeline.tracking import runs

Point = tuple[str, float]
Unit = tuple[int, float]  # (fold, grid value) of one mode
ARTIFACT_SECONDS = 5.0  # the Prefect UI's progress artifact is updated at most this often


def _prefect_tags() -> dict[str, str]:
    return {runs.PREFECT_RUN_TAG: str(flow_run.get_id())}


@task(name="open-point-run", cache_policy=NO_CACHE, **TRACKING_TASK)
def open_point_run(parent_run_id: str, mode: str, lam: float) -> str:
    with timing.measure("tracking_points"):
        client = runs.get_client()
        run_id = runs.start_child_run(client, parent_run_id, runs.point_run_name(mode, lam), _prefect_tags())
        runs.log_params(client, run_id, {"mode": mode, modes.value_name(mode): lam})
    return run_id


@task(
    name="train-chunk",
    task_run_name="train {mode} units={units}",
    cache_policy=NO_CACHE,
    **TRACKING_TASK,
)
def train_and_record_chunk(
    split_folder: str,
    config: PipelineConfig,
    *,
    mode: str,
    units: list[Unit],
    chunk: int,
    point_runs: dict[float, str],
) -> list[training.UnitSummary]:
    """Train (or resume) a chunk's (fold, λ) units and record each; a retry after a tracking error reuses the models.

    ``chunk`` numbers the mode's chunks (it names the chunk's progress). Returns the units'
    small summaries, not their per-epoch histories (see ``UnitSummary``).
    """
    on_epoch = progress.epoch_callback(mode, chunk, [lam for _, lam in units])
    results = training.train_units(split_folder, config, mode, units, on_epoch=on_epoch)
    with timing.measure("tracking_units"):
        client = runs.get_client()
        for result in results:
            _record_unit(client, config, result, point_runs[result.lam])
    return [result.summary() for result in results]


def _record_unit(client: Any, config: PipelineConfig, result: training.FitResult, point_run_id: str) -> None:
    """Log one unit; safe to repeat (a retry finds the fold's run again and re-logs nothing twice)."""
    if config.folds == 1:
        runs.log_fit(client, point_run_id, result)
        return
    run_id = runs.start_child_run(client, point_run_id, f"fold {result.fold + 1}/{config.folds}", _prefect_tags())
    try:
        runs.log_fit(client, run_id, result)
    except BaseException:
        finish_quietly(client, run_id, "FAILED")  # a retry reopens it: FINISHED once logged
        raise
    runs.finish(client, run_id)


@task(name="close-point-run", cache_policy=NO_CACHE, **TRACKING_TASK)
def close_point_run(point_run_id: str, summary: dict[str, float]) -> None:
    with timing.measure("tracking_points"):
        client = runs.get_client()
        runs.log_metrics(client, point_run_id, summary)
        runs.finish(client, point_run_id)


def point_summary(fold_results: list[training.UnitSummary]) -> dict[str, float]:
    """Fold means and, for validation metrics, std and standard error: what the point's run shows."""
    rows = selection.fold_table(unit.row for unit in fold_results)
    row = selection.aggregate(rows).iloc[0].drop(["mode", "lambda"])
    return {name: float(value) for name, value in row.items()}


def unit_chunks(units: list[Unit], size: int) -> list[list[Unit]]:
    """A mode's (fold, λ) units, in the order given, cut into runs of ``size`` (0 = one chunk)."""
    size = size or max(len(units), 1)
    return [units[i : i + size] for i in range(0, len(units), size)]


@flow(name="train-grid")
def train_grid(config: PipelineConfig, split_folder: str, parent_run_id: str) -> list[training.UnitSummary]:
    """Every fold of every grid point; the caller picks the task runner (and so the parallelism)."""
    logger = get_run_logger()
    points: list[Point] = [(mode, value) for mode in config.modes for value in modes.grid_of(config, mode)]
    point_runs = {point: open_point_run(parent_run_id, *point) for point in points}
    try:
        with progress.track(0, config.epochs) as tracker:
            tracker.listeners.append(progress.Throttled(_progress_artifact(), ARTIFACT_SECONDS))
            done = _train_all(config, split_folder, point_runs, logger, tracker)
    except BaseException:
        _fail_open_runs(list(point_runs.values()))
        raise
    results = [result for fold_results in done.values() for result in fold_results]
    return sorted(results, key=lambda unit: (unit.mode, unit.lam, unit.fold))


def _fail_open_runs(run_ids: list[str]) -> None:
    """Mark the grid points still RUNNING as FAILED, as far as the server can be reached."""
    client = runs.get_client()
    for run_id in run_ids:
        try:
            running = client.get_run(run_id).info.status == "RUNNING"
        except Exception as exc:
            get_run_logger().warning("Could not read MLflow run %s: %s", run_id, first_line(exc, 200))
            return  # the server is gone: the next pipeline run closes these as orphans
        if running:
            finish_quietly(client, run_id, "FAILED")


def _progress_artifact() -> progress.Listener:
    """A progress artifact of this flow run, and the listener that moves it."""
    artifact_id = create_progress_artifact(
        0.0, key="train-grid-progress", description="Epochs of the grid trained so far"
    )

    def update(snapshot: progress.Snapshot) -> None:
        update_progress_artifact(artifact_id, 100 * snapshot.fraction, description=f"Training: {snapshot.line()}")

    return update


def _train_all(
    config: PipelineConfig,
    split_folder: str,
    point_runs: dict[Point, str],
    logger: Any,
    tracker: progress.GridProgress,
) -> dict[Point, list[training.UnitSummary]]:
    # Value 0 is one model in every mode: the first mode whose grid holds it trains it; a later
    # mode's value-0 units go into chunks of their own that wait for the owner's chunks and
    # load its models, so the rest of that mode need not wait.
    zero_owner = next((mode for mode in config.modes if 0.0 in modes.grid_of(config, mode)), None)
    zero_chunks: dict[int, PrefectFuture] = {}
    futures: list[PrefectFuture] = []
    chunk_of: dict[PrefectFuture, progress.ChunkKey] = {}
    rows = table_rows(split_folder)
    for mode in config.modes:
        grid = modes.grid_of(config, mode)
        mode_runs = {value: point_runs[(mode, value)] for value in grid}
        units = [(fold, value) for fold in range(config.folds) for value in grid]
        shared = [unit for unit in units if unit[1] == 0.0] if mode != zero_owner else []
        own = [unit for unit in units if unit not in shared]
        for index, chunk in enumerate(unit_chunks(own, config.chunk_size) + unit_chunks(shared, config.chunk_size)):
            wait = [zero_chunks[fold] for fold, value in chunk if value == 0.0 and mode != zero_owner]
            bounded = train_and_record_chunk.with_options(timeout_seconds=training_seconds(config, rows, len(chunk)))
            future = bounded.submit(
                split_folder, config, mode=mode, units=chunk, chunk=index, point_runs=mode_runs, wait_for=wait
            )
            futures.append(future)
            chunk_of[future] = progress.chunk_key(mode, index, [value for _, value in chunk])
            tracker.add_units(len(chunk))
            if mode == zero_owner:
                zero_chunks.update({fold: future for fold, value in chunk if value == 0.0})
    done: dict[Point, list[training.UnitSummary]] = defaultdict(list)
    finished_points = 0
    for future in as_completed(futures):
        units = future.result()
        losses = [unit.row[f"val_{LOSS}"] for unit in units if f"val_{LOSS}" in unit.row]
        snapshot = tracker.chunk_done(chunk_of[future], min(losses) if losses else None)
        # A packed chunk finishes its units together; its lines still count them one by one.
        first = snapshot.units_done - len(units)
        for counted, unit in enumerate(units, start=first + 1):
            _log_unit(config, unit, dataclasses.replace(snapshot, units_done=counted), logger)
        for unit in units:
            point = (unit.mode, unit.lam)
            done[point].append(unit)
            if len(done[point]) == config.folds:
                finished_points += 1
                _close_point(
                    config,
                    point,
                    done[point],
                    run_id=point_runs[point],
                    done=finished_points,
                    total=len(point_runs),
                    logger=logger,
                )
    return done


LOSS = "log_loss"


def _log_unit(config: PipelineConfig, unit: training.UnitSummary, snapshot: progress.Snapshot, logger: Any) -> None:
    """One line per finished unit of work, with where the whole grid stands."""
    fold = "" if unit.fold < 0 or config.folds == 1 else f" fold {unit.fold + 1}/{config.folds}"
    loss = unit.row.get(f"val_{LOSS}")
    logger.info(
        "%s%s %s: val %s %s · %s",
        runs.point_run_name(unit.mode, unit.lam),
        fold,
        "found trained" if unit.resumed else "trained",
        LOSS,
        "–" if loss is None else f"{loss:.4f}",
        snapshot.line(),
    )


def _close_point(
    config: PipelineConfig,
    point: Point,
    results: list[training.UnitSummary],
    *,
    run_id: str,
    done: int,
    total: int,
    logger: Any,
) -> None:
    summary = point_summary(results)
    # With one fold the point's run already holds the per-epoch series; don't append to them.
    logged = summary if config.folds > 1 else {k: v for k, v in summary.items() if k not in training.HISTORY_KEYS}
    close_point_run(run_id, logged)
    metric = config.selection_metric
    resumed = sum(unit.resumed for unit in results)
    logger.info(
        "%s done (%d/%d): val %s %.4f ± %.4f (SE), val accuracy %.4f, ‖w‖ %.3f, stopped at epoch %.0f%s",
        runs.point_run_name(*point),
        done,
        total,
        metric,
        summary[f"val_{metric}"],
        summary[f"val_{metric}_se"],
        summary["val_accuracy"],
        summary["weight_norm"],
        summary["stopped_epoch"],
        f" [{resumed}/{config.folds} folds resumed]" if resumed else "",
    )
