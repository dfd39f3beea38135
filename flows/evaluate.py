"""Prefect flow ``evaluate``: choose (mode, λ) by rule, refit it on all training data, test it once, report."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows.retry import TRACKING_TASK
from flows.timeouts import table_rows, training_seconds
from wd_pipeline import storage, timing
from wd_pipeline.config import PipelineConfig
from wd_pipeline.data import splits
from wd_pipeline.ml import bootstrap, importance, modes, preprocessing, report, slices, training
from wd_pipeline.ml.importance import Importance
from wd_pipeline.ml.preprocessing import Preprocessing
from wd_pipeline.ml.selection import Selection, aggregate, fold_table, refit_epochs, select, test_predictions
from wd_pipeline.ml.slices import SliceReport
from wd_pipeline.ml.thresholds import DecisionThreshold, choose_threshold
from wd_pipeline.provenance import Provenance
from wd_pipeline.tracking import runs


@dataclass(frozen=True)
class Evaluation:
    """What evaluation hands on: the choice, the refit model, its test numbers and the grid."""

    selection: Selection
    refit_epochs: int
    model_path: str  # the chosen point refit on train + validation: the model to register
    test_intervals: dict[str, bootstrap.Interval]
    model_card: str
    grid: list[dict[str, Any]]  # one row per (mode, λ): cross-validated means, std and SE
    slices: SliceReport | None = None  # test metrics per slice, when --slice-by names columns
    importance: Importance | None = None  # permutation importance, unless --importance-repeats 0
    threshold: DecisionThreshold = field(default_factory=DecisionThreshold)  # labels the test split and the model

    @property
    def test_metrics(self) -> dict[str, float]:
        return {name: interval.estimate for name, interval in self.test_intervals.items()}


@task(name="refit", cache_policy=NO_CACHE, **TRACKING_TASK)
def refit(
    split_folder: str, config: PipelineConfig, selection: Selection, epochs: int, parent_run_id: str
) -> training.UnitSummary:
    """The chosen point retrained on train + validation, recorded as its own child run."""
    splits.forget_cached_splits()  # the grid is over: its splits need not stay beside the refit's rows
    result = training.train_unit(split_folder, config, selection.mode, selection.lam, training.REFIT, epochs=epochs)
    with timing.measure("tracking_units"):
        client = runs.get_client()
        name = f"refit {runs.point_run_name(selection.mode, selection.lam)}"
        run_id = runs.start_child_run(client, parent_run_id, name, {runs.PREFECT_RUN_TAG: str(flow_run.get_id())})
        runs.log_fit(client, run_id, result)
        runs.finish(client, run_id)
    return result.summary()


@task(name="log-evaluation", cache_policy=NO_CACHE, **TRACKING_TASK)
def log_evaluation(
    parent_run_id: str,
    selection: Selection,
    *,
    table: pd.DataFrame,
    folds: pd.DataFrame,
    test_intervals: dict[str, bootstrap.Interval],
    epochs: int,
    artifacts: dict[str, Any],
    threshold: DecisionThreshold,
    at_grid_edge: bool,
) -> None:
    """Selection, test metrics with their bootstrap intervals, tables, plots and the model card."""
    with timing.measure("tracking_evaluation"):
        client = runs.get_client()
        runs.log_metrics(
            client,
            parent_run_id,
            {
                "chosen_lambda": modes.weight_decay(selection.mode, selection.lam),
                "chosen_dropout_rate": modes.dropout_rate(selection.mode, selection.lam),
                "best_lambda": selection.best_lambda,
                "refit_epochs": epochs,
                "decision_threshold": threshold.value,
                **{f"test_{k}": v.estimate for k, v in test_intervals.items()},
                **{f"test_{k}_ci_low": v.low for k, v in test_intervals.items()},
                **{f"test_{k}_ci_high": v.high for k, v in test_intervals.items()},
            },
        )
        runs.set_tags(
            client,
            parent_run_id,
            {
                "selection.rule": selection.rule,
                "selection.metric": selection.metric,
                "selection.mode": selection.mode,
                "selection.lambda": modes.weight_decay(selection.mode, selection.lam),
                "selection.rate": modes.dropout_rate(selection.mode, selection.lam),
                "selection.point": selection.label,
                "selection.best_lambda": selection.best_lambda,
                "selection.at_grid_edge": str(at_grid_edge).lower(),
                **selection.tags(),
                "threshold.metric": threshold.source,
            },
        )
        runs.log_table_csv(client, parent_run_id, table.to_dict("records"), "grid/results.csv")
        runs.log_table_csv(client, parent_run_id, folds.to_dict("records"), "grid/folds.csv")
        for path, artifact in artifacts.items():
            if isinstance(artifact, str):
                runs.log_text(client, parent_run_id, artifact, path)
            else:
                runs.log_figure(client, parent_run_id, artifact, path)


@task(cache_policy=NO_CACHE, name="read-provenance", **TRACKING_TASK)
def code_of_run(parent_run_id: str) -> Provenance:
    """The code that made the run, as its tags recorded it, for the model card."""
    return Provenance.from_tags(runs.get_client().get_run(parent_run_id).data.tags)


@flow(name="evaluate")
def evaluate(
    config: PipelineConfig, split_folder: str, fold_results: list[training.UnitSummary], parent_run_id: str
) -> Evaluation:
    """The selection, the refit model's path, test metrics with intervals and the model card."""
    logger = get_run_logger()
    results = [unit.load() for unit in fold_results]
    folds = fold_table(result.row() for result in results)
    table = aggregate(folds)
    selection = select(table, config.selection_metric, config.rule)
    epochs = refit_epochs(folds, selection, config.epochs) if config.patience else config.epochs
    logger.info(
        "Rule %s on validation %s chose %s (best mean at %s); per mode: %s; refit for %d epochs",
        selection.rule,
        selection.metric,
        selection.label,
        runs.point_run_name(selection.best_mode, selection.best_lambda),
        ", ".join(runs.point_run_name(mode, value) for mode, value in selection.per_mode.items()),
        epochs,
    )
    at_grid_edge = selection.at_grid_edge(modes.grid_of(config, selection.mode))
    if at_grid_edge:
        flag = modes.grid_flag(selection.mode)
        logger.warning(
            "The chosen %s is the largest in %s: the optimum may lie beyond it; extend %s upwards",
            selection.label,
            flag,
            flag,
        )
    threshold = decision_threshold(config, results, selection)
    logger.info("Decision threshold %s", threshold.describe())
    bound = training_seconds(config, table_rows(split_folder), 1, epochs=epochs)
    refitted = refit.with_options(timeout_seconds=bound)(split_folder, config, selection, epochs, parent_run_id)
    with timing.measure("evaluate_predict"):
        y_test, p_test = test_predictions(refitted.model_path, split_folder)
    with timing.measure("evaluate_bootstrap"):
        intervals = bootstrap.bootstrap_cis(
            y_test, p_test, n_resamples=config.bootstrap_samples, seed=config.seed, threshold=threshold.value
        )
    manifest = splits.read_manifest(split_folder)
    inputs = log_input_schema(parent_run_id, split_folder, refitted.model_path)
    sliced = slice_test_split(config, split_folder, y_test, p_test, threshold.value) if config.slice_by else None
    ranked = column_importance(config, split_folder, refitted.model_path) if config.importance_repeats else None
    with timing.measure("evaluate_report"):
        artifacts = report.report_artifacts(
            table=table,
            curves=learning_curves(results),
            y_test=y_test,
            p_test=p_test,
            metric=selection.metric,
            chosen_mode=selection.mode,
            chosen_lambda=selection.lam,
            threshold=threshold.value,
            card={
                "threshold_reason": threshold.describe(),
                "model_name": config.model_name,
                "data_source": manifest["source"],
                "data_sha256": manifest["sha256"],
                "config": config.model_dump(),
                "rule": selection.rule,
                "per_mode": selection.per_mode,
                "test_intervals": intervals,
                "inputs": inputs,
                "code": code_of_run(parent_run_id),
                "slices": sliced,
                "importance": ranked,
            },
        )
    log_evaluation(
        parent_run_id,
        selection,
        table=table,
        folds=folds,
        test_intervals=intervals,
        epochs=epochs,
        artifacts=artifacts,
        threshold=threshold,
        at_grid_edge=at_grid_edge,
    )
    create_table_artifact(
        grid_rows(table, selection),
        key="grid-results",
        description=f"Cross-validated metrics per (mode, λ or dropout rate); chosen {selection.label} "
        f"by rule {selection.rule} on validation {selection.metric}",
    )
    if sliced is not None:
        log_slices(parent_run_id, sliced, config.min_slice_roc_auc)
    if ranked is not None:
        log_importance(parent_run_id, ranked)
    logger.info("Test: %s", ", ".join(f"{k} {v.format()}" for k, v in intervals.items()))
    return Evaluation(
        selection=selection,
        refit_epochs=epochs,
        model_path=refitted.model_path,
        test_intervals=intervals,
        model_card=artifacts[report.CARD_ARTIFACT],
        grid=table.to_dict("records"),
        slices=sliced,
        importance=ranked,
        threshold=threshold,
    )


def decision_threshold(
    config: PipelineConfig, results: list[training.FitResult], selection: Selection
) -> DecisionThreshold:
    """The fixed ``--threshold``, or with ``auto`` the one chosen on the chosen point's out-of-fold predictions.

    The validation folds of the chosen (mode, λ) together (with ``--folds 1``, the validation
    split): rows no fold model trained on, and never the test split.
    """
    if config.threshold != "auto":
        return DecisionThreshold.fixed(config.threshold)
    chosen = [r for r in results if (r.mode, r.lam) == (selection.mode, selection.lam) and r.fold != training.REFIT]
    parts = [training.validation_predictions(r.model_path) for r in chosen]
    label = np.concatenate([part[0] for part in parts])
    probability = np.concatenate([part[1] for part in parts])
    return choose_threshold(label, probability, config.threshold_metric)


@task(cache_policy=NO_CACHE, name="log-input-schema", **TRACKING_TASK)
def log_input_schema(parent_run_id: str, split_folder: str, model_path: str) -> list[dict[str, Any]]:
    """The chosen model's inputs (roles, types, vocabularies, imputation values): MLflow JSON and a Prefect table."""
    schema = splits.read_schema(split_folder)
    prep = Preprocessing.load(storage.local_file(model_path).parent)
    rows = preprocessing.schema_rows(schema, prep)
    client = runs.get_client()
    runs.log_text(
        client,
        parent_run_id,
        json.dumps({"schema": schema.to_dict(), "preprocessing": prep.to_dict()}),
        "schema/inputs.json",
    )
    runs.log_text(client, parent_run_id, report.markdown_table(rows) + "\n", "schema/inputs.md")
    create_table_artifact(rows, key="input-schema", description="The model's raw inputs and what it learnt about them")
    return rows


def learning_curves(results: list[training.FitResult]) -> list[tuple[str, dict[str, list[float]]]]:
    """First fold's per-epoch curves of every grid point (folds stop at different epochs)."""
    first = sorted((r for r in results if r.fold == 0), key=lambda r: (r.mode, r.lam))
    return [(runs.point_run_name(r.mode, r.lam), r.history) for r in first]


def grid_rows(table: pd.DataFrame, selection: Selection) -> list[dict[str, Any]]:
    """Rounded rows for a table a person reads in the Prefect UI."""
    metric = selection.metric
    rows = []
    for record in table.to_dict("records"):
        rows.append(
            {
                "mode": record["mode"],
                "lambda": modes.format_value(record["mode"], record["lambda"]),
                f"val_{metric}": round(record[f"val_{metric}"], 5),
                f"val_{metric}_se": round(record[f"val_{metric}_se"], 5),
                "val_accuracy": round(record["val_accuracy"], 4),
                "val_roc_auc": round(record["val_roc_auc"], 4),
                "val_average_precision": round(record["val_average_precision"], 4),
                f"train_{metric}": round(record[f"train_{metric}"], 5),
                "weight_norm": round(record["weight_norm"], 4),
                "stopped_epoch": round(record["stopped_epoch"], 1),
                "chosen": "✔" if (record["mode"], record["lambda"]) == (selection.mode, selection.lam) else "",
            }
        )
    return rows


SLICES_TABLE = "slices/slices.json"
IMPORTANCE_TABLE = "importance/importance.json"


@task(name="slice-metrics", cache_policy=NO_CACHE)
def slice_test_split(
    config: PipelineConfig, split_folder: str, y_test: np.ndarray, p_test: np.ndarray, threshold: float
) -> SliceReport:
    """Test metrics per slice of the --slice-by columns, bins learnt on the training split."""
    with timing.measure("evaluate_slices"):
        columns = list(config.slice_by or [])
        definitions = slices.define_slices(splits.load_split(split_folder, "train").carried, columns)
        return slices.slice_metrics(
            definitions,
            splits.load_split(split_folder, "test").carried,
            y_test,
            p_test,
            min_rows=config.min_slice_rows,
            threshold=threshold,
            n_resamples=config.bootstrap_samples,
            seed=config.seed,
        )


@task(name="permutation-importance", cache_policy=NO_CACHE)
def column_importance(config: PipelineConfig, split_folder: str, model_path: str) -> Importance:
    """Each raw column shuffled on the test split and scored through the model's raw-frame input path."""
    from wd_pipeline.ml.network import predict_frame

    with timing.measure("evaluate_importance"):
        test = splits.load_split(split_folder, "test")
        network, prep = training.load_model(model_path)
        return importance.permutation_importance(
            lambda frame: predict_frame(network, prep, frame),
            test.features,
            test.label,
            columns=prep.columns,
            repeats=config.importance_repeats,
            seed=config.seed,
        )


@task(name="log-slices", cache_policy=NO_CACHE, **TRACKING_TASK)
def log_slices(parent_run_id: str, sliced_report: SliceReport, floor: float | None) -> None:
    """The slice table (MLflow table and Prefect table), its figure, and the worst slice as a tag and metric."""
    client = runs.get_client()
    log_table_once(client, parent_run_id, sliced_report.rows(), SLICES_TABLE)
    runs.log_figure(client, parent_run_id, report.slices_figure(sliced_report, floor), "plots/slices.png")
    worst = sliced_report.worst
    runs.set_tags(client, parent_run_id, {"slices.worst": worst.name if worst else ""})
    if worst is not None:
        runs.log_metrics(client, parent_run_id, {"worst_slice_roc_auc": worst.roc_auc.estimate})
    create_table_artifact(
        [rounded(row) for row in sliced_report.rows()],
        key="slice-metrics",
        description=f"Test metrics per slice ({sliced_report.level:.0%} bootstrap intervals; small: fewer than "
        f"{sliced_report.min_rows} rows); worst slice {sliced_report.worst_text()}",
    )


@task(name="log-importance", cache_policy=NO_CACHE, **TRACKING_TASK)
def log_importance(parent_run_id: str, ranked: Importance) -> None:
    """The importance table (MLflow table and Prefect table) and its figure."""
    client = runs.get_client()
    log_table_once(client, parent_run_id, ranked.rows(), IMPORTANCE_TABLE)
    runs.log_figure(client, parent_run_id, report.importance_figure(ranked), "plots/importance.png")
    create_table_artifact(
        [rounded(row) for row in ranked.rows()],
        key="permutation-importance",
        description=f"Drop in test ROC AUC and rise in log loss when each raw column is shuffled "
        f"({ranked.repeats} shuffles, {ranked.level:.0%} intervals"
        + (f", on {ranked.rows_measured:,} of {ranked.rows_in_split:,} test rows" if ranked.sampled else "")
        + "), most important first",
    )


def log_table_once(client: Any, run_id: str, rows: list[dict[str, Any]], artifact_file: str) -> None:
    """``MlflowClient.log_table``, skipped when a retried task already logged it: log_table appends to a table."""
    folder = str(Path(artifact_file).parent)
    if any(item.path == artifact_file for item in client.list_artifacts(run_id, folder)):
        return
    client.log_table(run_id, pd.DataFrame(rows), artifact_file)


def rounded(row: dict[str, Any], digits: int = 4) -> dict[str, Any]:
    """A table row a person reads: floats to ``digits`` places."""
    return {key: round(value, digits) if isinstance(value, float) else value for key, value in row.items()}
