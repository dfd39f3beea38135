"""MLflow tracking: where runs go and how a pipeline run is laid out in them.

Everything goes through an explicit :class:`~mlflow.MlflowClient` and explicit run ids:
MLflow's "active run" is per thread, and grid points are trained in worker threads.

Layout a user sees in the MLflow UI:
experiment = the pipeline's name; parent run = one pipeline run (config as params, Prefect
flow-run id as tag); one nested child run per grid point, named ``l2 λ=1e-03``.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from wd_pipeline import processes, provenance
from wd_pipeline.config import PROJECT_ROOT, PipelineConfig
from wd_pipeline.errors import TrackingError, first_line
from wd_pipeline.ml.modes import point_label

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow import MlflowClient

    from wd_pipeline.data.profile import DataProfile
    from wd_pipeline.ml.training import FitResult

DEFAULT_DB = "mlflow.db"
DEFAULT_ARTIFACTS = "mlartifacts"
MAX_BATCH = 1000  # MLflow's limit of metrics per log_batch call
PARENT_RUN_TAG = "mlflow.parentRunId"
PREFECT_RUN_TAG = "prefect.flow_run_id"
PREFECT_URL_TAG = "prefect.flow_run_url"

# MLflow's own defaults (7 retries, backoff factor 2, 120 s timeout) let one request to a dead
# server hang for minutes before anything is reported. These bound one request to
# 3 attempts: a refused connection fails in about 3 s (0 + 2 s backoff + ≤ 1 s jitter),
# a black-holed host in at most 3 × 10 s + 3 s ≈ 33 s. Set the variables to override.
HTTP_DEFAULTS: dict[str, str] = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
UNREACHABLE_HINT = "Check MLFLOW_TRACKING_URI and that the server is running"
CREDENTIALS_HINT = "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to a user of that server"
OWNER_TAG = "wd.owner"
CLOSED_TAG = "wd.closed_as_orphan"
SPLITS_TAG = "wd.splits"  # the work folder's split folder a pipeline run trained on (retention keeps it)


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set, else a SQLite file in the working directory."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(DEFAULT_DB).resolve()}"


def is_local_store(uri: str) -> bool:
    return uri.startswith("sqlite:") or uri.startswith("file:") or "://" not in uri


def bound_http_requests() -> None:
    """Apply :data:`HTTP_DEFAULTS` where the user set nothing; MLflow reads them per request."""
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)


def unreachable_reason(exc: BaseException) -> str | None:
    """Why the server could not be talked to at all (refused, no answer, unknown host), else None.

    Walks the cause chain MLflow builds (MlflowException → requests → urllib3 → socket):
    a server that answered with an error is *not* unreachable, and may deserve a retry.
    """
    import requests

    for current in _causes(exc):
        if isinstance(current, ConnectionRefusedError):
            return "connection refused"
        if isinstance(current, requests.exceptions.Timeout):
            return f"no answer within {os.environ.get('MLFLOW_HTTP_REQUEST_TIMEOUT', '120')} s"
        if type(current).__name__ == "NameResolutionError" or isinstance(current, requests.exceptions.ConnectionError):
            text = str(current)
            if "Connection refused" in text:
                return "connection refused"
            if "NameResolution" in text or "Name or service not known" in text:
                return "host name not found"
    return None


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions behind it: MLflow re-raises request failures inside ``except``."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


TRANSIENT_TEXT = ("database is locked", "Connection aborted", "RemoteDisconnected")
TRANSIENT_STATUS = (429, 500, 502, 503, 504)


def is_transient(exc: BaseException) -> bool:
    """Whether a failed tracking call may succeed if simply repeated later.

    True for a server that is down, restarting or overloaded: refused or reset connections,
    timeouts, HTTP 5xx and 429, SQLite's "database is locked". False for everything else (a
    bad request, a deleted run, a bug): repeating those only delays the error message.
    """
    import requests
    from mlflow.exceptions import MlflowException, RestException

    for current in _causes(exc):
        if isinstance(
            current, (requests.exceptions.ConnectionError, requests.exceptions.Timeout, ConnectionError, TimeoutError)
        ):
            return True
        # Only what the server answered: MLflow's own default error code is also 500.
        answered = isinstance(current, RestException) or str(current).startswith("API request to")
        if answered and isinstance(current, MlflowException) and current.get_http_status_code() in TRANSIENT_STATUS:
            return True
        if any(text in str(current) for text in TRANSIENT_TEXT):
            return True
    return False


def refused_reason(exc: BaseException) -> str | None:
    """Why a server behind basic auth turned the request away (HTTP 401 or 403), else None."""
    status = getattr(exc, "get_http_status_code", lambda: None)()
    return {401: "HTTP 401, not authenticated", 403: "HTTP 403, permission denied"}.get(status)


def get_client() -> MlflowClient:
    """A client on the configured store; the fluent API is pointed at the same store."""
    bound_http_requests()
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """Id of the experiment ``name``, created on first use.

    With the embedded SQLite store the artifacts go to ``./mlartifacts`` beside it, so
    ``wd-pipeline ui`` in that folder shows plots and models too.
    """
    try:
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            if experiment.lifecycle_stage == "deleted":
                raise TrackingError(
                    f"MLflow experiment {name!r} is deleted: restore it (mlflow experiments restore) "
                    "or pass another --experiment"
                )
            return experiment.experiment_id
        location = Path(DEFAULT_ARTIFACTS).resolve().as_uri() if is_local_store(client.tracking_uri) else None
        return _create_experiment(client, name, location)
    except TrackingError:
        raise
    except Exception as exc:
        reason = unreachable_reason(exc)
        if reason is not None:
            attempts = int(os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")) + 1
            raise TrackingError(
                f"cannot reach the MLflow tracking server at {client.tracking_uri}: {reason} "
                f"({attempts} attempts). {UNREACHABLE_HINT}"
            ) from exc
        refused = refused_reason(exc)
        if refused is not None:
            raise TrackingError(
                f"the MLflow tracking server at {client.tracking_uri} refused the request ({refused}): {CREDENTIALS_HINT}"
            ) from exc
        raise TrackingError(
            f"cannot use the MLflow tracking store at {client.tracking_uri}: {first_line(exc, 300)}. {UNREACHABLE_HINT}"
        ) from exc


def _create_experiment(client: MlflowClient, name: str, location: str | None) -> str:
    """Create ``name``; a concurrent run that created it first is fine: use theirs."""
    from mlflow.exceptions import MlflowException

    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException as exc:
        existing = client.get_experiment_by_name(name) if exc.error_code == "RESOURCE_ALREADY_EXISTS" else None
        if existing is None:
            raise
        return existing.experiment_id


def start_parent_run(
    client: MlflowClient, experiment_id: str, config: PipelineConfig, tags: Mapping[str, str] | None = None
) -> str:
    """Create the parent run of one pipeline run, with the whole config as params and the code's provenance as tags."""
    from mlflow.entities import Param

    tags = {**provenance.collect().tags(), **dict(tags or {}), OWNER_TAG: processes.identity()}
    run = client.create_run(experiment_id, run_name=tags.get("run_name"), tags=tags)
    params = [Param(key, value) for key, value in config.params().items()]
    client.log_batch(run.info.run_id, params=params)
    return run.info.run_id


def close_orphaned_runs(client: MlflowClient, experiment_id: str) -> list[str]:
    """Mark RUNNING runs whose pipeline process is gone as KILLED; returns their ids.

    A ``kill -9``, an OOM kill or a power cut leaves the parent run and its open children
    RUNNING for ever, which the UI shows as still in progress. Rule: a RUNNING run is closed
    when the pipeline run at the top of its ``mlflow.parentRunId`` chain was opened by a
    process (:data:`OWNER_TAG`, host + pid + start time) on *this* host that no longer
    runs (a zombie has exited: see :func:`wd_pipeline.processes.alive`). It is exact where it applies and never touches a live run: runs of other hosts
    and runs without the tag (scoring, hand-made runs) are left alone. Rejected rules: the
    Prefect flow run's state (a ``kill -9`` under the ephemeral API leaves it RUNNING too),
    and an age limit (kills long legitimate runs, misses a crash a minute ago).
    """
    runs: dict[str, Any] = {}
    token = None
    while True:
        page = client.search_runs(
            [experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000, page_token=token
        )
        runs.update({run.info.run_id: run for run in page})
        token = page.token
        if not token:
            break
    known = dict(runs)
    closed = []
    for run_id, run in runs.items():
        root = run
        for _ in range(10):  # pipeline → point → fold: never deeper; guards against a cycle
            parent_id = root.data.tags.get(PARENT_RUN_TAG)
            if not parent_id:
                break
            if parent_id not in known:
                known[parent_id] = client.get_run(parent_id)
            root = known[parent_id]
        owner = root.data.tags.get(OWNER_TAG)
        if owner and processes.identity_alive(owner) is False:
            set_tags(client, run_id, {CLOSED_TAG: f"owner process {owner} is gone"})
            client.set_terminated(run_id, status="KILLED")
            closed.append(run_id)
    return closed


def point_run_name(mode: str, value: float) -> str:
    """``l2 λ=1e-03`` or ``dropout p=0.2``: readable in the MLflow UI's run list."""
    return point_label(mode, value)


def start_child_run(client: MlflowClient, parent_run_id: str, name: str, tags: Mapping[str, str] | None = None) -> str:
    """The run ``name`` nested under ``parent_run_id``, created the first time only.

    A task retried after a tracking error calls this again; names are unique under one
    parent (grid point, fold, refit), so it finds the run its first attempt created instead
    of adding a twin. MLflow nests runs through the parentRunId tag.
    """
    parent = client.get_run(parent_run_id)
    existing = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`{PARENT_RUN_TAG}` = '{parent_run_id}' and attributes.run_name = '{name}'",
        max_results=1,
    )
    if existing:
        return existing[0].info.run_id
    run = client.create_run(
        parent.info.experiment_id, run_name=name, tags={PARENT_RUN_TAG: parent_run_id, **dict(tags or {})}
    )
    return run.info.run_id


def metric_stamp(client: MlflowClient, run_id: str) -> int:
    """The timestamp every metric of a run carries: the run's start time.

    MLflow's SQL store keys a metric row on (run, key, step, timestamp, value) and skips rows
    already present, so with a fixed timestamp logging the same values again stores nothing
    new: a retried ``log_batch`` (whole, or half applied when the server went away) leaves
    each epoch's step in the history exactly once. Wall-clock time per epoch is not lost:
    a unit's epochs were always logged together, after training.
    """
    return client.get_run(run_id).info.start_time


def log_fit(client: MlflowClient, run_id: str, result: FitResult) -> None:
    """Params, per-epoch curves, final metrics, stopped epoch and weight norms of one trained unit.

    Idempotent (see :func:`metric_stamp`): a retry after a failure part-way re-logs the unit
    without duplicating a step. MLflow applies params, metrics and tags of one ``log_batch``
    in separate transactions, and a history over :data:`MAX_BATCH` values takes several calls.
    """
    from mlflow.entities import Metric, Param, RunTag

    now = metric_stamp(client, run_id)
    metrics = [
        Metric(name, float(value), now, step)
        for name, series in result.history.items()
        for step, value in enumerate(series)
    ]
    finals = {
        **{f"train_{k}": v for k, v in result.train_metrics.items()},
        **{f"val_{k}": v for k, v in result.val_metrics.items()},
        "weight_norm": result.weight_norm,
        "penalized_weight_norm": result.penalized_weight_norm,
        "penalty": result.penalty,
        "stopped_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "train_seconds": result.train_seconds,
    }
    # Per-epoch series such as ``val_accuracy`` already end with their final value.
    metrics += [Metric(name, float(value), now, 0) for name, value in finals.items() if name not in result.history]
    params = [Param(key, str(value)) for key, value in result.settings.items()]
    tags = [RunTag("resumed", str(result.resumed).lower()), RunTag("unit_key", result.key)]
    for start in range(0, max(len(metrics), 1), MAX_BATCH):
        chunk = metrics[start : start + MAX_BATCH]
        client.log_batch(run_id, metrics=chunk, params=params if start == 0 else [], tags=tags if start == 0 else [])


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, Any]) -> None:
    from mlflow.entities import Param

    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])


def metric_key(name: str) -> str:
    """``name`` as MLflow accepts it in a metric key (letters, digits, ``_ - . / space``); others become ``_``."""
    return re.sub(r"[^\w\-. /]", "_", name)


def log_metrics(client: MlflowClient, run_id: str, values: Mapping[str, float]) -> None:
    """Values at step 0, stamped like :func:`log_fit` so that logging them again adds nothing."""
    from mlflow.entities import Metric

    now = metric_stamp(client, run_id)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in values.items()])


def set_tags(client: MlflowClient, run_id: str, tags: Mapping[str, Any]) -> None:
    from mlflow.entities import RunTag

    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])


SCHEMA_SAMPLE_ROWS = 1000


def log_dataset(
    client: MlflowClient,
    run_id: str,
    manifest: Mapping[str, Any],
    splits: Mapping[str, Any],
    rows: Mapping[str, int] | None = None,
) -> None:
    """Record the splits as MLflow dataset inputs (digest = source sha256) and the manifest.

    MLflow infers a dataset's schema by testing every value for None/NaN in Python (26 s
    for 200k rows × 31 columns here), so it is inferred from the first rows: their column
    types are the split's, though a column may have missing values only further down (the
    manifest's schema and profile are exact). The profile (row and element counts) is still
    that of the whole split: ``rows`` gives each split's row count when ``splits`` holds only
    its first rows.
    """
    import mlflow
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    inputs = []
    for name, frame in splits.items():
        dataset = mlflow.data.from_pandas(
            frame.head(SCHEMA_SAMPLE_ROWS),
            source=manifest["source"] if "://" in manifest["source"] else str(manifest["source"]),
            targets=manifest["label"],
            name=f"{Path(manifest['source']).name}:{name}",
            digest=f"{manifest['sha256'][:12]}-{name}",
        )
        count = rows[name] if rows is not None else len(frame)
        profile = {"num_rows": count, "num_elements": count * frame.shape[1]}
        fields = {**dataset.to_dict(), "profile": json.dumps(profile)}
        inputs.append(DatasetInput(Dataset(**fields), tags=[InputTag(MLFLOW_DATASET_CONTEXT, name)]))
    _log_inputs(client, run_id, inputs)
    log_text(client, run_id, json.dumps(manifest, indent=2), "data/manifest.json")
    set_tags(client, run_id, {"data.sha256": manifest["sha256"], "data.source": manifest["source"]})


def log_profile(client: MlflowClient, run_id: str, profile: DataProfile) -> None:
    """The per-split profile of the data, as JSON to read back and as markdown tables to read."""
    log_text(client, run_id, json.dumps(profile.to_dict(), indent=2), "data/profile.json")
    log_text(client, run_id, profile.markdown(), "data/profile.md")


DUPLICATE_ROW_TEXT = ("UNIQUE constraint failed", "duplicate key value", "Duplicate entry")


def _log_inputs(client: MlflowClient, run_id: str, inputs: list[Any], attempts: int = 3) -> None:
    """``log_inputs``, repeated when a concurrent run inserted the same dataset first.

    MLflow's SQL store looks a dataset up and inserts it if missing, without a lock: two
    runs of the same data starting together both insert, and the second fails on the
    unique (experiment, name, digest) key. Repeated, the lookup finds the row and only
    links it to this run.
    """

    from mlflow.exceptions import MlflowException

    for attempt in range(attempts):
        try:
            client.log_inputs(run_id, datasets=inputs)
            return
        except MlflowException as exc:
            if attempt == attempts - 1 or not any(text in str(exc) for text in DUPLICATE_ROW_TEXT):
                raise
            time.sleep(0.2 * (attempt + 1))


def log_text(client: MlflowClient, run_id: str, text: str, artifact_file: str) -> None:
    client.log_text(run_id, text, artifact_file)


def log_figure(client: MlflowClient, run_id: str, figure: Figure, artifact_file: str) -> None:
    client.log_figure(run_id, figure, artifact_file)


def log_table_csv(client: MlflowClient, run_id: str, rows: Iterable[Mapping[str, Any]], artifact_file: str) -> None:
    import pandas as pd

    buffer = io.StringIO()
    pd.DataFrame(list(rows)).to_csv(buffer, index=False)
    client.log_text(run_id, buffer.getvalue(), artifact_file)


def finish(client: MlflowClient, run_id: str, status: str = "FINISHED") -> None:
    client.set_terminated(run_id, status=status)


def run_url(client: MlflowClient, experiment_id: str, run_id: str) -> str:
    """Where a person opens this run: a UI link for servers, the run id for local stores."""
    base = client.tracking_uri
    if base.startswith("http"):
        return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"{ui_command(base)}  →  experiment {experiment_id}, run {run_id}"


def model_version_url(tracking_uri: str, name: str, version: str | int) -> str | None:
    """The MLflow UI page of a registered model version; None when no server serves a UI."""
    if not tracking_uri.startswith("http"):
        return None

    return f"{tracking_uri.rstrip('/')}/#/models/{quote(name, safe='')}/versions/{version}"


def ui_command(tracking_uri: str) -> str:
    """A command that opens the MLflow UI on ``tracking_uri``'s store, pasted in any folder."""
    script = PROJECT_ROOT / "wd"
    launcher = f"{shlex.quote(str(script))} ui" if script.is_file() else "wd-pipeline ui"
    if tracking_uri.startswith("sqlite:///"):
        store = Path(tracking_uri.removeprefix("sqlite:///")).resolve()
        if store.name == "mlflow.db":  # the name ``ui`` looks for in the working directory
            return f"cd {shlex.quote(str(store.parent))} && {launcher}"
    return f"MLFLOW_TRACKING_URI={shlex.quote(tracking_uri)} {launcher}"
