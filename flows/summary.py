"""What a pipeline run hands back, and the markdown a person reads in the Prefect UI after it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flows.evaluate import Evaluation
from wd_pipeline.tracking.finished_runs import DECIDED_THEN
from wd_pipeline.tracking.registry import RegistryDecision
from wd_pipeline.tracking.runs import model_version_url, point_run_name


@dataclass(frozen=True)
class PipelineSummary:
    """One pipeline run: where MLflow holds it, what evaluation chose and what the registry decided."""

    experiment_id: str
    parent_run_id: str
    run_url: str  # the parent run's MLflow UI page, or how to open a local store
    tracking_uri: str
    evaluation: Evaluation
    registry: RegistryDecision
    # The Prefect flow run (its UI page, else its id) that did the work, when this run returned
    # that run's result instead of repeating it (same data and settings); empty when it did the work.
    reused_from: str = ""


def summary_to_json(summary: PipelineSummary) -> dict[str, Any]:
    """The summary as plain values, for a finished run's record; :func:`summary_from_json` reads it back."""
    from pydantic import TypeAdapter

    return TypeAdapter(PipelineSummary).dump_python(summary)


def summary_from_json(raw: dict[str, Any]) -> PipelineSummary:
    from pydantic import TypeAdapter

    return TypeAdapter(PipelineSummary).validate_python(raw)


def worst_slice_lines(evaluation: Evaluation) -> list[str]:
    """The worst test slice, when the run was sliced (``--slice-by``)."""
    if evaluation.slices is None:
        return []
    return [f"- **Worst slice**: {evaluation.slices.worst_text()}"]


def summary_markdown(summary: PipelineSummary) -> str:
    selection, decision = summary.evaluation.selection, summary.registry
    metrics = " | ".join(f"{name} {value:.4f}" for name, value in summary.evaluation.test_metrics.items())
    reused = (
        [
            f"- **Reused**: same data and settings as the finished flow run {summary.reused_from}: its result "
            "stands, nothing was trained, logged or registered again",
        ]
        if summary.reused_from
        else []
    )
    lines = [
        "# Weight-decay pipeline",
        "",
        *reused,
        f"- **Chosen**: {selection.label} "
        f"(rule {selection.rule} on validation {selection.metric}; per mode: "
        + ", ".join(point_run_name(mode, value) for mode, value in selection.per_mode.items())
        + ")",
        f"- **Test metrics**: {metrics}",
        *worst_slice_lines(summary.evaluation),
        f"- **Registry**: `{decision.model_name}` v{decision.version} → `@{decision.alias}` — {decision.reason}"
        + (f" ({DECIDED_THEN})" if summary.reused_from else ""),
        f"- **MLflow parent run**: {summary.run_url}",
        f"- **Model**: `{decision.model_uri}`",
    ]
    # Only a tracking server has a UI page to link to; a local store has just the URI above.
    version_url = model_version_url(summary.tracking_uri, decision.model_name, decision.version)
    if version_url:
        lines.append(f"- **Model version in MLflow**: [{decision.model_name} v{decision.version}]({version_url})")
    return "\n".join(lines)
