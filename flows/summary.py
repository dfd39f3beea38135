"""The markdown a person reads in the Prefect UI after a pipeline run."""

from __future__ import annotations

from typing import Any

from wd_pipeline.config import format_lambda
from wd_pipeline.tracking.runs import model_version_url


def summary_markdown(summary: dict[str, Any]) -> str:
    decision = summary["registry"]
    metrics = " | ".join(f"{name} {value:.4f}" for name, value in summary["test_metrics"].items())
    lines = [
        "# Weight-decay pipeline",
        "",
        f"- **Chosen**: {summary['chosen_mode']} λ = {format_lambda(summary['chosen_lambda'])} "
        f"(rule {summary['rule']} on validation {summary['selection_metric']}; per mode: "
        + ", ".join(f"{mode} λ={format_lambda(lam)}" for mode, lam in summary["per_mode"].items())
        + ")",
        f"- **Test metrics**: {metrics}",
        f"- **Registry**: `{decision['model_name']}` v{decision['version']} → `@{decision['alias']}` — {decision['reason']}",
        f"- **MLflow parent run**: {summary['run_url']}",
        f"- **Model**: `{decision['model_uri']}`",
    ]
    # Only a tracking server has a UI page to link to; a local store has just the URI above.
    version_url = model_version_url(summary.get("tracking_uri", ""), decision["model_name"], decision["version"])
    if version_url:
        lines.append(f"- **Model version in MLflow**: [{decision['model_name']} v{decision['version']}]({version_url})")
    return "\n".join(lines)
