"""The same run asked for twice: the second returns the first's result with nothing trained, logged or
registered; a setting that matters, or a record that MLflow no longer backs, runs again."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from flows.pipeline import weight_decay_pipeline
from flows.reuse import REUSED_TAG
from flows.summary import PipelineSummary, summary_to_json
from tests.helpers.stores import isolated_store
from wd_pipeline.tracking import finished_runs, runs

pytestmark = pytest.mark.slow

MODEL = "wd-reuse"
EXPERIMENT = "reuse"
SMALL: dict[str, Any] = {
    "grid": [0.0, 1e-2],
    "epochs": 3,
    "folds": 1,
    "patience": 0,
    "bootstrap_samples": 100,
    "importance_repeats": 1,
    "model_name": MODEL,
    "experiment": EXPERIMENT,
}
FLAGS = [
    *("--grid", "0,1e-2", "--epochs", "3", "--folds", "1", "--patience", "0"),
    *("--bootstrap-samples", "100", "--importance-repeats", "1", "--model-name", MODEL, "--experiment", EXPERIMENT),
]


@dataclass(frozen=True)
class Recorded:
    """What MLflow holds after a step: every parent run's id and every model version, in order."""

    parents: list[str]
    versions: list[str]


@dataclass(frozen=True)
class Step:
    state: Any
    after: Recorded


@dataclass(frozen=True)
class Story:
    first: Step
    again: Step
    cli: subprocess.CompletedProcess[str]
    cli_after: Recorded
    changed: Step  # gate_margin changed: evaluation and registration again, units resumed
    after_run_deleted: Step  # the same change again, its MLflow run deleted in between
    after_version_deleted: Step  # the first settings again, the first run's version deleted in between


def recorded(client: MlflowClient) -> Recorded:
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    parents = client.search_runs(
        [experiment], "tags.mlflow.parentRunId IS NULL", order_by=["attributes.start_time ASC"], run_view_type=3
    )
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{MODEL}'"))
    return Recorded([run.info.run_id for run in parents], [str(v) for v in versions])


def step(client: MlflowClient, **overrides: Any) -> Step:
    state = weight_decay_pipeline(**{**SMALL, **overrides}, return_state=True)
    return Step(state, recorded(client))


def cli_run(folder: Path) -> subprocess.CompletedProcess[str]:
    """The same settings through the command line, against the session's Prefect API, with imports timed."""
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "PREFECT_API_URL": str(PREFECT_API_URL.value())}
    return subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "wd_pipeline.cli", "run", *FLAGS],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def story(prefect_api, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Story]:
    with isolated_store(tmp_path_factory.mktemp("reuse")) as folder:
        client = runs.get_client()
        first = step(client)
        again = step(client)
        cli = cli_run(folder)
        cli_after = recorded(client)
        changed = step(client, gate_margin=0.01)
        client.delete_run(changed.state.result().parent_run_id)
        after_run_deleted = step(client, gate_margin=0.01)
        client.delete_model_version(MODEL, first.state.result().registry.version)
        after_version_deleted = step(client)
        yield Story(first, again, cli, cli_after, changed, after_run_deleted, after_version_deleted)


def as_text(summary: PipelineSummary) -> str:
    """The summary as JSON text: equal texts, equal summaries (NaN included, which ``==`` never equals)."""
    return json.dumps(summary_to_json(summary), sort_keys=True, default=lambda value: value.item())


def flow_run_tags(state: Any) -> list[str]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return list(client.read_flow_run(state.state_details.flow_run_id).tags)


def test_a_second_identical_run_returns_the_first_result_and_records_nothing(story: Story) -> None:
    first, again = story.first.state.result(), story.again.state.result()
    assert story.again.state.type.value == "COMPLETED"
    assert again.reused_from and not first.reused_from
    assert as_text(replace(again, reused_from="")) == as_text(first)
    assert story.again.after == story.first.after  # no new MLflow run, no new model version
    assert len(story.first.after.parents) == 1 and story.first.after.versions == ["1"]
    assert REUSED_TAG in flow_run_tags(story.again.state) and REUSED_TAG not in flow_run_tags(story.first.state)
    tags = MlflowClient().get_run(first.parent_run_id).data.tags
    assert again.reused_from == (tags[runs.PREFECT_URL_TAG] or tags[runs.PREFECT_RUN_TAG])


def summary_artifact(state: Any) -> str:
    """The ``pipeline-summary`` markdown of one flow run."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey

    only = ArtifactFilter(
        key=ArtifactFilterKey(any_=["pipeline-summary"]),
        flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]),
    )
    with get_client(sync_client=True) as client:
        (artifact,) = client.read_artifacts(artifact_filter=only)
    return str(artifact.data)


def test_the_summary_artifact_says_the_result_was_reused(story: Story) -> None:
    first, again = summary_artifact(story.first.state), summary_artifact(story.again.state)
    assert "**Reused**" in again and "**Reused**" not in first
    assert story.again.state.result().reused_from in again
    then = f" ({finished_runs.DECIDED_THEN})"
    assert then in again and then not in first
    assert again.replace(again.splitlines()[2] + "\n", "").replace(then, "") == first  # otherwise the first run's


def test_the_command_line_reuses_without_tensorflow_and_says_so(story: Story) -> None:
    assert story.cli.returncode == 0, story.cli.stderr[-3000:]
    assert story.cli_after == story.first.after
    out = story.cli.stdout
    assert re.search(r"^reused        the result of the finished flow run \S+ \(same data and settings\)$", out, re.M)
    registry = re.search(r"^registry .*$", out, re.M)
    assert registry and f"v{story.first.state.result().registry.version} → @champion" in registry[0]
    assert registry[0].endswith(f"({finished_runs.DECIDED_THEN})")
    imported = {line.rsplit("|", 1)[-1].strip() for line in story.cli.stderr.splitlines() if "import time:" in line}
    assert "mlflow" in imported  # the import timing is there to read
    assert not {name for name in imported if name.split(".")[0] in {"tensorflow", "keras"}}
    assert "its result stands, nothing trained, logged or registered again" in story.cli.stderr


def test_a_setting_that_matters_evaluates_and_registers_again_on_resumed_units(story: Story) -> None:
    changed = story.changed.state.result()
    assert story.changed.state.type.value == "COMPLETED" and not changed.reused_from
    assert story.changed.after.parents == [*story.first.after.parents, changed.parent_run_id]
    assert story.changed.after.versions == ["1", "2"]
    client = MlflowClient()
    children = client.search_runs([changed.experiment_id], f"tags.mlflow.parentRunId = '{changed.parent_run_id}'")
    assert children and {child.data.tags["resumed"] for child in children} == {"true"}  # the refit too
    assert client.get_run(changed.parent_run_id).data.metrics["time_training_seconds"] == 0.0


def test_a_deleted_mlflow_run_makes_the_record_stale(story: Story) -> None:
    redone = story.after_run_deleted.state.result()
    assert story.after_run_deleted.state.type.value == "COMPLETED" and not redone.reused_from
    assert redone.parent_run_id not in story.changed.after.parents
    assert story.after_run_deleted.after.versions == ["1", "2", "3"]


def test_a_deleted_model_version_makes_the_record_stale(story: Story) -> None:
    redone = story.after_version_deleted.state.result()
    assert story.after_version_deleted.state.type.value == "COMPLETED" and not redone.reused_from
    assert redone.parent_run_id not in story.after_run_deleted.after.parents
    assert story.after_version_deleted.after.versions == ["2", "3", "4"]
