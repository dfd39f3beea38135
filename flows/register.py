"""Prefect flow ``register``: log the chosen model, register it, gate the champion alias."""

from __future__ import annotations

import pyarrow as pa
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from flows.retry import TRACKING_TASK
from wd_pipeline import storage, timing
from wd_pipeline.config import DEFAULT_THRESHOLD, PipelineConfig
from wd_pipeline.data import drift, splits
from wd_pipeline.ml import report
from wd_pipeline.ml.preprocessing import Preprocessing
from wd_pipeline.ml.slices import SliceMetrics
from wd_pipeline.provenance import Provenance
from wd_pipeline.tracking import drift_record, registry, runs


@task(cache_policy=NO_CACHE, name="log-model", **TRACKING_TASK)
def log_chosen_model(
    parent_run_id: str, split_folder: str, model_path: str, config: PipelineConfig, threshold: float
) -> str:
    with timing.measure("register_log_model"):
        example = splits.load_split(split_folder, "train").features.head(5)
        local = storage.local_file(model_path)
        prep = Preprocessing.load(local.parent)
        model_uri, _ = registry.log_model(
            parent_run_id,
            str(local),
            prep,
            splits.read_schema(split_folder),
            example,
            positive_class=config.positive_class,
            na_values=config.na_values,
            reference=splits.read_profile(split_folder).split("train"),
            threshold=threshold,
        )
    return model_uri


@task(cache_policy=NO_CACHE, name="drift-against-champion", **TRACKING_TASK)
def drift_against_champion(config: PipelineConfig, split_folder: str, parent_run_id: str) -> drift.DriftReport | None:
    """This run's training split against the current champion's, recorded on the parent run; None when there is
    no champion, or it was registered without a reference."""
    logger = get_run_logger()
    client = runs.get_client()
    version = registry.current_champion(client, config.model_name)
    if version is None:
        logger.info("No champion of %s yet: no drift to measure", config.model_name)
        return None
    reference = drift_record.model_reference(f"models:/{config.model_name}/{version}")
    if reference is None:
        logger.info(
            "%s v%s was registered without its training profile: no drift to measure", config.model_name, version
        )
        return None
    with timing.measure("register_drift"):
        train = splits.load_split(split_folder, "train")
        found = drift.compare(
            reference,
            pa.Table.from_pandas(train.features, preserve_index=False),
            warn=config.drift_warn,
            alert=config.drift_alert,
            reference_name=f"{config.model_name} v{version}",
            label=config.label,
            current_label=train.label,
        )
    drift_record.log_drift(client, parent_run_id, found)
    return found


@task(cache_policy=NO_CACHE, name="register-and-gate")
def register_and_gate(
    config: PipelineConfig,
    split_folder: str,
    model_uri: str,
    parent_run_id: str,
    model_card: str | None,
    drift_report: drift.DriftReport | None = None,
    slices: list[SliceMetrics] | None = None,
) -> registry.RegistryDecision:
    with timing.measure("register_gate"):
        return _register_and_gate(
            config, split_folder, model_uri, parent_run_id, model_card, drift_report=drift_report, slices=slices
        )


def _register_and_gate(
    config: PipelineConfig,
    split_folder: str,
    model_uri: str,
    parent_run_id: str,
    model_card: str | None,
    *,
    drift_report: drift.DriftReport | None = None,
    slices: list[SliceMetrics] | None = None,
) -> registry.RegistryDecision:
    test = splits.load_split(split_folder, "test")
    client = runs.get_client()
    code = Provenance.from_tags(client.get_run(parent_run_id).data.tags)  # the code that trained this model
    decision = registry.register(
        client,
        name=config.model_name,
        model_uri=model_uri,
        run_id=parent_run_id,
        test_features=test.features,
        test_label=test.label,
        policy=registry.GatePolicy.from_config(config),
        tags={"data.sha256": splits.read_manifest(split_folder)["sha256"], **code.tags()},
        description=model_card,
        drift=drift_report,
        slices=slices or (),
    )
    runs.set_tags(client, parent_run_id, {f"registry.{k}": v for k, v in decision.to_dict().items()})
    numbers = {
        "gate_new_value": decision.new_value,
        "gate_champion_value": decision.champion_value,
        "gate_difference": decision.difference,
        "gate_ci_low": decision.ci_low,
        "gate_ci_high": decision.ci_high,
        "gate_promoted": float(decision.alias == registry.CHAMPION),
    }
    runs.log_metrics(client, parent_run_id, {k: v for k, v in numbers.items() if v is not None})
    return decision


@flow(name="register")
def register_chosen_model(
    config: PipelineConfig,
    split_folder: str,
    model_path: str,
    parent_run_id: str,
    model_card: str | None = None,
    *,
    slices: list[SliceMetrics] | None = None,
    threshold: float = DEFAULT_THRESHOLD,
) -> registry.RegistryDecision:
    """Returns the registry decision: version, alias and the numbers behind it.

    ``slices`` feed the slice floor; ``threshold`` is the decision threshold evaluation settled
    on, which the model keeps.
    """
    found = drift_against_champion(config, split_folder, parent_run_id)
    if found is not None:
        model_card = record_drift(parent_run_id, found, model_card)
    model_uri = log_chosen_model(parent_run_id, split_folder, model_path, config, threshold)
    decision = register_and_gate(
        config, split_folder, model_uri, parent_run_id, model_card, drift_report=found, slices=slices
    )
    get_run_logger().info("%s v%s → @%s: %s", decision.model_name, decision.version, decision.alias, decision.reason)
    return decision


def record_drift(parent_run_id: str, found: drift.DriftReport, model_card: str | None) -> str | None:
    """The drift table as a Prefect artifact and a warning when columns drifted; returns the model card with
    its drift section, logged again on the parent run."""
    create_table_artifact(found.rows(), key="drift", description=found.summary())
    if found.drifted:
        get_run_logger().warning("Drift: %s", found.summary())
    if model_card is None:
        return None
    card = report.with_drift_section(model_card, found)
    log_card(parent_run_id, card)
    return card


@task(cache_policy=NO_CACHE, name="log-model-card", **TRACKING_TASK)
def log_card(parent_run_id: str, card: str) -> None:
    runs.log_text(runs.get_client(), parent_run_id, card, report.CARD_ARTIFACT)
