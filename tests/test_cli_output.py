"""What ``wd-pipeline run`` and ``wd-pipeline score`` print when they finish, read from the flows' typed results."""

from __future__ import annotations

from dataclasses import replace

from flows.summary import PipelineSummary, summary_markdown
from tests.helpers.summaries import pipeline_summary
from wd_pipeline.cli import format_score_summary, format_summary
from wd_pipeline.config import PROJECT_ROOT
from wd_pipeline.ml.bootstrap import Interval
from wd_pipeline.ml.slices import SliceMetrics, SliceReport
from wd_pipeline.serving.scoring import ScoreResult
from wd_pipeline.tracking.runs import ui_command


def test_run_prints_the_choice_test_metrics_registry_decision_and_where_to_look() -> None:
    assert format_summary(pipeline_summary(tracking_uri="sqlite:///x.db")) == "\n".join(
        [
            "",
            "chosen        l2 λ=1e-03  (rule one-se on validation log_loss)",
            "test metrics  accuracy 0.9700, log_loss 0.0812",
            "registry      wd-classifier v4 → @champion: beats champion",
            "MLflow run    http://mlflow/#/experiments/7/runs/r123",
            "model         models:/wd-classifier/4",
        ]
    )


def test_score_prints_rows_model_predictions_file_and_run() -> None:
    result = ScoreResult(
        model_uri="models:/wd-classifier/2",
        version="2",
        rows=25,
        positive_rate=0.4,
        output="/data/predictions.parquet",
        run_id="r9",
        input_sha256="ab" * 32,
    )
    assert format_score_summary(result) == "\n".join(
        [
            "",
            "scored        25 rows with models:/wd-classifier/2 (positive rate 0.4000)",
            "inputs        no missing values, no unseen categories",
            "predictions   /data/predictions.parquet",
            "MLflow run    r9",
        ]
    )


def test_score_names_missing_and_unseen_shares_and_the_labelled_metrics() -> None:
    result = ScoreResult(
        model_uri="models:/wd-classifier/2",
        version="2",
        rows=300,
        positive_rate=0.5,
        output="/data/p.parquet",
        run_id="r9",
        input_sha256="ab" * 32,
        inputs={"age": {"missing": 0.08}, "city": {"missing": 0.0, "unseen": 0.0333}, "plan": {"missing": 0.0}},
        metrics={"roc_auc": 0.91, "log_loss": 0.35},
    )
    lines = format_score_summary(result).splitlines()
    assert lines[2] == "inputs        age 8.0% missing; city 3.3% unseen"
    assert lines[3] == "labelled rows roc_auc 0.9100, log_loss 0.3500"


def test_a_local_store_ends_with_a_ui_command_that_works_from_any_folder(tmp_path) -> None:
    summary = replace(
        pipeline_summary(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db"), run_url="mlflow ui --backend-store-uri …"
    )
    lines = format_summary(summary).splitlines()
    assert lines[4] == "MLflow run    experiment 7, run r123"
    assert lines[5] == f"MLflow UI     cd {tmp_path} && {PROJECT_ROOT / 'wd'} ui"
    assert lines[6] == "model         models:/wd-classifier/4"


def test_a_store_of_another_name_is_named_to_the_ui_command(tmp_path) -> None:
    uri = f"sqlite:///{tmp_path}/runs.db"
    command = ui_command(uri)
    assert command == f"MLFLOW_TRACKING_URI={uri} {PROJECT_ROOT / 'wd'} ui"


def sliced_summary(worst_auc: float) -> PipelineSummary:
    """The run above, sliced by sex: a big female slice, a big male one, a small missing one."""
    interval = Interval(0.8, 0.75, 0.85, 0.95, 1000)
    slices = tuple(
        SliceMetrics("sex", value, rows, rows // 3, replace(interval, estimate=auc), interval, interval, rows < 30)
        for value, rows, auc in (("female", 120, worst_auc), ("male", 200, 0.9), ("<missing>", 12, 0.5))
    )
    report = SliceReport(slices, ("sex",), min_rows=30, threshold=0.5, level=0.95, resamples=1000)
    summary = pipeline_summary(tracking_uri="sqlite:///x.db")
    return replace(summary, evaluation=replace(summary.evaluation, slices=report))


def test_a_sliced_run_names_its_worst_slice_after_the_test_metrics() -> None:
    lines = format_summary(sliced_summary(worst_auc=0.71)).splitlines()
    assert lines[2] == "test metrics  accuracy 0.9700, log_loss 0.0812"
    assert lines[3] == "worst slice   sex=female: roc_auc 0.7100 [0.7500, 0.8500] on 120 rows"
    assert "- **Worst slice**: sex=female: roc_auc 0.7100" in summary_markdown(sliced_summary(worst_auc=0.71))


def test_an_unsliced_run_prints_no_slice_line() -> None:
    assert "worst slice" not in format_summary(pipeline_summary(tracking_uri="sqlite:///x.db"))
    assert "Worst slice" not in summary_markdown(pipeline_summary(tracking_uri="sqlite:///x.db"))
