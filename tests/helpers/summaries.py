"""Typed values a finished run hands back, built by hand for tests of what is printed and shown."""

from __future__ import annotations

from flows.evaluate import Evaluation
from flows.summary import PipelineSummary
from wd_pipeline.ml.bootstrap import Interval
from wd_pipeline.ml.selection import Selection
from wd_pipeline.tracking.registry import RegistryDecision


def pipeline_summary(tracking_uri: str) -> PipelineSummary:
    """Two modes, version 4 promoted to champion."""
    selection = Selection(
        mode="l2",
        lam=1e-3,
        rule="one-se",
        metric="log_loss",
        best_mode="l2",
        best_lambda=1e-4,
        per_mode={"l2": 1e-3, "decoupled": 1e-2},
    )
    evaluation = Evaluation(
        selection=selection,
        refit_epochs=12,
        model_path="/work/points/abc/model.keras",
        test_intervals={
            "accuracy": Interval(0.97, 0.95, 0.99, 0.95, 1000),
            "log_loss": Interval(0.0812, 0.06, 0.1, 0.95, 1000),
        },
        model_card="# Model card",
        grid=[{"mode": "l2", "lambda": 1e-3, "val_log_loss": 0.09}],
    )
    decision = RegistryDecision(
        model_name="wd-classifier",
        version="4",
        alias="champion",
        gate_metric="log_loss",
        new_value=0.0812,
        champion_version="3",
        champion_value=0.0911,
        reason="beats champion",
        model_uri="models:/wd-classifier/4",
    )
    return PipelineSummary(
        experiment_id="7",
        parent_run_id="r123",
        run_url="http://mlflow/#/experiments/7/runs/r123",
        tracking_uri=tracking_uri,
        evaluation=evaluation,
        registry=decision,
    )
