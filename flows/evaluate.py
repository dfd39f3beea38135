"""Prefect flow ``evaluate``: choose λ, score it on test, log plots and the grid table."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.artifacts import create_table_artifact

from wd_pipeline import evaluate as evaluate_lib
from wd_pipeline import report, tracking
from wd_pipeline.config import PipelineConfig, format_lambda
from wd_pipeline.train import PointResult
from flows.retry import TRACKING_RETRIES, TRACKING_RETRY_DELAYS


@task(cache_policy=NO_CACHE, name="log-evaluation", retries=TRACKING_RETRIES, retry_delay_seconds=TRACKING_RETRY_DELAYS)
def log_evaluation(
    parent_run_id: str,
    evaluation: evaluate_lib.Evaluation,
    learning_curves: list[tuple[str, dict[str, list[float]]]],
) -> None:
    client = tracking.get_client()
    tracking.log_metrics(client, parent_run_id, evaluation.summary())
    tracking.log_table_csv(client, parent_run_id, evaluation.table.to_dict("records"), "grid/results.csv")
    table, metric, chosen = evaluation.table, evaluation.metric, evaluation.chosen_lambda
    figures = {
        "validation_curve.png": report.validation_curve_figure(table, metric, chosen),
        "weight_norm.png": report.weight_norm_figure(table, chosen),
        "generalization_gap.png": report.generalization_gap_figure(table, metric, chosen),
        "learning_curves.png": report.learning_curves_figure(learning_curves),
    }
    for file_name, figure in figures.items():
        tracking.log_figure(client, parent_run_id, figure, f"plots/{file_name}")


@flow(name="evaluate")
def evaluate(
    config: PipelineConfig, split_folder: str, results: list[dict[str, Any]], parent_run_id: str
) -> dict[str, Any]:
    """Returns the chosen λ, its model path and test metrics."""
    points = [PointResult.from_dict({k: v for k, v in r.items() if k != "run_id"}) for r in results]
    evaluation = evaluate_lib.evaluate_grid(points, split_folder, config.selection_metric)
    curves = [(f"l2 λ={format_lambda(point.lam)}", point.history) for point in points]
    log_evaluation(parent_run_id, evaluation, curves)
    create_table_artifact(
        grid_rows(evaluation),
        key="grid-results",
        description=f"Validation metrics per λ; chosen λ={format_lambda(evaluation.chosen_lambda)} "
        f"on validation {config.selection_metric}",
    )
    get_run_logger().info(
        "Chosen λ=%s on validation %s; test: %s",
        format_lambda(evaluation.chosen_lambda), config.selection_metric,
        ", ".join(f"{k} {v:.4f}" for k, v in evaluation.test_metrics.items()),
    )
    return {
        "chosen_lambda": evaluation.chosen_lambda,
        "chosen_model_path": evaluation.chosen_model_path,
        "test_metrics": evaluation.test_metrics,
        "table": evaluation.table.to_dict("records"),
    }


def grid_rows(evaluation: evaluate_lib.Evaluation) -> list[dict[str, Any]]:
    """Rounded rows for a table a person reads in the Prefect UI."""
    columns = ["lambda", "val_log_loss", "val_accuracy", "val_roc_auc", "train_log_loss", "weight_norm"]
    rows = []
    for record in evaluation.table[columns].to_dict("records"):
        row = {key: round(float(value), 5) for key, value in record.items()}
        row["lambda"] = format_lambda(record["lambda"])
        row["chosen"] = "✔" if record["lambda"] == evaluation.chosen_lambda else ""
        rows.append(row)
    return rows
