"""Prefect flow ``register``: log the chosen model, register it, gate the champion alias."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.retry import TRACKING_TASK
from wd_pipeline import timing
from wd_pipeline.config import DEFAULT_THRESHOLD, PipelineConfig
from wd_pipeline.data import splits
from wd_pipeline.ml.preprocessing import Preprocessing
from wd_pipeline.provenance import Provenance
from wd_pipeline.tracking import registry, runs


@task(cache_policy=NO_CACHE, name="log-model", **TRACKING_TASK)
def log_chosen_model(
    parent_run_id: str, split_folder: str, model_path: str, config: PipelineConfig, threshold: float
) -> str:
    with timing.measure("register_log_model"):
        example = splits.load_split(split_folder, "train").features.head(5)
        prep = Preprocessing.load(Path(model_path).parent)
        model_uri, _ = registry.log_model(
            parent_run_id,
            model_path,
            prep,
            splits.read_schema(split_folder),
            example,
            positive_class=config.positive_class,
            na_values=config.na_values,
            threshold=threshold,
        )
    return model_uri


@task(cache_policy=NO_CACHE, name="register-and-gate")
def register_and_gate(
    config: PipelineConfig, split_folder: str, model_uri: str, parent_run_id: str, model_card: str | None
) -> registry.RegistryDecision:
    with timing.measure("register_gate"):
        return _register_and_gate(config, split_folder, model_uri, parent_run_id, model_card)


def _register_and_gate(
    config: PipelineConfig, split_folder: str, model_uri: str, parent_run_id: str, model_card: str | None
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
    threshold: float = DEFAULT_THRESHOLD,
) -> registry.RegistryDecision:
    """Returns the registry decision: version, alias and the numbers behind it.

    ``threshold`` is the decision threshold evaluation settled on; the model keeps it.
    """
    model_uri = log_chosen_model(parent_run_id, split_folder, model_path, config, threshold)
    decision = register_and_gate(config, split_folder, model_uri, parent_run_id, model_card)
    get_run_logger().info("%s v%s → @%s: %s", decision.model_name, decision.version, decision.alias, decision.reason)
    return decision
