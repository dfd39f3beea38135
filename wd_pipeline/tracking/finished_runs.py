"""Finished pipeline runs by what made them, so that asking for the same run again returns its result.

What a run produces and records depends on the data's content, on every setting except those
that only say where or how the work runs (``Changes.EXECUTION`` in :mod:`wd_pipeline.config`)
and on the code. After registration a run leaves a record in the work folder under those three;
a later run that finds a record for its own three, and finds the recorded MLflow parent run
still there and FINISHED and the registered version still there, returns the recorded result
instead of evaluating, logging and registering it again.

Records live in ``<work folder>/finished/<settings and code>/<data sha256>.json``: a run whose
settings were never finished looks up one folder and does not hash the data for it.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wd_pipeline import provenance, storage
from wd_pipeline.config import PipelineConfig

if TYPE_CHECKING:
    from mlflow import MlflowClient

FOLDER = "finished"
# Part of every record's key: raise it when what a record holds changes shape.
RECORD_FORMAT = 1
NOT_FOUND = "RESOURCE_DOES_NOT_EXIST"
# Beside the registry decision of a returned result: it is the earlier run's, and @champion may
# have moved since.
DECIDED_THEN = "decided by that run; @champion may have moved since"


@dataclass(frozen=True)
class FinishedRun:
    """Where a finished run is recorded in MLflow and what it handed back.

    ``summary`` is the flow's summary as plain JSON values: the flows own its type.
    """

    experiment_id: str
    parent_run_id: str
    model_name: str
    version: str
    flow_run: str  # the Prefect flow run that did the work: its UI page, else its id
    summary: dict[str, Any]


@functools.cache
def code_identity() -> dict[str, str]:
    """The code and packages of this process (they do not change while it runs)."""
    return provenance.collect().tags()


def settings_key(config: PipelineConfig) -> str:
    """The settings that change a run's result, with the code and the record format, as one short hash."""
    identity = {"settings": config.result_key(), "code": code_identity(), "format": RECORD_FORMAT}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def settings_folder(config: PipelineConfig) -> storage.Location:
    return storage.join(config.work_dir, FOLDER, settings_key(config))


def record_location(config: PipelineConfig, data_sha256: str) -> storage.Location:
    return storage.join(settings_folder(config), f"{data_sha256}.json")


def may_have_record(config: PipelineConfig) -> bool:
    """Whether a run with these settings and this code ever finished here, whatever its data.

    Cheap (the data is not read): the command line asks it to decide whether to load
    TensorFlow before the flow starts.
    """
    return config.reuse == "finished" and storage.exists(settings_folder(config))


def data_sha256(config: PipelineConfig) -> str:
    """The data's content hash, as ingest computes it for the split manifest."""
    from wd_pipeline.data.sources import locate, read_source

    return read_source(locate(config.data)).fingerprint().sha256


def find(config: PipelineConfig) -> FinishedRun | None:
    """The record of a finished run with this data, these settings and this code; None when there is none.

    Only the record: whether MLflow still holds that run is :func:`why_stale`'s question.
    """
    if not may_have_record(config):
        return None
    location = record_location(config, data_sha256(config))
    if not storage.exists(location):
        return None
    raw = json.loads(storage.read_text(location))
    if raw.get("format") != RECORD_FORMAT:
        return None
    return FinishedRun(**raw["run"])


def record(config: PipelineConfig, data_sha256: str, run: FinishedRun) -> storage.Location:
    """Write the record of a finished run, whole or not at all; returns where."""
    location = record_location(config, data_sha256)
    if not storage.is_remote(location):
        Path(location).parent.mkdir(parents=True, exist_ok=True)
    content = {
        "format": RECORD_FORMAT,
        "data_sha256": data_sha256,
        "settings": config.result_key(),
        "code": code_identity(),
        "run": asdict(run),
    }
    # NaN (a standard error of one fold) stays NaN: Python's json reads back what it writes.
    storage.write_text(location, json.dumps(content, indent=1, default=_plain))
    return location


def _plain(value: Any) -> Any:
    """NumPy scalars (in the grid's rows) as Python numbers."""
    item = getattr(value, "item", None)
    if item is None:
        raise TypeError(f"{type(value).__name__} is not JSON serialisable")
    return item()


def why_stale(client: MlflowClient, run: FinishedRun, experiment: str) -> str | None:
    """Why the recorded result no longer stands in this tracking store, or None when it does.

    It stands while its parent run exists, is FINISHED and not deleted, in the experiment of
    that name, and the model version it registered still exists and was made by that run.
    A store that cannot be reached raises: the caller decides.
    """
    from mlflow.exceptions import MlflowException

    try:
        parent = client.get_run(run.parent_run_id)
    except MlflowException as exc:
        if exc.error_code == NOT_FOUND:
            return f"its MLflow run {run.parent_run_id} is not in this tracking store"
        raise
    if parent.info.lifecycle_stage != "active":
        return f"its MLflow run {run.parent_run_id} was deleted"
    if parent.info.status != "FINISHED":
        return f"its MLflow run {run.parent_run_id} is {parent.info.status}"
    found = client.get_experiment(parent.info.experiment_id)
    if parent.info.experiment_id != run.experiment_id or found.name != experiment or found.lifecycle_stage != "active":
        return f"its MLflow run {run.parent_run_id} is no longer in the active experiment {experiment!r}"
    try:
        version = client.get_model_version(run.model_name, run.version)
    except MlflowException as exc:
        if exc.error_code == NOT_FOUND:
            return f"its model version {run.model_name} v{run.version} no longer exists"
        raise
    if version.run_id != run.parent_run_id:
        return f"model version {run.model_name} v{run.version} now comes from another run"
    return None
