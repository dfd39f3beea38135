"""Prefect flow ``train-grid``: one task per (mode, λ, fold), run concurrently.

MLflow layout: a run per grid point (``l2 λ=1e-03``) under the pipeline's parent run, and
with k > 1 folds a nested run per fold (``fold 2/5``) under it; the grid point's run holds
the fold means, standard deviations and standard errors.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.runtime import flow_run

from wd_pipeline import evaluate as evaluate_lib
from wd_pipeline import tracking, train
from wd_pipeline.config import PipelineConfig
from flows.retry import TRACKING_RETRIES, TRACKING_RETRY_DELAYS

Point = tuple[str, float]


def _prefect_tags() -> dict[str, str]:
    return {tracking.PREFECT_RUN_TAG: str(flow_run.get_id())}


@task(name="open-point-run", cache_policy=NO_CACHE, retries=TRACKING_RETRIES, retry_delay_seconds=TRACKING_RETRY_DELAYS)
def open_point_run(parent_run_id: str, mode: str, lam: float) -> str:
    client = tracking.get_client()
    run_id = tracking.start_child_run(client, parent_run_id, tracking.point_run_name(mode, lam), _prefect_tags())
    tracking.log_params(client, run_id, {"mode": mode, "lambda": lam})
    return run_id


@task(
    name="train-fold",
    task_run_name="train {mode} λ={lam:g} fold {fold}",
    cache_policy=NO_CACHE,
    retries=TRACKING_RETRIES,
    retry_delay_seconds=TRACKING_RETRY_DELAYS,
)
def train_fold(
    split_folder: str, config: PipelineConfig, mode: str, lam: float, fold: int, point_run_id: str
) -> dict[str, Any]:
    """Train (or resume) one fold and record it; a retry after a tracking error reuses the trained model."""
    result = train.train_unit(split_folder, config, mode, lam, fold)
    client = tracking.get_client()
    if config.folds == 1:
        tracking.log_fit(client, point_run_id, result)
        return result.to_dict()
    run_id = tracking.start_child_run(client, point_run_id, f"fold {fold + 1}/{config.folds}", _prefect_tags())
    try:
        tracking.log_fit(client, run_id, result)
    except BaseException:
        tracking.finish(client, run_id, "FAILED")
        raise
    tracking.finish(client, run_id)
    return result.to_dict()


@task(name="close-point-run", cache_policy=NO_CACHE, retries=TRACKING_RETRIES, retry_delay_seconds=TRACKING_RETRY_DELAYS)
def close_point_run(point_run_id: str, summary: dict[str, float]) -> None:
    client = tracking.get_client()
    tracking.log_metrics(client, point_run_id, summary)
    tracking.finish(client, point_run_id)


def point_summary(fold_results: list[dict[str, Any]]) -> dict[str, float]:
    """Fold means and, for validation metrics, std and standard error: what the point's run shows."""
    rows = evaluate_lib.fold_table(train.FitResult.from_dict(r).row() for r in fold_results)
    row = evaluate_lib.aggregate(rows).iloc[0].drop(["mode", "lambda"])
    return {name: float(value) for name, value in row.items()}


@flow(name="train-grid")
def train_grid(config: PipelineConfig, split_folder: str, parent_run_id: str) -> list[dict[str, Any]]:
    """Every fold of every grid point; the caller picks the task runner (and so the parallelism)."""
    logger = get_run_logger()
    points: list[Point] = [(mode, lam) for mode in config.modes for lam in config.grid]
    point_runs = {point: open_point_run(parent_run_id, *point) for point in points}
    try:
        futures = {
            train_fold.submit(split_folder, config, mode, lam, fold, point_runs[(mode, lam)]): (mode, lam)
            for mode, lam in points
            for fold in range(config.folds)
        }
        done: dict[Point, list[dict[str, Any]]] = defaultdict(list)
        finished_points = 0
        for future in as_completed(list(futures)):
            point = futures[future]
            done[point].append(future.result())
            if len(done[point]) < config.folds:
                continue
            finished_points += 1
            summary = point_summary(done[point])
            # With one fold the point's run already holds the per-epoch series; don't append to them.
            logged = summary if config.folds > 1 else {k: v for k, v in summary.items() if k not in train.HISTORY_KEYS}
            close_point_run(point_runs[point], logged)
            metric = config.selection_metric
            resumed = sum(r["resumed"] for r in done[point])
            logger.info(
                "%s done (%d/%d): val %s %.4f ± %.4f (SE), val accuracy %.4f, ‖w‖ %.3f, stopped at epoch %.0f%s",
                tracking.point_run_name(*point), finished_points, len(points), metric,
                summary[f"val_{metric}"], summary[f"val_{metric}_se"], summary["val_accuracy"],
                summary["weight_norm"], summary["stopped_epoch"],
                f" [{resumed}/{config.folds} folds resumed]" if resumed else "",
            )
    except BaseException:
        client = tracking.get_client()
        for run_id in point_runs.values():
            if client.get_run(run_id).info.status == "RUNNING":
                tracking.finish(client, run_id, "FAILED")
        raise
    results = [result for fold_results in done.values() for result in fold_results]
    return sorted(results, key=lambda r: (r["mode"], r["lam"], r["fold"]))
