"""Prefect flow ``score``: the registered champion on a new file, predictions to Parquet.

Its parameters are the fields of :class:`~wd_pipeline.config.ScoreSettings` with the same
setting types, so the form describes and checks them as the CLI does;
``tests/flows/test_flow_parameters.py`` keeps the two identical.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows.timeouts import SCORE_CEILING_SECONDS
from wd_pipeline.config import (
    DEFAULT_EXPERIMENT,
    DEFAULT_MODEL_NAME,
    DriftAlert,
    DriftWarn,
    Experiment,
    ScoreData,
    ScoredModel,
    ScoreOutput,
    ScoreThreshold,
)
from wd_pipeline.serving import scoring
from wd_pipeline.tracking import runs


@task(cache_policy=NO_CACHE, name="score-file")
def score_in_flow_run(settings: scoring.ScoreSettings) -> scoring.ScoreResult:
    """Score the file; the MLflow scoring run is tagged with this flow run, so each side links to the other."""
    tags = {runs.PREFECT_RUN_TAG: str(flow_run.get_id()), runs.PREFECT_URL_TAG: flow_run.get_flow_run_ui_url() or ""}
    return scoring.score_file(settings, tags=tags)


@flow(name="score", timeout_seconds=SCORE_CEILING_SECONDS)
def score(
    data: ScoreData,
    output: ScoreOutput,
    model_name: ScoredModel = DEFAULT_MODEL_NAME,
    experiment: Experiment = DEFAULT_EXPERIMENT,
    threshold: ScoreThreshold = None,
    drift_warn: DriftWarn = 0.1,
    drift_alert: DriftAlert = 0.25,
) -> scoring.ScoreResult:
    """Score ``data`` with ``model_name@champion``; returns where the predictions went and the run id."""
    settings = scoring.make_score_settings(**locals())
    result = score_in_flow_run(settings)
    report_drift(result)
    get_run_logger().info(
        "Scored %d rows with %s (v%s): positive rate %.4f → %s",
        result.rows,
        result.model_uri,
        result.version,
        result.positive_rate,
        result.output,
    )
    return result


def report_drift(result: scoring.ScoreResult) -> None:
    """The drift table as a Prefect artifact, and a warning naming the drifted columns: scoring goes on, the user
    decides what the drift means."""
    logger = get_run_logger()
    if result.drift is None:
        logger.info("%s was registered without its training profile: no drift check", result.model_uri)
        return
    create_table_artifact(result.drift.rows(), key="drift", description=result.drift.summary())
    if result.drift.drifted:
        logger.warning("Drift: %s; the file was scored all the same", result.drift.summary())
