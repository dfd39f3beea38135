"""Prefect flow ``weight-decay-pipeline``: ingest → train-grid → evaluate → register.

Its parameters are the fields of :class:`~wd_pipeline.config.PipelineConfig`, flat and
annotated with the config's own setting types, so the Prefect UI renders a plain form with
each setting's description and refuses a bad value with pydantic's message before anything
runs. ``tests/flows/test_flow_parameters.py`` keeps names, types, constraints, defaults and
descriptions identical to the config's.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.settings import PREFECT_API_URL
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from flows.evaluate import evaluate
from flows.ingest import ingest
from flows.register import register_chosen_model
from flows.retry import TRACKING_TASK, finish_quietly, retry_unless_unreachable
from flows.reuse import find_finished_run, record_finished_run, reuse_result
from flows.summary import PipelineSummary, summary_markdown
from flows.timeouts import PIPELINE_CEILING_SECONDS
from flows.train_grid import train_grid
from wd_pipeline import storage, timing
from wd_pipeline.config import (
    DEFAULT_DATA,
    DEFAULT_DROPOUT_GRID,
    DEFAULT_EXPERIMENT,
    DEFAULT_GRID,
    DEFAULT_LABEL,
    DEFAULT_MODEL_NAME,
    BatchSize,
    BootstrapSamples,
    Categorical,
    ChunkSize,
    ClassWeight,
    DaskAddress,
    DaskWorkers,
    DataSource,
    DriftAlert,
    DriftWarn,
    DropoutGrid,
    Epochs,
    Exclude,
    Experiment,
    Features,
    Folds,
    GateMargin,
    GateMetric,
    Grid,
    GroupColumn,
    HiddenUnits,
    ImportanceRepeats,
    Label,
    LearningRate,
    MaxCategories,
    MaxParallel,
    MaxTestLogLoss,
    MinRowsPerClass,
    MinSliceRocAuc,
    MinSliceRows,
    MinTestRocAuc,
    ModelName,
    Modes,
    NaValues,
    OneHotMax,
    Patience,
    PipelineConfig,
    PositiveClass,
    Reuse,
    Rule,
    Seed,
    SelectionMetric,
    SliceBy,
    TestFraction,
    Threshold,
    ThresholdMetric,
    ValFraction,
    WorkDirOrDefault,
    make_config,
)
from wd_pipeline.tracking import runs


@task(
    cache_policy=NO_CACHE,
    name="start-tracking",
    **{**TRACKING_TASK, "retry_condition_fn": retry_unless_unreachable},
)
def start_tracking(config: PipelineConfig) -> tuple[str, str]:
    """Create the parent run; returns (experiment id, run id). Not retried on an unreachable server."""
    client = runs.get_client()
    experiment_id = runs.ensure_experiment(client, config.experiment)
    closed = runs.close_orphaned_runs(client, experiment_id)
    if closed:
        get_run_logger().warning(
            "Closed %d MLflow run(s) left RUNNING by a pipeline process that no longer exists (KILLED)", len(closed)
        )
    tags = {
        "run_name": flow_run.get_name() or "pipeline",
        runs.PREFECT_RUN_TAG: str(flow_run.get_id()),
        runs.PREFECT_URL_TAG: flow_run.get_flow_run_ui_url() or "",
    }
    return experiment_id, runs.start_parent_run(client, experiment_id, config, tags)


@task(cache_policy=NO_CACHE, name="finish-tracking", **TRACKING_TASK)
def finish_tracking(parent_run_id: str, metrics: dict[str, float]) -> None:
    """Log the run's closing metrics and close it FINISHED: the last write of a run, retried like every other."""
    client = runs.get_client()
    runs.log_metrics(client, parent_run_id, metrics)
    runs.finish(client, parent_run_id)


@flow(name="weight-decay-pipeline", timeout_seconds=PIPELINE_CEILING_SECONDS)
def weight_decay_pipeline(
    data: DataSource = DEFAULT_DATA,
    label: Label = DEFAULT_LABEL,
    positive_class: PositiveClass = None,
    features: Features = None,
    categorical: Categorical = None,
    exclude: Exclude = None,
    group_column: GroupColumn = None,
    slice_by: SliceBy = None,
    na_values: NaValues = None,
    max_categories: MaxCategories = 1000,
    min_rows_per_class: MinRowsPerClass = 10,
    val_fraction: ValFraction = 0.2,
    test_fraction: TestFraction = 0.2,
    hidden_units: HiddenUnits = [10, 10],  # noqa: B006
    one_hot_max: OneHotMax = 64,
    class_weight: ClassWeight = "none",
    epochs: Epochs = 100,
    batch_size: BatchSize = 32,
    learning_rate: LearningRate = 1e-3,
    patience: Patience = 20,
    seed: Seed = 42,
    modes: Modes = ["l2"],  # noqa: B006
    grid: Grid = list(DEFAULT_GRID),  # noqa: B006 - Prefect stores the default as JSON
    dropout_grid: DropoutGrid = list(DEFAULT_DROPOUT_GRID),  # noqa: B006
    folds: Folds = 5,
    rule: Rule = "one-se",
    selection_metric: SelectionMetric = "log_loss",
    threshold: Threshold = 0.5,
    threshold_metric: ThresholdMetric = "f1",
    experiment: Experiment = DEFAULT_EXPERIMENT,
    model_name: ModelName = DEFAULT_MODEL_NAME,
    gate_metric: GateMetric = "log_loss",
    gate_margin: GateMargin = 0.0,
    bootstrap_samples: BootstrapSamples = 1000,
    min_test_roc_auc: MinTestRocAuc = 0.6,
    max_test_log_loss: MaxTestLogLoss = None,
    min_slice_rows: MinSliceRows = 30,
    min_slice_roc_auc: MinSliceRocAuc = None,
    drift_warn: DriftWarn = 0.1,
    drift_alert: DriftAlert = 0.25,
    importance_repeats: ImportanceRepeats = 5,
    max_parallel: MaxParallel = 2,
    chunk_size: ChunkSize = 0,
    dask_address: DaskAddress = None,
    dask_workers: DaskWorkers = 0,
    reuse: Reuse = "finished",
    work_dir: WorkDirOrDefault = None,
) -> PipelineSummary:
    """Train the network over a λ grid, pick λ on validation, register the winner."""
    settings = {key: value for key, value in locals().items() if value is not None}
    config = make_config(**settings)
    return run_pipeline(config)


def grid_task_runner(config: PipelineConfig) -> TaskRunner:
    """Where the training tasks run: a Dask cluster when configured, else threads here.

    Threads share this process's TensorFlow, which already uses every core, so they mostly
    overlap waiting; Dask spreads the tasks over processes or machines. Either way a task
    gets paths and run ids, never Keras objects, so only small picklable values travel.
    """
    if not (config.dask_address or config.dask_workers):
        return ThreadPoolTaskRunner(max_workers=config.max_parallel)
    import dask
    from prefect_dask import DaskTaskRunner

    if config.dask_address:
        return DaskTaskRunner(address=config.dask_address)
    # The nanny starts each worker process; forking one after TensorFlow has started can
    # hang, so insist on Dask's default "spawn" even if a user's Dask config says "fork".
    dask.config.set({"distributed.worker.multiprocessing-method": "spawn"})
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={"n_workers": config.dask_workers, "threads_per_worker": 1, "processes": True},
    )


def timings(flow_seconds: float, logger: Any) -> dict[str, float]:
    """Where this run's time went, as ``time_<step>_seconds`` metrics for the parent run.

    ``time_training_seconds`` is the wall time during which at least one packed training
    call ran; the rest of ``time_flow_seconds`` is ingest, scoring, saving, evaluation,
    registration, tracking and Prefect's own work. Steps run on Dask workers are missing.
    """
    seconds = {"flow": flow_seconds, **timing.snapshot()}
    training = seconds.get(timing.TRAINING, 0.0)
    logger.info(
        "Time: %.1f s in the flow, of which training %.1f s (%.0f %%); %s",
        flow_seconds,
        training,
        100 * training / flow_seconds,
        ", ".join(f"{k} {v:.1f} s" for k, v in sorted(seconds.items()) if k != "flow"),
    )
    return {f"time_{name}_seconds": value for name, value in seconds.items()}


def run_pipeline(config: PipelineConfig) -> PipelineSummary:
    """The four steps as subflows, with the MLflow parent run closed FAILED on any error."""
    logger = get_run_logger()
    started = time.perf_counter()
    timing.reset()
    if config.dask_address or config.dask_workers:
        # Dask workers need not share this process's working directory (or machine): hand
        # them absolute paths for the splits and the trained units.
        config = config.model_copy(update={"work_dir": str(storage.absolute(config.work_dir))})
    if config.reuse == "finished" and (earlier := find_finished_run(config)) is not None:
        return reuse_result(earlier)
    with timing.measure("tracking_start"):
        experiment_id, parent_run_id = start_tracking(config)
    client = runs.get_client()
    try:
        with timing.measure("phase_ingest"):
            split_folder = ingest(config, parent_run_id)
        if (config.dask_address or config.dask_workers) and not PREFECT_API_URL.value():
            # Not refused: it works, only slowly (each worker starts its own temporary API).
            logger.warning(
                "Dask workers need a Prefect server: without PREFECT_API_URL each worker process starts "
                'its own temporary API. Set PREFECT_API_URL (e.g. `eval "$(wd-pipeline stack env)"`)'
            )
        with timing.measure("phase_train_grid"):
            units = train_grid.with_options(task_runner=grid_task_runner(config))(config, split_folder, parent_run_id)
        with timing.measure("phase_evaluate"):
            evaluation = evaluate(config, split_folder, units, parent_run_id)
        with timing.measure("phase_register"):
            decision = register_chosen_model(
                config,
                split_folder,
                evaluation.model_path,
                parent_run_id,
                evaluation.model_card,
                slices=list(evaluation.slices.slices) if evaluation.slices else None,
                threshold=evaluation.threshold.value,
            )
    except BaseException:
        finish_quietly(client, parent_run_id, "FAILED")
        raise
    finish_tracking(parent_run_id, timings(time.perf_counter() - started, logger))
    summary = PipelineSummary(
        experiment_id=experiment_id,
        parent_run_id=parent_run_id,
        run_url=runs.run_url(client, experiment_id, parent_run_id),
        tracking_uri=client.tracking_uri,
        evaluation=evaluation,
        registry=decision,
    )
    record_finished_run(config, split_folder, summary)
    create_markdown_artifact(
        summary_markdown(summary), key="pipeline-summary", description="Chosen λ and registry decision"
    )
    logger.info(
        "Chosen %s; %s v%s → @%s",
        evaluation.selection.label,
        decision.model_name,
        decision.version,
        decision.alias,
    )
    return summary
