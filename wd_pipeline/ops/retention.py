"""Retention: what `wd-pipeline gc` may remove, and removing it.

Three kinds of things pile up: trained units (``WORK/points/KEY``), splits
(``WORK/splits/KEY``) and the MLflow artifacts of pipeline runs (plots, cards, datasets).
A thing is *needed* when a pipeline run that must be kept used it; a run must be kept when

- a version it registered carries a protected alias (``@champion``, ``@challenger``),
- it started at or after the cut-off, or
- it is still running.

Everything a kept run used stays: its own artifacts and those of its child runs, the split
folder it trained on (the ``wd.splits`` tag) and every unit its child runs logged (their
``unit_key`` tags). A work-folder entry that no kept run names is removed only when nothing in
it changed since the cut-off either, so a run that is writing units before it logs them
keeps them. Logged models (what registered versions load) are never touched: a version
without an alias may still be promoted or rolled back to.

The work folder is read through fsspec, so a local folder and an ``s3://`` URL are handled
alike; MLflow artifacts go through MLflow's own artifact repositories (local, S3 or proxied
by the tracking server). The library never imports Prefect; MLflow is imported lazily.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from wd_pipeline.errors import ConfigError
from wd_pipeline.tracking.runs import OWNER_TAG, PARENT_RUN_TAG, SPLITS_TAG

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Run

PROTECTED_ALIASES = ("champion", "challenger")
UNIT_TAG = "unit_key"
REMOVED_TAG = "wd.retention.artifacts_removed"
WORK_KINDS = {"points": "unit", "splits": "splits"}
AGE = re.compile(r"(\d+)([smhdw])")
UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def parse_age(text: str) -> dt.timedelta:
    """``30d``, ``12h``, ``2w``, ``90m``, ``45s``: a positive whole number and one unit."""
    match = AGE.fullmatch(text.strip())
    if match is None or int(match.group(1)) == 0:
        raise ConfigError(
            f"--older-than {text!r} is not an age: give a positive whole number and a unit "
            "(s, m, h, d or w), e.g. --older-than 30d"
        )
    return dt.timedelta(seconds=int(match.group(1)) * UNIT_SECONDS[match.group(2)])


@dataclass(frozen=True)
class Removable:
    """One thing the plan removes: a work-folder entry or one run's artifacts."""

    kind: str  # "unit", "splits" or "artifacts"
    location: str  # URL or path of the entry; the artifact URI of the run
    size: int  # bytes
    run_id: str | None = None  # the run whose artifacts these are

    def line(self) -> str:
        return f"{self.kind:<9} {human_size(self.size):>9}  {self.location}"


@dataclass(frozen=True)
class Needs:
    """What the kept runs use: their ids, split folder names and unit keys."""

    runs: frozenset[str]
    splits: frozenset[str]
    split_prefixes: frozenset[str]  # for runs from before the splits tag: their source's sha256 prefix
    units: frozenset[str]

    def keeps_splits(self, name: str) -> bool:
        return name in self.splits or any(name.startswith(prefix) for prefix in self.split_prefixes)


@dataclass(frozen=True)
class Plan:
    cutoff: dt.datetime
    remove: list[Removable] = field(default_factory=list)
    kept_runs: int = 0

    @property
    def total(self) -> int:
        return sum(item.size for item in self.remove)


def human_size(size: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"  # not reached


# ---------------------------------------------------------------- MLflow: which runs stay


def pipeline_runs(client: MlflowClient) -> list[Run]:
    """Every run of the active experiments that a pipeline run made: the parents and their descendants."""
    from mlflow.entities import ViewType

    experiment_ids = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ACTIVE_ONLY)]
    found: list[Run] = []
    token = None
    while experiment_ids:
        page = client.search_runs(experiment_ids, max_results=1000, page_token=token)
        found += list(page)
        token = page.token
        if not token:
            break
    by_id = {run.info.run_id: run for run in found}
    return [run for run in found if OWNER_TAG in root(run, by_id).data.tags]


def root(run: Run, by_id: dict[str, Run]) -> Run:
    """The top run of ``run``'s tree (itself when it has no known parent)."""
    seen = {run.info.run_id}
    while (parent := by_id.get(run.data.tags.get(PARENT_RUN_TAG, ""))) is not None and parent.info.run_id not in seen:
        seen.add(parent.info.run_id)
        run = parent
    return run


def protected_runs(client: MlflowClient) -> set[str]:
    """Runs that registered a version carrying a protected alias."""
    kept = set()
    for model in client.search_registered_models():
        for alias, version in (model.aliases or {}).items():
            if alias in PROTECTED_ALIASES:
                run_id = client.get_model_version(model.name, version).run_id
                if run_id:
                    kept.add(run_id)
    return kept


def needs(runs: Iterable[Run], protected: set[str], cutoff: dt.datetime) -> Needs:
    """What the kept trees use; a tree is kept when its top run or any run in it must stay."""
    runs = list(runs)
    by_id = {run.info.run_id: run for run in runs}
    cutoff_ms = cutoff.timestamp() * 1000
    kept_roots = {
        root(run, by_id).info.run_id
        for run in runs
        if run.info.run_id in protected or run.info.start_time >= cutoff_ms or run.info.status == "RUNNING"
    }
    kept = [run for run in runs if root(run, by_id).info.run_id in kept_roots]
    splits = {run.data.tags[SPLITS_TAG] for run in kept if SPLITS_TAG in run.data.tags}
    prefixes = {
        dataset.dataset.digest.split("-", 1)[0]
        for run in kept
        if SPLITS_TAG not in run.data.tags and run.info.run_id in kept_roots and run.inputs is not None
        for dataset in run.inputs.dataset_inputs
    }
    units = {run.data.tags[UNIT_TAG] for run in kept if UNIT_TAG in run.data.tags}
    return Needs(frozenset(r.info.run_id for r in kept), frozenset(splits), frozenset(prefixes), frozenset(units))


# ---------------------------------------------------------------- what to remove


def work_entries(work_dir: str) -> list[tuple[str, str, str, int, dt.datetime]]:
    """(kind, name, location, size, last change) of every unit and split folder in ``work_dir``."""
    from fsspec.core import url_to_fs

    fs, root_path = url_to_fs(work_dir)
    entries = []
    for folder, kind in WORK_KINDS.items():
        base = f"{root_path.rstrip('/')}/{folder}"
        if not fs.isdir(base):
            continue
        for info in fs.ls(base, detail=True):
            if info.get("type") != "directory":
                continue
            path = info["name"]
            files = fs.find(path, detail=True, withdirs=False).values()
            size = sum(int(item.get("size") or 0) for item in files)
            changed = max([modified(item) for item in files], default=modified(info))
            name = path.rstrip("/").rsplit("/", 1)[-1]
            entries.append((kind, name, location(fs, path), size, changed))
    return entries


def location(fs: Any, path: str) -> str:
    """A local entry as its path, a remote one as its URL (``s3://bucket/...``)."""
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return path if "file" in protocols else fs.unstrip_protocol(path)


def modified(info: dict[str, Any]) -> dt.datetime:
    """When an fsspec entry last changed: local files give ``mtime``, object stores ``LastModified``."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(key)
        if isinstance(value, int | float):
            return dt.datetime.fromtimestamp(value, dt.UTC)
        if isinstance(value, dt.datetime):
            return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    return dt.datetime.now(dt.UTC)  # unknown: treated as new, so never removed for its age


def artifact_size(artifact_uri: str) -> int:
    """Bytes under a run's artifact root (0 when it holds nothing)."""
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    repo = get_artifact_repository(artifact_uri)
    total, folders = 0, [None]
    while folders:
        for item in repo.list_artifacts(folders.pop()):
            if item.is_dir:
                folders.append(item.path)
            else:
                total += int(item.file_size or 0)
    return total


def make_plan(client: MlflowClient, work_dir: str | None, cutoff: dt.datetime) -> Plan:
    """Everything older than ``cutoff`` that no kept run needs; nothing is removed here."""
    runs = pipeline_runs(client)
    needed = needs(runs, protected_runs(client), cutoff)
    remove = [
        Removable(kind, location, size)
        for kind, name, location, size, changed in (work_entries(work_dir) if work_dir else [])
        if changed < cutoff and not (needed.keeps_splits(name) if kind == "splits" else name in needed.units)
    ]
    for run in runs:
        if run.info.run_id in needed.runs or REMOVED_TAG in run.data.tags:
            continue
        size = artifact_size(run.info.artifact_uri)
        if size:
            remove.append(Removable("artifacts", run.info.artifact_uri, size, run.info.run_id))
    return Plan(cutoff, remove, kept_runs=len(needed.runs))


def apply(client: MlflowClient | None, plan: Plan) -> list[Removable]:
    """Remove what ``plan`` lists; a run whose artifacts went is tagged, so the UI says why they are gone."""
    from fsspec.core import url_to_fs
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    from wd_pipeline.tracking import runs

    removed = []
    for item in plan.remove:
        if item.kind == "artifacts" and item.run_id:
            get_artifact_repository(item.location).delete_artifacts()
            stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
            runs.set_tags(client, item.run_id, {REMOVED_TAG: f"{stamp} by wd-pipeline gc"})
        else:
            fs, path = url_to_fs(item.location)
            fs.rm(path, recursive=True)
        removed.append(item)
    return removed
