"""Grouped splits: no group on two sides of test / validation / train or of any CV fold, class balance kept, seeded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.model_selection import StratifiedKFold, train_test_split

from wd_pipeline.config import make_config
from wd_pipeline.data import groups, splits
from wd_pipeline.errors import DataError
from wd_pipeline.ml.training import REFIT, fold_data

PROTEIN = Path(__file__).parents[2] / "data" / "protein.parquet"


def grouped_rows(
    rows: int = 4000, count: int = 300, rate: float = 0.08, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(label, groups): groups of uneven size whose positive rates differ, as in real grouped data."""
    rng = np.random.default_rng(seed)
    group = np.sort(rng.integers(0, count, rows))
    group_rate = rng.beta(1, (1 - rate) / rate, count)
    return (rng.random(rows) < group_rate[group]).astype(np.int8), group


def sides(group: np.ndarray, parts: list[np.ndarray]) -> list[set[int]]:
    return [set(group[rows].tolist()) for rows in parts]


def assert_disjoint(group_sets: list[set]) -> None:
    for i, first in enumerate(group_sets):
        for second in group_sets[i + 1 :]:
            assert not first & second


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_test_validation_and_train_never_share_a_group(seed: int) -> None:
    label, group = grouped_rows(seed=seed)
    parts = groups.split_rows(label, group, test_fraction=0.2, val_fraction=0.15, seed=seed)
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(label)))
    assert_disjoint(sides(group, list(parts)))


def test_the_draw_keeps_sizes_and_class_balance_close_to_the_fractions() -> None:
    label, group = grouped_rows()
    train, validation, test = groups.split_rows(label, group, test_fraction=0.2, val_fraction=0.15, seed=3)
    rate = label.mean()
    for rows, share in ((train, 0.65), (validation, 0.15), (test, 0.2)):
        assert len(rows) / len(label) == pytest.approx(share, abs=0.02)
        assert label[rows].mean() == pytest.approx(rate, rel=0.1)


def test_a_few_groups_holding_the_positives_are_still_shared_out() -> None:
    """Greedy placement alone puts too many of a rare class in the small side; the swaps repair it."""
    table = pq.read_table(PROTEIN, columns=["block", "target"])
    label, group = table["target"].to_numpy(), table["block"].to_numpy()
    _, drawn = groups.stratified_group_draw(label, group, 0.2, 42)
    assert label[drawn].sum() / label.sum() == pytest.approx(0.2, abs=0.02)
    assert len(drawn) / len(label) == pytest.approx(0.2, abs=0.02)


def test_the_draw_is_seeded() -> None:
    label, group = grouped_rows()
    first = groups.split_rows(label, group, test_fraction=0.2, val_fraction=0.15, seed=5)
    again = groups.split_rows(label, group, test_fraction=0.2, val_fraction=0.15, seed=5)
    other = groups.split_rows(label, group, test_fraction=0.2, val_fraction=0.15, seed=6)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not np.array_equal(first[2], other[2])


def test_every_cv_fold_keeps_each_group_on_one_side() -> None:
    label, group = grouped_rows()
    folds = groups.fold_rows(label, group, 5, seed=11)
    assert len(folds) == 5
    validated = np.concatenate([val for _, val in folds])
    assert sorted(validated.tolist()) == list(range(len(label)))
    for train, val in folds:
        assert_disjoint(sides(group, [train, val]))
        assert label[val].mean() == pytest.approx(label.mean(), rel=0.25)


def test_without_groups_the_folds_are_the_stratified_ones() -> None:
    label, _ = grouped_rows()
    expected = StratifiedKFold(n_splits=4, shuffle=True, random_state=9).split(np.zeros(len(label)), label)
    for (train, val), (old_train, old_val) in zip(groups.fold_rows(label, None, 4, 9), expected, strict=True):
        assert np.array_equal(train, old_train) and np.array_equal(val, old_val)


def prepare(tmp_path: Path, frame: pd.DataFrame, **settings) -> Path:
    path = tmp_path / "grouped.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    base = {"label": "y", "positive_class": None, "work_dir": str(tmp_path / "work"), "data": str(path)}
    return splits.prepare(make_config(**{**base, **settings}))


def frame_of(label: np.ndarray, group: np.ndarray) -> pd.DataFrame:
    rng = np.random.default_rng(1)
    return pd.DataFrame({"a": rng.normal(size=len(label)), "b": rng.normal(size=len(label)), "patient": group}).assign(
        patient=lambda d: [f"p{value}" for value in d.patient], y=label
    )


def test_prepared_splits_and_folds_keep_groups_apart_and_the_manifest_counts_them(tmp_path: Path) -> None:
    label, group = grouped_rows(rows=1500, count=90)
    folder = prepare(tmp_path, frame_of(label, group), group_column="patient", folds=4)
    manifest = splits.read_manifest(folder)
    assert manifest["group_column"] == "patient"
    assert manifest["features"] == ["a", "b"]
    stored = {name: set(splits.load_split(folder, name).carried["patient"]) for name in splits.SPLITS}
    assert_disjoint(list(stored.values()))
    assert {name: manifest["splits"][name]["groups"] for name in splits.SPLITS} == {
        name: len(values) for name, values in stored.items()
    }
    assert sum(len(values) for values in stored.values()) == 90
    for fold in range(4):
        train, validation = fold_data(folder, 4, fold, seed=3)
        assert validation is not None
        assert_disjoint([set(train.carried["patient"]), set(validation.carried["patient"])])
    refit, none = fold_data(folder, 4, REFIT, seed=3)
    assert none is None and set(refit.carried["patient"]) == stored["train"] | stored["validation"]


def test_without_a_group_column_the_split_is_the_ungrouped_one(tmp_path: Path) -> None:
    label, group = grouped_rows(rows=600, count=40)
    frame = frame_of(label, group).drop(columns="patient")
    folder = prepare(tmp_path, frame)
    manifest = splits.read_manifest(folder)
    assert "group_column" not in manifest
    assert all("groups" not in manifest["splits"][name] for name in splits.SPLITS)
    config = make_config(label="y", positive_class=None)
    _, test = train_test_split(
        np.arange(len(label)), test_size=config.test_fraction, stratify=label, random_state=config.seed
    )
    assert sorted(splits.load_split(folder, "test").features["a"]) == sorted(frame["a"].to_numpy()[test])


@pytest.mark.parametrize(
    ("group", "message"),
    [
        (
            np.full(300, 4),
            "group column 'patient' holds a single group: a grouped split needs groups to keep apart; "
            "pass --group-column with the column that tells the groups apart, or leave it out",
        ),
        (
            np.arange(300) % 2,
            "group column 'patient' holds 2 groups: test, validation and training each take whole groups, "
            "so at least 3 are needed; pass --group-column with a column of more groups, or leave it out",
        ),
    ],
)
def test_too_few_groups_are_refused(tmp_path: Path, group: np.ndarray, message: str) -> None:
    label = (np.arange(300) % 3 == 0).astype(np.int8)
    with pytest.raises(DataError) as caught:
        prepare(tmp_path, frame_of(label, group), group_column="patient")
    assert str(caught.value) == message


def test_a_missing_group_is_refused(tmp_path: Path) -> None:
    label = (np.arange(300) % 3 == 0).astype(np.int8)
    frame = frame_of(label, np.arange(300) // 10).assign(patient=lambda d: d.patient.mask(d.index.isin([4, 9])))
    with pytest.raises(DataError) as caught:
        prepare(tmp_path, frame, group_column="patient")
    assert str(caught.value) == (
        "group column 'patient' is missing on 2 of 300 rows: every row needs a group; "
        "fill it in, or pass --group-column with another column"
    )


def test_more_folds_than_training_groups_are_refused(tmp_path: Path) -> None:
    label = (np.arange(300) % 3 == 0).astype(np.int8)
    with pytest.raises(DataError) as caught:
        # ten groups of 30 rows: the test split takes two of them, whatever the draw
        prepare(tmp_path, frame_of(label, np.arange(300) // 30), group_column="patient", folds=9)
    assert str(caught.value) == (
        "9 folds need at least 9 groups in the training data (train + validation); "
        "it holds 8 groups of 'patient': lower --folds"
    )


def test_a_split_left_without_positives_is_refused(tmp_path: Path) -> None:
    label = np.zeros(300, dtype=np.int8)
    label[:40] = 1  # every positive in the first group
    with pytest.raises(DataError) as caught:
        prepare(tmp_path, frame_of(label, np.arange(300) // 50), group_column="patient")
    assert str(caught.value).startswith("grouped split left the ")
    assert "without positive rows: they lie in 1 group of 'patient'" in str(caught.value)
