"""What the network learns about raw columns, and from which rows: training rows only, per fold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.helpers.networks import MIXED_ONE_HOT_MAX, MixedTable, fit_full_batch, frame_schema, mixed_table
from wd_pipeline.config import make_config
from wd_pipeline.data import splits
from wd_pipeline.data.schema import ColumnSpec, Role, TableSchema
from wd_pipeline.ml import preprocessing, training
from wd_pipeline.ml.network import build_model, embeddings, predict_frame
from wd_pipeline.ml.preprocessing import MISSING, Encoding, Preprocessing, adapt, encode


def gappy() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Training rows with gaps in ``income`` and ``colour`` only; validation rows with gaps in ``age`` and
    values of their own (a large income, a colour and an age that training never saw)."""
    train = pd.DataFrame(
        {
            "income": [10.0, np.nan, 30.0, 40.0, np.nan, 60.0],
            "age": [20.0, 30.0, 40.0, 50.0, 60.0, 70.0],
            "colour": ["red", "blue", None, "red", "red", "blue"],
        }
    )
    validation = pd.DataFrame(
        {
            "income": [1000.0, np.nan, 20.0],
            "age": [np.nan, 99.0, np.nan],
            "colour": ["violet", None, "blue"],
        }
    )
    return train, validation


def adapted(train: pd.DataFrame, one_hot_max: int = 32) -> Preprocessing:
    return adapt(train, frame_schema(train, list(train.columns)), one_hot_max=one_hot_max)


def test_medians_and_indicators_are_learnt_from_training_rows_only() -> None:
    train, validation = gappy()
    prep = adapted(train)
    income, age = prep.numeric
    assert (income.median, income.missing_rate, income.indicator) == (35.0, round(2 / 6, 6), True)
    # Validation rows have gaps in age and values far from training's: neither reaches the model.
    assert (age.median, age.missing_rate, age.indicator) == (45.0, 0.0, False)
    assert prep.indicators == ["income"]
    assert prep.rows == 6
    # Standardisation is fitted on the training rows as imputed: income, age, then income's was-missing input.
    imputed = np.array([[10, 35, 30, 40, 35, 60], [20, 30, 40, 50, 60, 70], [0, 1, 0, 0, 1, 0]], dtype=np.float64).T
    np.testing.assert_allclose(prep.mean, imputed.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(prep.variance, imputed.var(axis=0), rtol=1e-5)

    encoded = encode(prep, validation)
    assert encoded.dense.shape == (3, prep.dense_width) == (3, 3 + 4)  # colour: red, blue, <missing> + unseen
    raw = np.array([[1000, 45, 0], [35, 99, 1], [20, 45, 0]], dtype=np.float64)  # gaps filled with training medians
    expected = (raw - imputed.mean(axis=0)) / np.sqrt(imputed.var(axis=0))
    np.testing.assert_allclose(encoded.dense[:, :3], expected, rtol=1e-5, atol=1e-6)


def test_a_missing_category_is_its_own_category_and_an_unseen_one_is_out_of_vocabulary() -> None:
    train, validation = gappy()
    (colour,) = adapted(train).categorical
    # Most frequent first; the gap is a category with its count, like any other.
    assert colour.vocabulary == ("red", "blue", MISSING) and colour.counts == (3, 2, 1)
    assert colour.missing_rate == round(1 / 6, 6) and colour.encoding is Encoding.ONE_HOT
    one_hot = encode(adapted(train), validation).dense[:, 3:]
    # Slot 0 is out of vocabulary, then the vocabulary in order.
    np.testing.assert_array_equal(one_hot, [[1, 0, 0, 0], [0, 0, 0, 1], [0, 0, 1, 0]])

    # Without gaps in training, a gap has no category of its own: it is out of vocabulary like "violet".
    complete = adapted(train.assign(colour=["red", "blue", "blue", "red", "red", "blue"]))
    assert complete.categorical[0].vocabulary == ("blue", "red")  # a tie in counts: by name
    np.testing.assert_array_equal(encode(complete, validation).dense[:, 3:], [[1, 0, 0], [1, 0, 0], [0, 1, 0]])


@pytest.mark.parametrize("gap", [None, np.nan, pd.NA])
def test_every_spelling_of_a_gap_is_the_missing_category(gap) -> None:
    column = pd.Series(["a", gap, "b", "a"], dtype=object, name="c")
    np.testing.assert_array_equal(preprocessing.category_strings(column), ["a", MISSING, "b", "a"])


def test_categories_are_ordered_by_count_then_name() -> None:
    frame = pd.DataFrame({"c": ["b", "c", "a", "c", "b", "d", "c"]})
    (column,) = adapted(frame).categorical
    assert column.vocabulary == ("c", "b", "a", "d") and column.counts == (3, 2, 1, 1)


def test_integer_codes_as_categories_read_as_the_served_model_spells_them() -> None:
    """A zip code forced categorical: the gap makes pandas hold floats, and 10115.0 must still be category '10115'."""
    codes = pd.DataFrame({"zip": [10115, 20095, None, 10115]})
    assert codes["zip"].dtype == np.float64
    prep = adapt(codes, TableSchema("y", (ColumnSpec("zip", Role.CATEGORICAL, "int64"),)), one_hot_max=32)
    assert prep.categorical[0].vocabulary == ("10115", "20095", MISSING)
    as_text = pd.DataFrame({"zip": ["10115", "20095", None, "10115"]})
    np.testing.assert_array_equal(encode(prep, codes).dense, encode(prep, as_text).dense)
    np.testing.assert_array_equal(encode(prep, codes).dense[:, 0], [0, 0, 0, 0])  # nothing out of vocabulary


@pytest.mark.parametrize(
    ("one_hot_max", "encoding", "dim"), [(6, Encoding.ONE_HOT, 0), (5, Encoding.EMBEDDING, preprocessing.EMBEDDING_DIM)]
)
def test_one_hot_up_to_one_hot_max_slots_then_an_embedding(one_hot_max: int, encoding: Encoding, dim: int) -> None:
    """colour: red, green, blue, grey and <missing>, plus the unseen slot: 6 slots."""
    table = mixed_table(rows=200, seed=2)
    prep = adapt(table.features[["colour"]], frame_schema(table.frame, ["colour"]), one_hot_max=one_hot_max)
    (colour,) = prep.categorical
    assert colour.slots == 6
    assert (colour.encoding, colour.embedding_dim) == (encoding, dim)
    encoded = encode(prep, table.features)
    one_hot = encoding is Encoding.ONE_HOT
    assert (encoded.dense.shape[1], encoded.indices.shape[1]) == ((6, 0) if one_hot else (0, 1))


def test_every_embedded_column_has_the_same_width_whatever_its_vocabulary() -> None:
    """One width lets the packed grid hold all tables as one and look them up in one gather."""
    frame = pd.DataFrame({"id_like": [f"v{i}" for i in range(400)], "few": [f"w{i % 70}" for i in range(400)]})
    columns = adapted(frame).categorical
    assert [(c.slots, c.encoding, c.embedding_dim) for c in columns] == [
        (401, Encoding.EMBEDDING, preprocessing.EMBEDDING_DIM),
        (71, Encoding.EMBEDDING, preprocessing.EMBEDDING_DIM),
    ]


@pytest.fixture(scope="module")
def mixed() -> tuple[MixedTable, MixedTable, Preprocessing]:
    table = mixed_table(rows=200, seed=5)
    train, validation = table.rows(0, 150), table.rows(150, 200)
    return train, validation, adapt(train.features, table.schema, one_hot_max=MIXED_ONE_HOT_MAX)


def test_encode_computes_what_the_networks_own_input_layers_compute(mixed) -> None:
    """The packed grid trains on ``encode``'s rows; the saved network runs its own layers on raw rows."""
    import keras

    _, validation, prep = mixed
    rows = validation.features.copy()
    rows.loc[0, "city"] = "city-never-seen"
    rows.loc[1, ["income", "age", "colour", "city"]] = [np.nan, np.nan, None, None]
    network = build_model(prep, lam=0.1, seed=1)
    first_layer_input = keras.Model(network.inputs, network.get_layer("first_layer_input").output)
    inside = np.asarray(first_layer_input(preprocessing.model_inputs(rows, prep)))
    encoded = encode(prep, rows)
    (table,) = embeddings(network)
    assert encoded.indices[0, 0] == 0 and encoded.indices[1, 0] == 0  # unseen, and a gap never seen in training
    np.testing.assert_allclose(inside[:, : prep.dense_width], encoded.dense, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(inside[:, prep.dense_width :], table[encoded.indices[:, 0]], rtol=1e-6)


def test_encode_in_slices_equals_encode_at_once(mixed, monkeypatch: pytest.MonkeyPatch) -> None:
    _, validation, prep = mixed
    whole = encode(prep, validation.features)
    monkeypatch.setattr(preprocessing, "ENCODE_ROWS", 7)
    sliced = encode(prep, validation.features)
    np.testing.assert_array_equal(sliced.dense, whole.dense)
    np.testing.assert_array_equal(sliced.indices, whole.indices)


def test_the_saved_network_reloads_safely_and_predicts_the_same_on_raw_rows(mixed, tmp_path: Path) -> None:
    train, validation, prep = mixed
    network = build_model(prep, lam=0.01, learning_rate=0.05, seed=1)
    fit_full_batch(network, preprocessing.model_inputs(train.features, prep), train.label, epochs=20)
    network.save(tmp_path / training.MODEL_FILE)
    prep.save(tmp_path)

    rows = validation.features.copy()
    rows.loc[0, "city"] = "city-never-seen"
    rows.loc[1, "colour"] = "purple"
    rows.loc[2, ["income", "age", "colour", "city"]] = [np.nan, np.nan, None, None]
    rows.loc[3, "income"] = np.nan
    loaded, loaded_prep = training.load_model(tmp_path / training.MODEL_FILE)  # Keras safe mode
    assert loaded_prep == prep
    before = predict_frame(network, prep, rows)
    after = predict_frame(loaded, loaded_prep, rows)
    assert np.isfinite(after).all() and ((after >= 0) & (after <= 1)).all()
    np.testing.assert_allclose(after, before, rtol=1e-6, atol=1e-7)
    # Two unseen cities share the out-of-vocabulary slot, so they predict alike.
    other = rows.iloc[[0]].assign(city="another-new-city")
    np.testing.assert_allclose(predict_frame(loaded, loaded_prep, other), after[[0]], rtol=1e-6)
    # The model learnt something: an unseen city is not the same as a known one.
    known = rows.iloc[[0]].assign(city=train.frame.loc[0, "city"])
    assert abs(float(predict_frame(loaded, loaded_prep, known)[0]) - float(after[0])) > 1e-4


def test_schema_rows_say_what_was_learnt_for_each_column() -> None:
    train, _ = gappy()
    schema = frame_schema(train, list(train.columns))
    assert preprocessing.schema_rows(schema, adapted(train)) == [
        {
            "column": "income",
            "role": "numeric",
            "type": "double",
            "encoding": "standardised",
            "missing_pct": 33.33,
            "learnt_on_training_rows": "median 35 + was-missing input",
        },
        {
            "column": "age",
            "role": "numeric",
            "type": "double",
            "encoding": "standardised",
            "missing_pct": 0.0,
            "learnt_on_training_rows": "median 45",
        },
        {
            "column": "colour",
            "role": "categorical",
            "type": "string",
            "encoding": "one_hot (4 slots)",
            "missing_pct": 16.67,
            "learnt_on_training_rows": f"3 categories: red (3), blue (2), {MISSING} (1)",
        },
    ]


def test_preprocessing_survives_its_json_file(mixed, tmp_path: Path) -> None:
    prep = mixed[2]
    prep.save(tmp_path)
    assert Preprocessing.load(tmp_path) == prep


# --- fold-local adaptation, through the training units the pipeline runs --------------------------------------


FOLDS = 2


@pytest.fixture(scope="module")
def fold_preps(tmp_path_factory: pytest.TempPathFactory) -> dict[int, tuple[Preprocessing, str]]:
    """Each fold's and the refit's preprocessing and model path, trained through ``train_chunk``.

    One development row holds the only "violet" and the only missing age: whichever fold
    validates on that row must know neither; every other fold, and the refit, trains on it.
    The split layer is replaced by these rows (its file format is not what is tested here).
    """
    table = mixed_table(rows=90, seed=3)
    frame = table.frame.astype({"age": "float64"})
    frame.loc[7, ["colour", "age"]] = ["violet", np.nan]
    parts = {
        "train": splits.LabeledData(frame.iloc[:60][table.features.columns], frame["y"].to_numpy(np.int8)[:60]),
        "validation": splits.LabeledData(
            frame.iloc[60:][table.features.columns].reset_index(drop=True), frame["y"].to_numpy(np.int8)[60:]
        ),
    }
    patch = pytest.MonkeyPatch()
    patch.setattr(splits, "load_split", lambda folder, name: parts[name])
    patch.setattr(splits, "read_splits", lambda folder, names: splits.concat([parts[name] for name in names]))
    patch.setattr(splits, "read_schema", lambda folder: frame_schema(frame, list(table.features.columns)))
    work = tmp_path_factory.mktemp("fold-work")
    config = make_config(label="y", folds=FOLDS, grid=[0.0], epochs=1, patience=0, one_hot_max=MIXED_ONE_HOT_MAX)
    try:
        found = {}
        for fold in [*range(FOLDS), training.REFIT]:
            (result,) = training.train_chunk(work / "splits" / "s", config, "l2", [0.0], fold, work_dir=work)
            found[fold] = (Preprocessing.load(Path(result.model_path).parent), result.model_path)
        return found
    finally:
        patch.undo()


def test_a_category_seen_only_in_validation_rows_is_out_of_vocabulary_for_that_folds_model(fold_preps) -> None:
    def knows_violet(prep: Preprocessing) -> bool:
        return "violet" in next(c for c in prep.categorical if c.name == "colour").vocabulary

    blind = [fold for fold in range(FOLDS) if not knows_violet(fold_preps[fold][0])]
    assert len(blind) == 1
    assert knows_violet(fold_preps[training.REFIT][0])
    assert [fold_preps[fold][0].rows for fold in [*range(FOLDS), training.REFIT]] == [45, 45, 90]

    # The saved network of the blind fold sends "violet" to the out-of-vocabulary slot; a fold that trained
    # on that row gives it a slot of its own.
    for fold, expected_oov in ((blind[0], True), ((blind[0] + 1) % FOLDS, False)):
        network, prep = training.load_model(fold_preps[fold][1])
        colour = next(i for i, c in enumerate(prep.categorical) if c.name == "colour")
        one_hot = np.asarray(network.get_layer(f"lookup_{colour}")(np.array([["violet"]], dtype=object)))
        assert bool(one_hot[0, 0]) is expected_oov, fold


def test_indicators_come_from_the_folds_training_rows(fold_preps) -> None:
    """Age has one gap, in the row only one fold validates on: only that fold's model has no was-missing age input."""
    with_age_gap = {fold: "age" in prep.indicators for fold, (prep, _) in fold_preps.items()}
    knows_violet = {
        fold: "violet" in next(c for c in prep.categorical if c.name == "colour").vocabulary
        for fold, (prep, _) in fold_preps.items()
    }
    assert with_age_gap == knows_violet
    assert sorted(with_age_gap.values()) == [False, True, True]
