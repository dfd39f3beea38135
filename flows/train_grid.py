"""Prefect flow ``train-grid``: one task per λ, run concurrently, each with its MLflow child run."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.runtime import flow_run

from wd_pipeline import tracking, train
from wd_pipeline.config import PipelineConfig, format_lambda
from flows.retry import TRACKING_RETRIES, TRACKING_RETRY_DELAYS


@task(
    name="train-point",
    cache_policy=NO_CACHE,
    task_run_name="train λ={lam:g}",
    retries=TRACKING_RETRIES,
    retry_delay_seconds=TRACKING_RETRY_DELAYS,
)
def train_and_log(split_folder: str, config: PipelineConfig, lam: float, parent_run_id: str) -> dict[str, Any]:
    """Train (or resume) one point and record it; a retry after a tracking error reuses the trained model."""
    result = train.train_point(split_folder, config, lam)
    client = tracking.get_client()
    child = tracking.start_child_run(client, parent_run_id, lam, tags={tracking.PREFECT_RUN_TAG: str(flow_run.get_id())})
    try:
        tracking.log_point(client, child, result)
    except BaseException:
        tracking.finish(client, child, "FAILED")
        raise
    tracking.finish(client, child)
    return result.to_dict() | {"run_id": child}


@flow(name="train-grid")
def train_grid(config: PipelineConfig, split_folder: str, parent_run_id: str) -> list[dict[str, Any]]:
    """All grid points of ``config``; the caller picks the task runner (and so the parallelism)."""
    logger = get_run_logger()
    futures = [train_and_log.submit(split_folder, config, lam, parent_run_id) for lam in config.grid]
    results = []
    for done, future in enumerate(as_completed(futures), start=1):
        result = future.result()
        results.append(result)
        logger.info(
            "λ=%s done (%d/%d)%s: val %s %.4f, val accuracy %.4f, ‖w‖ %.3f",
            format_lambda(result["lam"]), done, len(futures), " [resumed]" if result["resumed"] else "",
            config.selection_metric, result["val_metrics"][config.selection_metric],
            result["val_metrics"]["accuracy"], result["weight_norm"],
        )
    return sorted(results, key=lambda r: r["lam"])
