"""A finished run asked for again: its result returned instead of repeated.

The pipeline asks :func:`find_finished_run` before it opens an MLflow run; a result found
there ends the flow run at once, with nothing trained, logged or registered
(:mod:`wd_pipeline.tracking.finished_runs` says what "the same run" means). A run that did the
work leaves its record with :func:`record_finished_run` once its model is registered.
"""

from __future__ import annotations

from dataclasses import replace

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows.summary import PipelineSummary, summary_from_json, summary_markdown, summary_to_json
from wd_pipeline.config import PipelineConfig
from wd_pipeline.data import splits
from wd_pipeline.errors import PipelineError, first_line
from wd_pipeline.tracking import finished_runs, runs

REUSED_TAG = "reused"  # on a Prefect flow run that returned an earlier run's result


@task(cache_policy=NO_CACHE, name="find-finished-run")
def find_finished_run(config: PipelineConfig) -> PipelineSummary | None:
    """The result of a finished run with the same data, settings and code that still stands, else None.

    Anything that keeps the answer from being a sure yes (a stale record, a store that does not
    answer, data that cannot be read) means running afresh, where ingest and tracking report
    their own errors as they always do.
    """
    logger = get_run_logger()
    try:
        found = finished_runs.find(config)
    except PipelineError:  # the data: ingest refuses it with the same words
        return None
    except Exception as exc:
        logger.warning("Could not look for a finished run with the same data and settings (%s)", first_line(exc, 200))
        return None
    if found is None:
        return None
    try:
        stale = finished_runs.why_stale(runs.get_client(), found, config.experiment)
    except Exception as exc:
        logger.warning("Could not check the finished run %s (%s): running afresh", found.parent_run_id, first_line(exc))
        return None
    if stale:
        logger.info("A run with the same data and settings finished before, but %s: running afresh", stale)
        return None
    earlier = summary_from_json(found.summary)
    return replace(earlier, reused_from=found.flow_run or earlier.run_url)


def reuse_result(summary: PipelineSummary) -> PipelineSummary:
    """End this flow run with an earlier run's result: one line, the summary artifact and a tag say so."""
    get_run_logger().info(
        "Same data and settings as the finished run %s: its result stands, nothing trained, logged or registered "
        "again (--reuse never, a new --seed or another --work-dir runs afresh)",
        summary.run_url,
    )
    create_markdown_artifact(
        summary_markdown(summary), key="pipeline-summary", description="The result of an earlier, identical run"
    )
    _tag_flow_run()
    return summary


def _tag_flow_run() -> None:
    """Mark this flow run ``reused`` so the Prefect UI can filter such runs; a failure only costs the tag."""
    from prefect.client.orchestration import get_client

    flow_run_id = flow_run.get_id()
    if flow_run_id is None:
        return
    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(flow_run_id, tags=sorted({*flow_run.get_tags(), REUSED_TAG}))
    except Exception as exc:
        get_run_logger().debug("Could not tag flow run %s %r: %s", flow_run_id, REUSED_TAG, first_line(exc))


def record_finished_run(config: PipelineConfig, split_folder: str, summary: PipelineSummary) -> None:
    """Leave the record that lets the same run, asked again, return ``summary``; a failure is only a warning."""
    finished = finished_runs.FinishedRun(
        experiment_id=summary.experiment_id,
        parent_run_id=summary.parent_run_id,
        model_name=summary.registry.model_name,
        version=str(summary.registry.version),
        flow_run=flow_run.get_flow_run_ui_url() or str(flow_run.get_id() or ""),
        summary=summary_to_json(summary),
    )
    try:
        finished_runs.record(config, splits.read_manifest(split_folder)["sha256"], finished)
    except Exception as exc:
        get_run_logger().warning(
            "Could not record this finished run in the work folder (%s): the same run asked again will repeat it",
            first_line(exc, 200),
        )
