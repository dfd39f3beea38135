"""Prefect flow ``ingest``: read, validate, split, and record the data as an MLflow input."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.retry import TRACKING_TASK
from wd_pipeline import timing
from wd_pipeline.config import PipelineConfig
from wd_pipeline.data import splits
from wd_pipeline.tracking import runs


@task(cache_policy=NO_CACHE, name="prepare-splits")
def prepare_splits(config: PipelineConfig) -> str:
    with timing.measure("ingest_prepare"):
        return str(splits.prepare(config))


@task(cache_policy=NO_CACHE, name="log-dataset", **TRACKING_TASK)
def log_splits(parent_run_id: str, split_folder: str) -> None:
    with timing.measure("tracking_dataset"):
        manifest = splits.read_manifest(split_folder)
        frames = {name: splits.load_split(split_folder, name).frame(manifest["label"]) for name in splits.SPLITS}
        runs.log_dataset(runs.get_client(), parent_run_id, manifest, frames)


@flow(name="ingest")
def ingest(config: PipelineConfig, parent_run_id: str) -> str:
    """Returns the folder holding the train / validation / test Parquet files and manifest."""
    split_folder = prepare_splits(config)
    manifest = splits.read_manifest(split_folder)
    sizes = ", ".join(f"{name} {part['rows']}" for name, part in manifest["splits"].items())
    get_run_logger().info(
        "Data %s (sha256 %s…): %d rows, %d features; splits: %s",
        manifest["source"],
        manifest["sha256"][:12],
        manifest["rows"],
        len(manifest["features"]),
        sizes,
    )
    log_splits(parent_run_id, split_folder)
    return split_folder
