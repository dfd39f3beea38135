"""The training data's reference travels with the model; drift reports land on the run that measured them.

The reference (the training split's profile, :mod:`wd_pipeline.data.profile`) is logged among
the model's own artifacts, so whoever holds a model URI — ``score``, or the next pipeline run
asking about the current champion — reads it from the registry alone, without the work folder
that trained the model.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from wd_pipeline.data.profile import SplitProfile

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from wd_pipeline.data.drift import DriftReport

REFERENCE_FILE = "reference_profile.json"
REFERENCE_ARTIFACT = "reference_profile"  # its key among the pyfunc model's artifacts
DRIFT_JSON, DRIFT_MARKDOWN = "drift/drift.json", "drift/drift.md"


def write_reference(profile: SplitProfile, folder: str | Path) -> Path:
    """The reference as the JSON file logged with the model."""
    path = Path(folder) / REFERENCE_FILE
    path.write_text(json.dumps(profile.to_dict(), indent=2))
    return path


def model_reference(model_uri: str) -> SplitProfile | None:
    """The training split's profile logged with a registered model; None for a model logged without one.

    Whether there is one is read from the model's own list of artifacts, so a reference that
    exists but cannot be read fails loudly instead of passing for "no reference".
    """
    from mlflow.artifacts import download_artifacts
    from mlflow.models import get_model_info

    from wd_pipeline.tracking.registry import require_registry_uri

    uri = require_registry_uri(model_uri)
    logged = get_model_info(uri).flavors.get("python_function", {}).get("artifacts") or {}
    if REFERENCE_ARTIFACT not in logged:
        return None
    with tempfile.TemporaryDirectory() as folder:
        local = download_artifacts(artifact_uri=f"{uri}/{logged[REFERENCE_ARTIFACT]['path']}", dst_path=folder)
        return SplitProfile.from_dict(json.loads(Path(local).read_text()))


def log_drift(client: MlflowClient, run_id: str, report: DriftReport) -> None:
    """The report as JSON and markdown artifacts, ``drift.*`` metrics and tags."""
    from wd_pipeline.tracking import runs

    runs.log_text(client, run_id, json.dumps(report.to_dict(), indent=2), DRIFT_JSON)
    runs.log_text(client, run_id, report.markdown(), DRIFT_MARKDOWN)
    runs.log_metrics(client, run_id, {runs.metric_key(key): value for key, value in report.metrics().items()})
    runs.set_tags(client, run_id, report.tags())
