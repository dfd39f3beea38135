"""Log the chosen model, register it, and decide whether it becomes the champion.

The gate is built so that luck, a broken model or changed data cannot take ``@champion``:

- the new model and the current champion are scored on *this* run's test rows, and the
  difference of the gate metric is bootstrapped over the same resampled rows for both; the
  new model is promoted only if the lower bound of that interval clears ``margin``, so an
  identical model (difference exactly 0) is refused and a lucky one usually is too;
- hard floors (minimum ROC AUC, optional maximum log loss) keep a poor model out even when
  there is no champion yet;
- each model labels at its own decision threshold (stored in its model config), so a
  champion chosen with ``--threshold auto`` is compared as it serves;
- a model whose input columns differ from the champion's is never promoted automatically:
  the two were trained on different data, so their numbers are not comparable.

A refused model is still registered, as ``@challenger``, with the reason. If anything fails
after the version is created, the version is deleted again, so the registry never holds a
half-registered model. Concurrent runs on one model name are serialised where it matters —
the verdict and the alias move — by a lock in the registry itself (see ``promotion_lock``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from wd_pipeline.config import DEFAULT_THRESHOLD
from wd_pipeline.data.schema import ColumnSpec, Role, TableSchema
from wd_pipeline.errors import ConfigError, TrackingError, first_line
from wd_pipeline.ml.bootstrap import DEFAULT_LEVEL, Interval, paired_bootstrap_difference
from wd_pipeline.ml.metrics import classification_metrics
from wd_pipeline.ml.preprocessing import PREPROCESSING_FILE
from wd_pipeline.ml.report import CARD_ARTIFACT
from wd_pipeline.tracking.drift_record import REFERENCE_ARTIFACT, write_reference
from wd_pipeline.tracking.promotion_lock import LockSettings, promotion_lock

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.models import ModelSignature

    from wd_pipeline.config import PipelineConfig
    from wd_pipeline.data.drift import DriftReport
    from wd_pipeline.data.profile import SplitProfile
    from wd_pipeline.ml.preprocessing import Preprocessing
    from wd_pipeline.ml.slices import SliceMetrics

CHAMPION = "champion"
CHALLENGER = "challenger"
PYFUNC_CODE = Path(__file__).parents[1] / "serving" / "pyfunc_model.py"
SERVING_PACKAGES = ("mlflow", "tensorflow-cpu", "keras", "pandas", "numpy", "pyarrow")
MAX_DESCRIPTION = 5000  # MLflow's model_versions.description is VARCHAR(5000)
SIGNATURE_TYPES = {Role.NUMERIC: "double", Role.CATEGORICAL: "string"}
# models:/NAME/VERSION, models:/NAME@ALIAS or a logged model models:/m-ID on the configured
# server; not models://PROFILE@… (another registry), runs:/, file paths or URLs.
REGISTRY_URI = re.compile(r"models:/[^/]")


@dataclass(frozen=True)
class GatePolicy:
    """What a new version must show on the test split to take ``@champion``.

    Built from a run's config only (:meth:`from_config`), so the gate has no defaults of
    its own that could drift from the settings a user sees.
    """

    metric: str
    margin: float
    min_roc_auc: float | None
    max_log_loss: float | None
    bootstrap_samples: int
    seed: int
    min_slice_roc_auc: float | None
    min_slice_rows: int
    level: float = DEFAULT_LEVEL  # of the bootstrap interval; not a setting

    @classmethod
    def from_config(cls, config: PipelineConfig) -> GatePolicy:
        return cls(
            metric=config.gate_metric,
            margin=config.gate_margin,
            min_roc_auc=config.min_test_roc_auc,
            max_log_loss=config.max_test_log_loss,
            bootstrap_samples=config.bootstrap_samples,
            seed=config.seed,
            min_slice_roc_auc=config.min_slice_roc_auc,
            min_slice_rows=config.min_slice_rows,
        )


@dataclass(frozen=True)
class RegistryDecision:
    """What the gate decided and the numbers it decided on (all become ``gate.*`` tags)."""

    model_name: str
    version: str
    alias: str
    gate_metric: str
    new_value: float
    champion_version: str | None
    champion_value: float | None
    reason: str
    model_uri: str
    margin: float = 0.0
    difference: float | None = None  # oriented: positive means the new version is better
    ci_low: float | None = None
    ci_high: float | None = None
    ci_level: float = DEFAULT_LEVEL
    test_roc_auc: float | None = None
    test_log_loss: float | None = None
    threshold: float = DEFAULT_THRESHOLD  # the new version's decision threshold
    champion_threshold: float | None = None
    floors: str = ""  # the floors the new version fails, empty when it passes all
    lock_wait: float = 0.0  # seconds spent waiting for the promotion lock (another run was promoting)
    drift_level: str = ""  # against the champion's training data; empty when there was nothing to compare
    drift_max_psi: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def serving_requirements() -> list[str]:
    """Exact pins of what the served model imports (skips MLflow's slow, noisy inference)."""
    return [f"{name}=={version(name)}" for name in SERVING_PACKAGES]


def log_model(
    parent_run_id: str,
    keras_model_path: str,
    prep: Preprocessing,
    schema: TableSchema,
    example: pd.DataFrame,
    *,
    positive_class: str | None = None,
    na_values: list[str] | None = None,
    reference: SplitProfile | None = None,
    threshold: float = DEFAULT_THRESHOLD,
) -> tuple[str, str]:
    """Log the pyfunc-wrapped network to the parent run; returns (model URI, model id).

    The signature lists every raw column the network reads: numeric ones as doubles,
    categorical ones as strings; the model answers with a probability and a label at
    ``threshold``, which its model config keeps (``score`` reads it from there). The input
    example holds a missing value, so the model page shows that gaps are accepted.
    ``reference``, the training split's profile, is logged beside the model files: what
    later data is checked for drift against.
    """
    import tempfile

    import mlflow

    used = [spec for spec in schema.columns if spec.name in prep.columns]
    example = example_with_gap(example[[spec.name for spec in used]], used)
    with mlflow.start_run(run_id=parent_run_id), tempfile.TemporaryDirectory() as folder:
        extra = {REFERENCE_ARTIFACT: str(write_reference(reference, folder))} if reference else {}
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(PYFUNC_CODE),
            artifacts={
                "keras_model": keras_model_path,
                "preprocessing": str(Path(keras_model_path).with_name(PREPROCESSING_FILE)),
                **extra,
            },
            model_config={
                **prep.input_config(),
                "columns": [spec.to_dict() for spec in used],
                "label": schema.label,
                "positive_class": positive_class,
                "na_values": list(na_values or []),
                "threshold": float(threshold),
            },
            signature=input_signature(used),
            input_example=example,
            pip_requirements=serving_requirements(),
        )
    return info.model_uri, info.model_id


def input_signature(columns: list[ColumnSpec]) -> ModelSignature:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    inputs = Schema([ColSpec(SIGNATURE_TYPES[spec.role], spec.name) for spec in columns])
    outputs = Schema([ColSpec("double", "probability"), ColSpec("long", "label")])
    return ModelSignature(inputs=inputs, outputs=outputs)


def example_with_gap(example: pd.DataFrame, columns: list[ColumnSpec]) -> pd.DataFrame:
    """A few training rows as the signature types them, with at least one missing value."""
    example = example.reset_index(drop=True).copy()
    for spec in columns:
        if spec.role is Role.NUMERIC:
            example[spec.name] = example[spec.name].astype("float64")
        else:
            example[spec.name] = example[spec.name].astype(object).where(example[spec.name].notna(), None)
    if not example.isna().to_numpy().any() and len(example):
        gap = example.iloc[[0]].copy()
        first = columns[0]
        gap[first.name] = np.nan if first.role is Role.NUMERIC else None
        example = pd.concat([example, gap], ignore_index=True)
    return example


def require_registry_uri(model_uri: str) -> str:
    """``model_uri`` if it names a model of the configured MLflow server, else a ConfigError.

    Loading a pyfunc model runs the code stored with it, so models come only from the
    registry the pipeline writes to (behind the server's authentication), never from a
    path or URL someone hands in.
    """
    if not REGISTRY_URI.match(model_uri):
        raise ConfigError(
            f"model URI {model_uri!r} is refused: models load only from the MLflow model registry "
            "(models:/NAME/VERSION or models:/NAME@ALIAS)"
        )
    return model_uri


def model_probability(model_uri: str, features: pd.DataFrame) -> np.ndarray:
    """Probabilities from a logged or registered pyfunc model (its network loads in Keras' safe mode).

    Integer columns are handed over as doubles, the signature's type: MLflow's schema check
    refuses int64 for a double column (it could lose precision), so the gate would fail on any
    table with an integer feature.
    """
    return probability_function(model_uri)(features)


def probability_function(model_uri: str) -> Callable[[pd.DataFrame], np.ndarray]:
    """:func:`model_probability` with the model loaded once, for callers that predict batch after batch."""
    import mlflow
    from mlflow.types import DataType

    model = mlflow.pyfunc.load_model(require_registry_uri(model_uri))
    schema = model.metadata.get_input_schema()
    doubles = [spec.name for spec in (schema.inputs if schema else []) if spec.type == DataType.double]

    def probability(features: pd.DataFrame) -> np.ndarray:
        features = features.astype({name: "float64" for name in doubles if name in features.columns})
        return model.predict(features)["probability"].to_numpy()

    return probability


def model_threshold(model_uri: str) -> float:
    """The decision threshold a logged model labels with; 0.5 for a version logged before models stored one."""
    return float(model_config(model_uri).get("threshold", DEFAULT_THRESHOLD))


def current_champion(client: MlflowClient, name: str) -> str | None:
    """Version number holding the ``champion`` alias, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None


def model_config(model_uri: str) -> dict[str, Any]:
    """The model config a logged pyfunc model was saved with (input columns, label, missing token)."""
    from mlflow.models import get_model_info

    info = get_model_info(require_registry_uri(model_uri))
    return _pyfunc_config(info)


def model_preprocessing(model_uri: str) -> Preprocessing:
    """What the model's input layers learnt (vocabularies, medians), from the artifact logged with it."""
    import tempfile

    from mlflow.artifacts import download_artifacts

    from wd_pipeline.ml.preprocessing import Preprocessing

    with tempfile.TemporaryDirectory() as folder:
        local = download_artifacts(
            artifact_uri=f"{require_registry_uri(model_uri)}/artifacts/{PREPROCESSING_FILE}", dst_path=folder
        )
        return Preprocessing.load(Path(local).parent)


def input_schema(model_uri: str) -> list[ColumnSpec]:
    """The raw columns a logged model reads, with role and source type, in order.

    Versions logged before the model config carried them are read from the signature:
    doubles as numeric, strings as categorical, source type unknown.
    """
    from mlflow.models import get_model_info

    info = get_model_info(require_registry_uri(model_uri))
    config = _pyfunc_config(info)
    if "columns" in config:
        return [ColumnSpec.from_dict(raw) for raw in config["columns"]]
    if info.signature is None:
        return []
    roles = {kind: role for role, kind in SIGNATURE_TYPES.items()}
    return [
        ColumnSpec(column.name, roles.get(column.type.name, Role.NUMERIC), "")
        for column in info.signature.inputs.inputs
    ]


def _pyfunc_config(info: Any) -> dict[str, Any]:
    """The ``model_config`` a pyfunc model was logged with (MLflow keeps it under the flavor's ``config`` key)."""
    from mlflow.models.model import MODEL_CONFIG

    return dict(info.flavors.get("python_function", {}).get(MODEL_CONFIG) or {})


def input_columns(model_uri: str) -> list[str]:
    """Names of the raw columns a logged model reads, in order."""
    return [spec.name for spec in input_schema(model_uri)]


def schema_change(new: list[ColumnSpec], champion: list[ColumnSpec]) -> str | None:
    """Why two models' inputs are not the same data (columns, roles, source types), or None when they are."""
    new_names, old_names = [spec.name for spec in new], [spec.name for spec in champion]
    added = [name for name in new_names if name not in old_names]
    removed = [name for name in old_names if name not in new_names]
    if added or removed:
        return f"added {added}, removed {removed}"
    before = {spec.name: spec for spec in champion}
    changed = [
        f"{spec.name}: {_kind(before[spec.name])} → {_kind(spec)}"
        for spec in new
        if spec.role is not before[spec.name].role
        or (spec.source_type and before[spec.name].source_type and spec.source_type != before[spec.name].source_type)
    ]
    if changed:
        return f"changed {changed}"
    if new_names != old_names:
        return "same columns in another order"
    return None


def _kind(spec: ColumnSpec) -> str:
    return f"{spec.role} {spec.source_type}".strip()


def floor_violations(metrics: dict[str, float], policy: GatePolicy, slices: Sequence[SliceMetrics] = ()) -> list[str]:
    """The hard floors a model fails on the test split; empty when it passes.

    The slice floor judges only slices of at least ``min_slice_rows`` rows with both classes:
    a smaller slice's ROC AUC is too noisy to refuse a model on.
    """
    failed = []
    if policy.min_roc_auc is not None and not metrics["roc_auc"] >= policy.min_roc_auc:
        failed.append(f"test roc_auc {metrics['roc_auc']:.4f} < minimum {policy.min_roc_auc:g}")
    if policy.max_log_loss is not None and not metrics["log_loss"] <= policy.max_log_loss:
        failed.append(f"test log_loss {metrics['log_loss']:.4f} > maximum {policy.max_log_loss:g}")
    if policy.min_slice_roc_auc is not None:
        failed += [
            f"slice {s.name} roc_auc {s.roc_auc.estimate:.4f} < minimum {policy.min_slice_roc_auc:g} ({s.rows} rows)"
            for s in slices
            if s.rows >= policy.min_slice_rows
            and s.roc_auc is not None
            and not s.roc_auc.estimate >= policy.min_slice_roc_auc
        ]
    return failed


@dataclass(frozen=True)
class _Comparison:
    champion_value: float | None = None
    difference: Interval | None = None
    blocked: str = ""  # why the two versions cannot be compared
    champion_threshold: float | None = None


def version_description(card: str | None, limit: int = MAX_DESCRIPTION) -> str | None:
    """The model card as a version's description, cut at a section boundary to fit the registry's column.

    MLflow's SQL stores keep a version's description in a 5,000-character column: SQLite lets
    a longer one through, PostgreSQL refuses it and the registration fails. The full card
    always stays in the run's artifacts (``model_card.md``); the cut says so.
    """
    if card is None or len(card) <= limit:
        return card
    note = f"\n_(cut to fit the registry: the full card is `{CARD_ARTIFACT}` in the run's artifacts)_\n"
    room = limit - len(note)
    cut = card.rfind("\n## ", 0, room)
    return card[: cut if cut > 0 else room].rstrip() + "\n" + note


def register(
    client: MlflowClient,
    *,
    name: str,
    model_uri: str,
    run_id: str,
    test_features: pd.DataFrame,
    test_label: np.ndarray,
    policy: GatePolicy,
    tags: dict[str, str] | None = None,
    description: str | None = None,
    lock: LockSettings | None = None,
    drift: DriftReport | None = None,
    slices: Sequence[SliceMetrics] = (),
) -> RegistryDecision:
    """Register ``model_uri`` under ``name`` and move ``champion`` only if it is earned.

    ``slices`` are the new model's test slices (evaluation scored the same rows) for the slice
    floor. ``description`` (the model card) is attached to the version as it is created. The
    version is created first, outside any lock, so concurrent runs all keep theirs. The
    verdict and the alias move happen under the model's promotion lock
    (:mod:`wd_pipeline.tracking.promotion_lock`, settings ``lock`` or from the environment), against
    the champion as it is *then*: if another run promoted meanwhile, the comparison is
    redone against that one, so a race can never put a worse model on ``@champion``.
    ``drift`` (the training data against the champion's) at alert level keeps the new version
    challenger for a person to look at.
    """
    new_probability = model_probability(model_uri, test_features)
    new_threshold = model_threshold(model_uri)
    new_metrics = classification_metrics(test_label, new_probability, new_threshold)
    new = _Candidate(
        model_uri, new_probability, new_metrics, floor_violations(new_metrics, policy, slices), new_threshold
    )
    # Compared before the lock too: usually nobody promotes meanwhile, and the lock is then held only briefly.
    seen = current_champion(client, name)
    comparison = _compare(new, policy, name=name, champion_version=seen, features=test_features, label=test_label)

    version_number = _create_version(client, name, model_uri, run_id, tags, version_description(description))
    try:
        with promotion_lock(client, name, lock) as held:
            champion_version = current_champion(client, name)
            if champion_version != seen:
                comparison = _compare(
                    new,
                    policy,
                    name=name,
                    champion_version=champion_version,
                    features=test_features,
                    label=test_label,
                )
            decision = _decide(
                new,
                comparison,
                policy,
                name=name,
                version_number=version_number,
                champion_version=champion_version,
                lock_wait=held.waited,
                drift=drift,
            )
            for key, value in decision.to_dict().items():
                client.set_model_version_tag(name, version_number, f"gate.{key}", "" if value is None else str(value))
            held.ensure_held()
            client.set_registered_model_alias(name, decision.alias, version_number)
    except BaseException:
        client.delete_model_version(name, version_number)
        raise
    return decision


@dataclass(frozen=True)
class _Candidate:
    """The new model and what it scored on the test rows."""

    model_uri: str
    probability: np.ndarray
    metrics: dict[str, float]
    failed_floors: list[str]
    threshold: float = DEFAULT_THRESHOLD


def _create_version(
    client: MlflowClient, name: str, model_uri: str, run_id: str, tags: dict[str, str] | None, description: str | None
) -> str:
    """Create the version and return its number once the registry reports it READY.

    ``create_model_version`` does the waiting (``await_creation_for``, five minutes by
    default); a SQL or file store creates versions READY at once. A version that failed, or
    was still pending when the wait ran out, exists but can never be served: it is deleted
    again, so no half-registered version stays behind, and the user gets a
    :class:`TrackingError` naming it.
    """
    from mlflow.exceptions import MlflowException

    _ensure_registered_model(client, name)
    # A tracking server (unlike a local store) refuses a ``models:/m-…`` source without its model id.
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
    try:
        created = client.create_model_version(
            name, model_uri, run_id=run_id, tags=tags or {}, description=description, model_id=model_id
        )
    except MlflowException as exc:
        versions = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
        unready = [version for version in versions if version.status != "READY"]
        if not unready:
            raise
        for version in unready:
            client.delete_model_version(name, version.version)
        stuck = unready[0]
        detail = f"{stuck.status}: {stuck.status_message}" if stuck.status_message else stuck.status
        raise TrackingError(
            f"{name} v{stuck.version} did not become READY in the model registry ({detail}); "
            "the version was deleted, nothing was registered"
        ) from exc
    return str(created.version)


def _decide(
    new: _Candidate,
    comparison: _Comparison,
    policy: GatePolicy,
    *,
    name: str,
    version_number: str,
    champion_version: str | None,
    lock_wait: float,
    drift: DriftReport | None = None,
) -> RegistryDecision:
    new_value = new.metrics[policy.metric]
    alias, reason = _verdict(champion_version, new_value, comparison, new.failed_floors, policy, drift)
    difference = comparison.difference
    return RegistryDecision(
        model_name=name,
        version=version_number,
        alias=alias,
        gate_metric=policy.metric,
        new_value=new_value,
        champion_version=champion_version,
        champion_value=comparison.champion_value,
        reason=reason,
        model_uri=f"models:/{name}/{version_number}",
        margin=policy.margin,
        difference=difference.estimate if difference else None,
        ci_low=difference.low if difference else None,
        ci_high=difference.high if difference else None,
        ci_level=policy.level,
        test_roc_auc=new.metrics["roc_auc"],
        test_log_loss=new.metrics["log_loss"],
        threshold=new.threshold,
        champion_threshold=comparison.champion_threshold,
        floors="; ".join(new.failed_floors),
        lock_wait=round(lock_wait, 3),
        drift_level=drift.level if drift else "",
        drift_max_psi=drift.max_psi if drift else None,
    )


def _compare(
    new: _Candidate,
    policy: GatePolicy,
    *,
    name: str,
    champion_version: str | None,
    features: pd.DataFrame,
    label: np.ndarray,
) -> _Comparison:
    """The champion's gate metric on these rows and the paired difference, when comparable."""
    if champion_version is None:
        return _Comparison()
    champion_uri = f"models:/{name}/{champion_version}"
    change = schema_change(input_schema(new.model_uri), input_schema(champion_uri))
    if change is not None:
        return _Comparison(
            blocked=f"input columns differ from champion v{champion_version} ({change}): the data schema changed, "
            "so the two cannot be compared; review it and set the champion alias by hand if the change is intended"
        )
    try:
        champion_probability = model_probability(champion_uri, features)
        champion_threshold = model_threshold(champion_uri)
    except Exception as exc:  # a champion that cannot score these rows cannot be compared
        return _Comparison(blocked=f"champion v{champion_version} cannot score this data ({first_line(exc, 200)})")
    difference = paired_bootstrap_difference(
        label,
        new.probability,
        champion_probability,
        policy.metric,
        n_resamples=policy.bootstrap_samples,
        seed=policy.seed,
        level=policy.level,
        threshold=new.threshold,
        threshold_old=champion_threshold,
    )
    champion_value = classification_metrics(label, champion_probability, champion_threshold)[policy.metric]
    return _Comparison(champion_value, difference, champion_threshold=champion_threshold)


def _verdict(
    champion_version: str | None,
    new_value: float,
    comparison: _Comparison,
    failed_floors: list[str],
    policy: GatePolicy,
    drift: DriftReport | None = None,
) -> tuple[str, str]:
    """(alias, reason): floors first, then drift, then comparability, then the bootstrap bound."""
    if failed_floors:
        return CHALLENGER, f"below the floor: {'; '.join(failed_floors)}; never champion"
    if champion_version is None:
        return CHAMPION, "no champion yet: becomes champion"
    if drift is not None and drift.alerts:
        return CHALLENGER, f"drift: {drift.summary()}; new version is challenger for a person to decide"
    if comparison.blocked or comparison.difference is None:
        return CHALLENGER, f"{comparison.blocked}; new version is challenger"
    difference, metric = comparison.difference, policy.metric
    numbers = (
        f"test {metric} {new_value:.5f} vs champion v{champion_version} {comparison.champion_value:.5f}; "
        f"improvement {difference.estimate:+.5f}, {difference.level:.0%} CI "
        f"[{difference.low:+.5f}, {difference.high:+.5f}]"
    )
    if difference.low > policy.margin:
        return CHAMPION, f"{numbers} — lower bound above margin {policy.margin:g}: beats champion"
    return (
        CHALLENGER,
        f"{numbers} — does not beat champion v{champion_version} by margin {policy.margin:g}; champion kept",
    )


def _ensure_registered_model(client: MlflowClient, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        try:
            client.create_registered_model(
                name, description="Weight-decay (L2) regularised MLP; λ chosen on validation data by wd-pipeline."
            )
        except MlflowException as exc:
            if "already exists" not in str(exc).lower():
                raise TrackingError(f"cannot create registered model {name!r}: {first_line(exc, 200)}") from exc
