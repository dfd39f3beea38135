"""Prefect flow ``ingest``: read, validate, split, and record the data, its schema and profile."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
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
        # The dataset's schema comes from its first rows: only those are read.
        heads = {
            name: splits.read_split_head(split_folder, name, runs.SCHEMA_SAMPLE_ROWS).frame(manifest["label"])
            for name in splits.SPLITS
        }
        sizes = {name: int(manifest["splits"][name]["rows"]) for name in splits.SPLITS}
        client = runs.get_client()
        runs.set_tags(client, parent_run_id, {runs.SPLITS_TAG: Path(split_folder).name})
        runs.log_dataset(client, parent_run_id, manifest, heads, sizes)
        runs.log_profile(client, parent_run_id, splits.read_profile(split_folder))


@flow(name="ingest")
def ingest(config: PipelineConfig, parent_run_id: str) -> str:
    """Returns the folder holding the train / validation / test Parquet files and manifest."""
    split_folder = prepare_splits(config)
    manifest = splits.read_manifest(split_folder)
    schema = splits.read_schema(split_folder)
    sizes = ", ".join(f"{name} {part['rows']}" for name, part in manifest["splits"].items())
    get_run_logger().info(
        "Data %s (sha256 %s…, %d file%s): %d rows, %d features (%d numeric, %d categorical); splits: %s",
        manifest["source"],
        manifest["sha256"][:12],
        len(manifest["files"]),
        "" if len(manifest["files"]) == 1 else "s",
        manifest["rows"],
        len(schema.columns),
        len(schema.numeric()),
        len(schema.categorical()),
        sizes,
    )
    log_splits(parent_run_id, split_folder)
    create_table_artifact(
        splits.read_profile(split_folder).table_rows(),
        key="data-profile",
        description=f"Per split and feature column: missing share, spread or top categories ({manifest['source']})",
    )
    return split_folder
