"""Drift against the champion's training data, end to end through Prefect, on a sample of the census table.

A champion is registered from the sample; a copy with one column moved on purpose is scored (the report
must name that column, and only it at alert level, warn about it, and still score every row); then the
pipeline trains on the moved copy, and the new version must stay challenger with the reason drift."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from flows.pipeline import weight_decay_pipeline
from flows.score import score
from tests.conftest import PROJECT_ROOT
from tests.helpers.stores import isolated_store
from wd_pipeline.tracking import registry

pytestmark = pytest.mark.slow

MODEL = "drift-census"
SHIFTED = "hours-per-week"
ROWS = 1200


@pytest.fixture(scope="module")
def census(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded sample of the census table, and beside it the same rows with ``hours-per-week`` 25 hours longer."""
    folder = tmp_path_factory.mktemp("census")
    sample = pd.read_parquet(PROJECT_ROOT / "data" / "adult.parquet").sample(ROWS, random_state=12)
    sample = sample.reset_index(drop=True)
    sample.to_parquet(folder / "sample.parquet", index=False)
    sample.assign(**{SHIFTED: sample[SHIFTED] + 25}).to_parquet(folder / "shifted.parquet", index=False)
    return folder


@pytest.fixture
def warnings_logged() -> Iterator[list[str]]:
    """Messages of the warnings Prefect's run loggers emit (they do not reach the root logger)."""
    messages: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.WARNING:
                messages.append(record.getMessage())

    handler = Collect()
    logger = logging.getLogger("prefect")
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


def run(data: Path):
    state = weight_decay_pipeline(
        data=str(data),
        label="income",
        positive_class=">50K",
        grid=[0.0],
        epochs=8,
        folds=1,
        bootstrap_samples=100,
        model_name=MODEL,
        return_state=True,
    )
    assert state.type.value == "COMPLETED", state.message
    return state.result()


def drift_artifacts() -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["drift"])))


def test_a_shifted_column_is_named_when_scoring_and_keeps_a_retrained_model_challenger(
    prefect_api, tmp_path: Path, census: Path, warnings_logged: list[str]
) -> None:
    with isolated_store(tmp_path):
        client = MlflowClient()
        first = run(census / "sample.parquet")
        assert first.registry.alias == registry.CHAMPION, first.registry.reason
        assert first.registry.drift_level == ""  # no champion before it: nothing to compare
        assert not any(key.startswith("drift.") for key in client.get_run(first.parent_run_id).data.tags)
        before = len(drift_artifacts())

        scored = score(data=str(census / "shifted.parquet"), output=str(tmp_path / "scored.parquet"), model_name=MODEL)
        report = scored.drift
        assert report is not None and report.worst.column == SHIFTED
        assert report.alerts == (SHIFTED,)
        assert len(pd.read_parquet(scored.output)) == ROWS  # drift warns, the file is still scored
        assert any("Drift:" in message and SHIFTED in message for message in warnings_logged)
        scoring = client.get_run(scored.run_id)
        assert scoring.data.tags["drift.level"] == "alert"
        assert SHIFTED in scoring.data.tags["drift.columns"].split(",")
        assert scoring.data.metrics[f"drift.psi.{SHIFTED}"] == pytest.approx(report.max_psi)
        assert scoring.data.metrics["drift.max_psi"] >= 0.25
        stored = json.loads(Path(client.download_artifacts(scored.run_id, "drift/drift.json")).read_text())
        assert stored["drifted"][0] == SHIFTED
        assert len(drift_artifacts()) == before + 1

        second = run(census / "shifted.parquet")
        decision = second.registry
        assert decision.alias == registry.CHALLENGER and decision.reason.startswith("drift"), decision.reason
        assert SHIFTED in decision.reason and decision.drift_level == "alert"
        version = client.get_model_version(MODEL, decision.version)
        assert version.tags["gate.drift_level"] == "alert"
        assert str(client.get_model_version_by_alias(MODEL, registry.CHAMPION).version) == first.registry.version
        parent = client.get_run(second.parent_run_id)
        assert parent.data.tags["drift.level"] == "alert"
        assert parent.data.tags["drift.columns"].split(",")[0] == SHIFTED
        assert parent.data.metrics["drift.max_psi"] >= 0.25
        card = Path(client.download_artifacts(second.parent_run_id, "model_card.md")).read_text()
        assert "## Drift against the champion's training data" in card
        assert "## Drift against the champion's training data" in (version.description or "")
        assert len(drift_artifacts()) == before + 2
