"""The champion gate against a real MLflow SQLite store with real (tiny) Keras models."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tests.helpers.registry_models import SIGNAL, labelled_frame, log_pyfunc, train_keras
from wd_pipeline.config import make_config
from wd_pipeline.data.schema import ColumnSpec, Role
from wd_pipeline.errors import TrackingError
from wd_pipeline.tracking import registry, runs
from wd_pipeline.tracking.registry import GatePolicy, schema_change, version_description


def gate_policy(**settings) -> GatePolicy:
    """The gate a run with these settings (else the defaults) applies."""
    return GatePolicy.from_config(make_config(**settings))


NO_FLOORS = gate_policy(min_test_roc_auc=0.0)


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, pd.DataFrame]:
    frame = labelled_frame()
    return frame.iloc[:200].reset_index(drop=True), frame.iloc[200:].reset_index(drop=True)


@pytest.fixture(scope="module")
def keras_files(tmp_path_factory, data) -> dict[str, str]:
    train, _ = data
    folder = tmp_path_factory.mktemp("keras")
    return {
        "strong": train_keras(train, folder / "strong"),
        "weak": train_keras(train, folder / "weak", epochs=0),
        "flipped": train_keras(train, folder / "flipped", flip=True),
        "other_schema": train_keras(train, folder / "other", features=["a", "b", "d"]),
        # The same columns, but c binned into text: a categorical column where the champion has a numeric one.
        "c_as_text": train_keras(with_text_c(train), folder / "c-as-text"),
    }


def with_text_c(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.assign(c=pd.cut(frame["c"], [-10, -0.5, 0.5, 10], labels=["low", "mid", "high"]).astype(object))


def gate(name: str, kind: str, keras_files, data, policy: GatePolicy = NO_FLOORS, features: list[str] = SIGNAL):
    train, test = data
    if kind == "c_as_text":  # that run's rows hold c as text
        train, test = with_text_c(train), with_text_c(test)
    model_uri, run_id = log_pyfunc(keras_files[kind], train, features)
    return registry.register(
        runs.get_client(),
        name=name,
        model_uri=model_uri,
        run_id=run_id,
        test_features=test.drop(columns="y"),
        test_label=test["y"].to_numpy(),
        policy=policy,
    )


def aliases(name: str) -> dict[str, str]:
    return {alias: str(version) for alias, version in runs.get_client().get_registered_model(name).aliases.items()}


def test_equal_and_worse_models_are_refused_a_clearly_better_one_promoted(
    module_store: Path, keras_files, data
) -> None:
    name = "gate-compare"
    first = gate(name, "weak", keras_files, data)
    assert (first.version, first.alias) == ("1", "champion")

    same = gate(name, "weak", keras_files, data)
    assert same.alias == "challenger"
    assert (same.difference, same.ci_low, same.ci_high) == (0.0, 0.0, 0.0)
    assert "does not beat champion v1 by margin 0" in same.reason

    too_demanding = gate(name, "strong", keras_files, data, gate_policy(min_test_roc_auc=0.0, gate_margin=5.0))
    assert too_demanding.alias == "challenger" and too_demanding.ci_low > 0

    better = gate(name, "strong", keras_files, data)
    assert better.alias == "champion"
    assert better.new_value < better.champion_value and 0 < better.ci_low <= better.difference <= better.ci_high
    assert "beats champion" in better.reason

    worse = gate(name, "weak", keras_files, data)
    assert worse.alias == "challenger" and worse.ci_high < 0
    assert aliases(name) == {"champion": "4", "challenger": "5"}
    tags = runs.get_client().get_model_version(name, "4").tags
    assert tags["gate.alias"] == "champion" and float(tags["gate.ci_low"]) == pytest.approx(better.ci_low)
    assert tags["gate.champion_version"] == "1" and tags["gate.margin"] == "0.0"


def test_a_model_below_a_floor_is_never_champion(module_store: Path, keras_files, data) -> None:
    name = "gate-floors"
    flipped = gate(name, "flipped", keras_files, data, gate_policy())
    assert flipped.alias == "challenger"
    assert flipped.reason.startswith("below the floor: test roc_auc") and "< minimum 0.6" in flipped.reason
    assert "champion" not in aliases(name)

    good = gate(name, "strong", keras_files, data, gate_policy())
    assert good.alias == "champion" and good.test_roc_auc > 0.9

    capped = gate(name, "strong", keras_files, data, gate_policy(max_test_log_loss=1e-4))
    assert capped.alias == "challenger" and "> maximum 0.0001" in capped.floors
    assert aliases(name)["champion"] == good.version


def test_a_changed_schema_blocks_promotion(module_store: Path, keras_files, data) -> None:
    name = "gate-schema"
    champion = gate(name, "strong", keras_files, data)
    changed = gate(name, "other_schema", keras_files, data, features=["a", "b", "d"])
    assert (champion.alias, changed.alias) == ("champion", "challenger")
    assert "input columns differ from champion v1 (added ['d'], removed ['c'])" in changed.reason
    assert changed.difference is None
    assert aliases(name)["champion"] == champion.version

    recoded = gate(name, "c_as_text", keras_files, data)
    assert recoded.alias == "challenger" and recoded.difference is None
    assert (
        "input columns differ from champion v1 (changed ['c: numeric double → categorical string'])" in recoded.reason
    )
    assert registry.input_schema(f"models:/{name}/{recoded.version}") == [
        ColumnSpec("a", Role.NUMERIC, "double"),
        ColumnSpec("b", Role.NUMERIC, "double"),
        ColumnSpec("c", Role.CATEGORICAL, "string"),
    ]
    assert aliases(name)["champion"] == champion.version


def test_a_version_that_never_becomes_ready_is_deleted_and_reported(
    module_store: Path, keras_files, data, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.store.model_registry.abstract_store import AbstractStore
    from mlflow.store.model_registry.dbmodels.models import SqlModelVersion
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore

    create = SqlAlchemyStore.create_model_version

    def failing_registration(self: SqlAlchemyStore, *args, **kwargs):
        """Answers PENDING, as a registry that prepares versions in the background does; the work then fails."""
        version = create(self, *args, **kwargs)
        with self.ManagedSessionMaker() as session:
            session.query(SqlModelVersion).filter(
                SqlModelVersion.name == version.name, SqlModelVersion.version == int(version.version)
            ).update({"status": "FAILED_REGISTRATION", "status_message": "copying the artifacts failed"})
        version._status = "PENDING_REGISTRATION"
        return version

    monkeypatch.setattr(SqlAlchemyStore, "create_model_version", failing_registration)
    # MLflow's generic wait for READY (a SQL store skips it: its versions are READY at once).
    monkeypatch.setattr(SqlAlchemyStore, "_await_model_version_creation", AbstractStore._await_model_version_creation)
    with pytest.raises(TrackingError) as failure:
        gate("gate-unready", "strong", keras_files, data)
    assert str(failure.value) == (
        "gate-unready v1 did not become READY in the model registry "
        "(FAILED_REGISTRATION: copying the artifacts failed); the version was deleted, nothing was registered"
    )
    assert runs.get_client().search_model_versions("name = 'gate-unready'") == []


def numeric(*names: str) -> list[ColumnSpec]:
    return [ColumnSpec(name, Role.NUMERIC, "double") for name in names]


def test_schema_change_names_columns_and_order() -> None:
    assert schema_change(numeric("a", "b"), numeric("a", "b")) is None
    assert schema_change(numeric("b", "a"), numeric("a", "b")) == "same columns in another order"
    assert schema_change(numeric("a", "x"), numeric("a", "b", "c")) == "added ['x'], removed ['b', 'c']"


def test_schema_change_names_a_changed_role_or_type() -> None:
    zip_code = ColumnSpec("zip", Role.NUMERIC, "int64")
    as_category = ColumnSpec("zip", Role.CATEGORICAL, "int64")
    assert schema_change([*numeric("a"), as_category], [*numeric("a"), zip_code]) == (
        "changed ['zip: numeric int64 → categorical int64']"
    )
    assert schema_change([ColumnSpec("n", Role.NUMERIC, "double")], [ColumnSpec("n", Role.NUMERIC, "int64")]) == (
        "changed ['n: numeric int64 → numeric double']"
    )
    both = [ColumnSpec("b", Role.CATEGORICAL, "string"), ColumnSpec("a", Role.NUMERIC, "float")]
    assert schema_change(both, numeric("a", "b")) == (
        "changed ['b: numeric double → categorical string', 'a: numeric double → numeric float']"
    )
    # A version whose source types were not recorded compares on names and roles only.
    assert schema_change([ColumnSpec("a", Role.NUMERIC, "")], numeric("a")) is None
    assert schema_change([ColumnSpec("a", Role.CATEGORICAL, "")], numeric("a")) == (
        "changed ['a: numeric double → categorical']"
    )


def test_a_version_logged_without_column_roles_is_read_from_its_signature(module_store: Path, keras_files) -> None:
    """Versions logged before the model config listed the columns: roles come from the signature's types."""
    import mlflow

    columns = [ColumnSpec("a", Role.NUMERIC, ""), ColumnSpec("colour", Role.CATEGORICAL, "")]
    client = runs.get_client()
    run_id = client.create_run(runs.ensure_experiment(client, "gate-legacy")).info.run_id
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(registry.PYFUNC_CODE),
            artifacts={"keras_model": keras_files["strong"]},
            signature=registry.input_signature(columns),
            pip_requirements=registry.serving_requirements(),
        )
    assert registry.model_config(info.model_uri) == {}
    assert registry.input_schema(info.model_uri) == columns


def test_a_long_model_card_is_cut_at_a_section_to_fit_the_registry() -> None:
    """PostgreSQL refuses a version description over 5,000 characters (SQLite lets it through)."""
    card = "# Model card\n\n## Data\n\n" + "x" * 100 + "\n\n## Inputs\n\n" + "| a | b |\n" * 600 + "\n## Code\n\nabc\n"
    cut = version_description(card)
    assert len(cut) <= 5000
    assert cut.startswith("# Model card\n\n## Data\n\n" + "x" * 100)
    assert "## Inputs" not in cut and "model_card.md" in cut
    assert version_description("# short\n") == "# short\n"
    assert version_description(None) is None


def test_each_model_is_compared_at_its_own_threshold(module_store: Path, keras_files, data) -> None:
    from tests.helpers.networks import frame_schema
    from wd_pipeline.ml.metrics import classification_metrics
    from wd_pipeline.ml.preprocessing import Preprocessing

    name, (train, test) = "gate-thresholds", data
    client = runs.get_client()
    policy = gate_policy(min_test_roc_auc=0.0, gate_metric="accuracy")

    def register_at(threshold: float) -> registry.RegistryDecision:
        run_id = client.create_run(runs.ensure_experiment(client, "gate-test")).info.run_id
        model_uri, _ = registry.log_model(
            run_id,
            keras_files["strong"],
            Preprocessing.load(Path(keras_files["strong"]).parent),
            frame_schema(train, SIGNAL),
            train.head(5),
            threshold=threshold,
        )
        features, label = test.drop(columns="y"), test["y"].to_numpy()
        return registry.register(
            client,
            name=name,
            model_uri=model_uri,
            run_id=run_id,
            test_features=features,
            test_label=label,
            policy=policy,
        )

    champion = register_at(0.5)
    # The same network labelling from 0.97: as accurate as the champion only if thresholds were ignored.
    strict = register_at(0.97)
    probability = registry.model_probability(strict.model_uri, test.drop(columns="y"))
    label = test["y"].to_numpy()
    assert (strict.threshold, strict.champion_threshold) == (0.97, 0.5)
    assert strict.new_value == pytest.approx(classification_metrics(label, probability, 0.97)["accuracy"])
    assert strict.champion_value == pytest.approx(champion.new_value)
    assert strict.difference < 0 and strict.alias == "challenger"
    assert runs.get_client().get_model_version(name, strict.version).tags["gate.threshold"] == "0.97"
