"""Prefect flow ``evaluate``: choose (mode, λ) by rule, refit it on all training data, test it once."""

from __future__ import annotations

from typing import Any

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from wd_pipeline import evaluate as evaluate_lib
from wd_pipeline import tracking, train
from wd_pipeline.config import PipelineConfig, format_lambda
from flows.retry import TRACKING_RETRIES, TRACKING_RETRY_DELAYS


@task(name="refit", cache_policy=NO_CACHE, retries=TRACKING_RETRIES, retry_delay_seconds=TRACKING_RETRY_DELAYS)
def refit(
    split_folder: str, config: PipelineConfig, selection: evaluate_lib.Selection, epochs: int, parent_run_id: str
) -> dict[str, Any]:
    """The chosen point retrained on train + validation, recorded as its own child run."""
    result = train.train_unit(split_folder, config, selection.mode, selection.lam, train.REFIT, epochs=epochs)
    client = tracking.get_client()
    name = f"refit {tracking.point_run_name(selection.mode, selection.lam)}"
    run_id = tracking.start_child_run(client, parent_run_id, name, {tracking.PREFECT_RUN_TAG: str(flow_run.get_id())})
    tracking.log_fit(client, run_id, result)
    tracking.finish(client, run_id)
    return result.to_dict()


@task(name="log-evaluation", cache_policy=NO_CACHE, retries=TRACKING_RETRIES, retry_delay_seconds=TRACKING_RETRY_DELAYS)
def log_evaluation(
    parent_run_id: str,
    table: pd.DataFrame,
    folds: pd.DataFrame,
    selection: evaluate_lib.Selection,
    test_metrics: dict[str, float],
    refit_epochs: int,
) -> None:
    client = tracking.get_client()
    tracking.log_metrics(
        client,
        parent_run_id,
        {"chosen_lambda": selection.lam, "best_lambda": selection.best_lambda, "refit_epochs": refit_epochs,
         **{f"test_{k}": v for k, v in test_metrics.items()}},
    )
    tracking.set_tags(
        client,
        parent_run_id,
        {"selection.rule": selection.rule, "selection.metric": selection.metric, "selection.mode": selection.mode,
         "selection.lambda": selection.lam, "selection.best_lambda": selection.best_lambda,
         **{f"selection.{mode}.lambda": lam for mode, lam in selection.per_mode.items()}},
    )
    tracking.log_table_csv(client, parent_run_id, table.to_dict("records"), "grid/results.csv")
    tracking.log_table_csv(client, parent_run_id, folds.to_dict("records"), "grid/folds.csv")
    chosen_mode = table[table["mode"] == selection.mode]
    curve = evaluate_lib.validation_curve_figure(chosen_mode, selection.metric, selection.lam)
    tracking.log_figure(client, parent_run_id, curve, "plots/validation_curve.png")
    norms = evaluate_lib.weight_norm_figure(chosen_mode, selection.lam)
    tracking.log_figure(client, parent_run_id, norms, "plots/weight_norm.png")


@flow(name="evaluate")
def evaluate(
    config: PipelineConfig, split_folder: str, fold_results: list[dict[str, Any]], parent_run_id: str
) -> dict[str, Any]:
    """Returns the selection, the refit model's path and its test metrics."""
    logger = get_run_logger()
    folds = evaluate_lib.fold_table(train.FitResult.from_dict(r).row() for r in fold_results)
    table = evaluate_lib.aggregate(folds)
    selection = evaluate_lib.select(table, config.selection_metric, config.rule)
    epochs = evaluate_lib.refit_epochs(folds, selection, config.epochs) if config.patience else config.epochs
    logger.info(
        "Rule %s on validation %s chose %s (best mean at λ=%s); per mode: %s; refit for %d epochs",
        selection.rule, selection.metric, tracking.point_run_name(selection.mode, selection.lam),
        format_lambda(selection.best_lambda),
        ", ".join(f"{mode} λ={format_lambda(lam)}" for mode, lam in selection.per_mode.items()), epochs,
    )
    refitted = refit(split_folder, config, selection, epochs, parent_run_id)
    test_metrics = evaluate_lib.score_on_test(refitted["model_path"], split_folder)
    log_evaluation(parent_run_id, table, folds, selection, test_metrics, epochs)
    create_table_artifact(
        grid_rows(table, selection),
        key="grid-results",
        description=f"Cross-validated metrics per (mode, λ); chosen {selection.mode} λ={format_lambda(selection.lam)} "
        f"by rule {selection.rule} on validation {selection.metric}",
    )
    logger.info("Test: %s", ", ".join(f"{k} {v:.4f}" for k, v in test_metrics.items()))
    return {
        "chosen_mode": selection.mode,
        "chosen_lambda": selection.lam,
        "best_lambda": selection.best_lambda,
        "rule": selection.rule,
        "per_mode": selection.per_mode,
        "refit_epochs": epochs,
        "chosen_model_path": refitted["model_path"],
        "test_metrics": test_metrics,
        "table": table.to_dict("records"),
    }


def grid_rows(table: pd.DataFrame, selection: evaluate_lib.Selection) -> list[dict[str, Any]]:
    """Rounded rows for a table a person reads in the Prefect UI."""
    metric = selection.metric
    rows = []
    for record in table.to_dict("records"):
        rows.append(
            {
                "mode": record["mode"],
                "lambda": format_lambda(record["lambda"]),
                f"val_{metric}": round(record[f"val_{metric}"], 5),
                f"val_{metric}_se": round(record[f"val_{metric}_se"], 5),
                "val_accuracy": round(record["val_accuracy"], 4),
                "val_roc_auc": round(record["val_roc_auc"], 4),
                f"train_{metric}": round(record[f"train_{metric}"], 5),
                "weight_norm": round(record["weight_norm"], 4),
                "stopped_epoch": round(record["stopped_epoch"], 1),
                "chosen": "✔" if (record["mode"], record["lambda"]) == (selection.mode, selection.lam) else "",
            }
        )
    return rows
