"""Log the chosen model, register it, and decide whether it becomes the champion.

The gate compares the new model with the current ``champion`` on *this* run's test split,
so both are judged on the same rows. A tie keeps the old champion: moving the alias must be
earned. If anything fails after the version is created, the version is deleted again, so
the registry never holds a half-registered model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from wd_pipeline.errors import TrackingError
from wd_pipeline.evaluate import classification_metrics, is_better

if TYPE_CHECKING:
    from mlflow import MlflowClient

CHAMPION = "champion"
CHALLENGER = "challenger"
PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")
SERVING_PACKAGES = ("mlflow", "tensorflow-cpu", "keras", "pandas", "numpy")


@dataclass(frozen=True)
class RegistryDecision:
    """What the gate decided and the numbers it decided on."""

    model_name: str
    version: str
    alias: str
    gate_metric: str
    new_value: float
    champion_version: str | None
    champion_value: float | None
    reason: str
    model_uri: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def serving_requirements() -> list[str]:
    """Exact pins of what the served model imports (skips MLflow's slow, noisy inference)."""
    return [f"{name}=={version(name)}" for name in SERVING_PACKAGES]


def log_model(
    parent_run_id: str, keras_model_path: str, example: pd.DataFrame, features: list[str]
) -> tuple[str, str]:
    """Log the pyfunc-wrapped network to the parent run; returns (model URI, model id)."""
    import mlflow
    from mlflow.models import infer_signature

    example = example[features].astype("float64")
    sample_output = pd.DataFrame({"probability": np.full(len(example), 0.5)})
    signature = infer_signature(example, sample_output)
    with mlflow.start_run(run_id=parent_run_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(PYFUNC_CODE),
            artifacts={"keras_model": keras_model_path},
            model_config={"input_columns": features},
            signature=signature,
            input_example=example,
            pip_requirements=serving_requirements(),
        )
    return info.model_uri, info.model_id


def score(model_uri: str, features: pd.DataFrame) -> np.ndarray:
    """Probabilities from a logged or registered pyfunc model."""
    import mlflow

    model = mlflow.pyfunc.load_model(model_uri)
    return model.predict(features)["probability"].to_numpy()


def current_champion(client: MlflowClient, name: str) -> str | None:
    """Version number holding the ``champion`` alias, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None


def register(
    client: MlflowClient,
    name: str,
    model_uri: str,
    run_id: str,
    test_features: pd.DataFrame,
    test_label: np.ndarray,
    gate_metric: str,
    tags: dict[str, str] | None = None,
) -> RegistryDecision:
    """Register ``model_uri`` under ``name`` and move ``champion`` only if it is earned."""
    new_value = classification_metrics(test_label, score(model_uri, test_features))[gate_metric]
    champion_version = current_champion(client, name)
    champion_value, reason = _champion_value(name, champion_version, test_features, test_label, gate_metric)

    _ensure_registered_model(client, name)
    # A tracking server (unlike a local store) refuses a ``models:/m-…`` source without its model id.
    model_id = model_uri.removeprefix("models:/") if model_uri.startswith("models:/m-") else None
    created = client.create_model_version(name, model_uri, run_id=run_id, tags=tags or {}, model_id=model_id)
    version_number = str(created.version)
    try:
        if champion_version is None:
            alias, reason = CHAMPION, "first version: becomes champion"
        elif champion_value is None:
            alias = CHALLENGER
        elif is_better(new_value, champion_value, gate_metric):
            alias = CHAMPION
            reason = f"test {gate_metric} {new_value:.5f} beats champion v{champion_version} ({champion_value:.5f})"
        else:
            alias = CHALLENGER
            reason = (
                f"test {gate_metric} {new_value:.5f} does not beat champion v{champion_version} "
                f"({champion_value:.5f}); champion kept"
            )
        _wait_ready(client, name, version_number)
        decision = RegistryDecision(
            name, version_number, alias, gate_metric, new_value, champion_version, champion_value, reason,
            f"models:/{name}/{version_number}",
        )
        for key, value in decision.to_dict().items():
            client.set_model_version_tag(name, version_number, f"gate.{key}", "" if value is None else str(value))
        client.set_registered_model_alias(name, alias, version_number)
    except BaseException:
        client.delete_model_version(name, version_number)
        raise
    return decision


def _champion_value(
    name: str, champion_version: str | None, features: pd.DataFrame, label: np.ndarray, metric: str
) -> tuple[float | None, str]:
    """The champion's gate metric on this test split; None if it cannot score these rows."""
    if champion_version is None:
        return None, ""
    try:
        probability = score(f"models:/{name}@{CHAMPION}", features)
    except Exception as exc:  # a champion trained on other columns cannot be compared
        return None, f"champion v{champion_version} cannot score this data ({_short(exc)}); new version is challenger"
    return classification_metrics(label, probability)[metric], ""


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
                raise TrackingError(f"cannot create registered model {name!r}: {_short(exc)}") from exc


def _wait_ready(client: MlflowClient, name: str, version_number: str, attempts: int = 60) -> None:
    import time

    for _ in range(attempts):
        status = client.get_model_version(name, version_number).status
        if status == "READY":
            return
        if status == "FAILED_REGISTRATION":
            raise TrackingError(f"registration of {name} v{version_number} failed in the model registry")
        time.sleep(0.5)
    raise TrackingError(f"{name} v{version_number} did not become READY in the model registry")


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
