"""Ingest: every bad source ends in one clear DataError; good sources split as promised."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from wd_pipeline.config import make_config
from wd_pipeline.data import sources, splits
from wd_pipeline.data.schema import ColumnSpec, Role
from wd_pipeline.errors import DataError


def prepare(path: Path, tmp_path: Path, **settings) -> Path:
    settings = {"label": "y", "positive_class": None, "min_rows_per_class": 5, **settings}
    return splits.prepare(make_config(data=str(path), work_dir=str(tmp_path / "work"), **settings))


def write_csv(tmp_path: Path, frame: pd.DataFrame, name: str = "d.csv") -> Path:
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


BAD_FRAMES = {
    "missing label": (lambda f: f.drop(columns="y"), "label column 'y' not found; columns are ['a', 'b', 'c']"),
    "three classes": (lambda f: f.assign(y=np.arange(len(f)) % 3), "label column 'y' must be binary"),
    "one class": (lambda f: f.assign(y=1), "has a single class, 1 (positive)"),
    "inf feature": (
        lambda f: f.assign(b=[np.inf] * 2 + list(f.b[2:])),
        "features hold infinite values (column: count) {'b': 2}",
    ),
    "label mostly missing": (lambda f: f.assign(y=[None] * 31 + list(f.y[31:])), "is missing on 31 of 60 rows"),
    "too few rows": (lambda f: f.assign(y=[1] * 3 + [0] * (len(f) - 3)), "too few rows per class"),
}


@pytest.mark.parametrize("case", sorted(BAD_FRAMES))
def test_bad_frames_are_refused(case: str, tiny_frame: pd.DataFrame, tmp_path: Path) -> None:
    mutate, message = BAD_FRAMES[case]
    path = write_csv(tmp_path, mutate(tiny_frame))
    with pytest.raises(DataError) as caught:
        prepare(path, tmp_path)
    assert message in str(caught.value)
    assert not (tmp_path / "work").exists() or not list((tmp_path / "work").rglob("manifest.json"))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data file not found: .*nope\.csv\. Pass --data"):
        prepare(tmp_path / "nope.csv", tmp_path)


def test_folder_without_data_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="holds no Parquet or CSV files"):
        prepare(tmp_path, tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_bytes(b"")
    with pytest.raises(DataError, match="is empty"):
        prepare(path, tmp_path)


def test_header_only(tmp_path: Path) -> None:
    path = tmp_path / "header.csv"
    path.write_text("a,b,y\n")
    with pytest.raises(DataError, match="holds a header but no rows"):
        prepare(path, tmp_path)


def test_truncated_parquet(tiny_frame: pd.DataFrame, tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    tiny_frame.to_parquet(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(DataError, match="not a valid Parquet file"):
        prepare(path, tmp_path)


def test_binary_garbage(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(DataError, match="neither Parquet nor readable CSV"):
        prepare(path, tmp_path)


def test_duplicate_columns(tmp_path: Path) -> None:
    path = tmp_path / "dup.csv"
    path.write_text("a,a,y\n" + "\n".join(f"{i},{i},{i % 2}" for i in range(40)))
    with pytest.raises(DataError, match=r"duplicate columns \['a'\]"):
        prepare(path, tmp_path)


def test_string_label_needs_positive_class(tiny_frame: pd.DataFrame, tmp_path: Path) -> None:
    path = write_csv(tmp_path, tiny_frame.assign(y=tiny_frame.y.map({0: "no", 1: "yes"})))
    with pytest.raises(DataError, match=r"holds strings \['no', 'yes'\]: name the positive class"):
        prepare(path, tmp_path)
    with pytest.raises(DataError, match="positive class 'maybe' is not a value"):
        prepare(path, tmp_path, positive_class="maybe")
    folder = prepare(path, tmp_path, positive_class="no")
    assert splits.load_split(folder, "train").label.mean() == pytest.approx(1 - tiny_frame.y.mean(), abs=0.05)


def test_numeric_label_refuses_a_string_positive_class(tiny_frame: pd.DataFrame, tmp_path: Path) -> None:
    path = write_csv(tmp_path, tiny_frame)
    with pytest.raises(DataError, match="only applies to string labels: leave it empty"):
        prepare(path, tmp_path, positive_class="malignant")


def test_boolean_label(tiny_frame: pd.DataFrame, tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    tiny_frame.assign(y=tiny_frame.y.astype(bool)).to_parquet(path)
    folder = prepare(path, tmp_path)
    assert splits.read_manifest(folder)["rows"] == len(tiny_frame)


def test_missing_feature_column(tiny_frame: pd.DataFrame, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"feature columns \['z'\] not found"):
        prepare(write_csv(tmp_path, tiny_frame), tmp_path, features=["a", "z"])


def test_csv_parquet_and_uri_give_the_same_splits(tiny_frame: pd.DataFrame, tmp_path: Path) -> None:
    csv = write_csv(tmp_path, tiny_frame)
    parquet = tmp_path / "d.parquet"
    pq.write_table(pa.Table.from_pandas(tiny_frame, preserve_index=False), parquet)
    tests = [
        splits.load_split(prepare(source, tmp_path / name), "test")
        for name, source in [("csv", csv), ("parquet", parquet), ("uri", parquet.as_uri())]
    ]
    for other in tests[1:]:
        pd.testing.assert_frame_equal(tests[0].features, other.features)
        np.testing.assert_array_equal(tests[0].label, other.label)


def test_bundled_default_splits_stratified_and_seeded(tmp_path: Path) -> None:
    config = make_config(work_dir=str(tmp_path))
    folder = splits.prepare(config)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["rows"] == 569
    assert manifest["sha256"] == sources.fingerprint(Path(manifest["source"]).read_bytes())
    assert {name: part["rows"] for name, part in manifest["splits"].items()} == {
        "train": 341,
        "validation": 114,
        "test": 114,
    }
    rates = [part["positive_rate"] for part in manifest["splits"].values()]
    assert max(rates) - min(rates) < 0.01  # 212 / 569 malignant in every split
    assert len(manifest["features"]) == 30
    schema = splits.read_schema(folder)
    assert schema.column("mean_radius") == ColumnSpec("mean_radius", Role.NUMERIC, "double")
    assert schema.numeric() == manifest["features"] and manifest["dropped_columns"] == []
    again = splits.prepare(make_config(work_dir=str(tmp_path / "again")))
    pd.testing.assert_frame_equal(
        splits.load_split(folder, "train").features, splits.load_split(again, "train").features
    )
    other_seed = splits.prepare(make_config(work_dir=str(tmp_path / "seed"), seed=7))
    assert not splits.load_split(folder, "train").features.equals(splits.load_split(other_seed, "train").features)


def test_splits_are_disjoint_and_complete(bundled: pd.DataFrame, tmp_path: Path) -> None:
    folder = splits.prepare(make_config(work_dir=str(tmp_path)))
    parts = [splits.load_split(folder, name).features for name in splits.SPLITS]
    combined = pd.concat(parts).round(8).drop_duplicates()
    assert len(combined) == sum(len(p) for p in parts) == len(bundled.drop_duplicates())


def test_more_folds_than_rows_of_a_class(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"a": rng.normal(size=140), "y": [1] * 20 + [0] * 120})
    with pytest.raises(
        DataError,
        match=r"19 folds need at least 19 rows of each class in the training data; "
        r"the smallest class has 18: lower --folds",
    ):
        prepare(write_csv(tmp_path, frame), tmp_path, folds=19, val_fraction=0.1, test_fraction=0.1)


def test_reread_splits_are_private_copies_and_follow_a_rewritten_file(tiny_frame: pd.DataFrame, tmp_path: Path) -> None:
    folder = prepare(write_csv(tmp_path, tiny_frame), tmp_path)
    first = splits.load_split(folder, "train")
    first.label[:] = 7
    first.features.iloc[0, 0] = 1e9
    second = splits.load_split(folder, "train")
    assert set(np.unique(second.label)) == {0, 1}
    assert second.features.iloc[0, 0] != 1e9
    split = folder / "train.parquet"
    table = pq.read_table(split)
    pq.write_table(table.slice(0, 5), split)  # same folder, new content: must not be served from memory
    assert len(splits.load_split(folder, "train")) == 5


PINNED_SPLIT = {  # seed 42, bundled data: first rows and sha256 of each split's source row numbers
    "train": ([0, 1, 2, 3, 10, 11], "4ebb2b8568336c6c"),
    "validation": ([6, 8, 9, 16, 19, 26], "144ace3a9e3ac518"),
    "test": ([4, 5, 7, 14, 20, 22], "f2d2227d00421e31"),
}


def test_split_rows_are_pinned_for_a_fixed_seed(bundled: pd.DataFrame, tmp_path: Path) -> None:
    """A speed-up of ingest must not move a row: every cached unit and result is keyed on these splits.

    Each split file holds exactly the source rows the seeded split chose, in source order.
    """

    config = make_config(work_dir=str(tmp_path))
    label = (bundled[config.label] == config.positive_class).to_numpy().astype(np.int8)
    rows = splits.split_rows(label, config)
    folder = splits.prepare(config)
    features = bundled.drop(columns=config.label)
    for name, (first, digest) in PINNED_SPLIT.items():
        assert rows[name][:6].tolist() == first
        assert hashlib.sha256(rows[name].astype(np.int64).tobytes()).hexdigest()[:16] == digest
        part = splits.load_split(folder, name)
        pd.testing.assert_frame_equal(part.features, features.iloc[rows[name]].reset_index(drop=True))
        np.testing.assert_array_equal(part.label, label[rows[name]])


def test_feature_types_floats_keep_their_width_others_become_float64(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    size = 200
    source = pa.table(
        {
            "f32": pa.array(rng.normal(size=size).astype(np.float32)),
            "f64": pa.array(rng.normal(size=size)),
            "i16": pa.array(rng.integers(-9, 9, size).astype(np.int16)),
            "flag": pa.array(rng.uniform(size=size) > 0.5),
            "price": pa.array([f"{v / 100:.2f}" for v in rng.integers(0, 10_000, size)]).cast(pa.decimal128(8, 2)),
            "y": pa.array((np.arange(size) % 3 == 0).astype(np.int64)),
        }
    )
    path = tmp_path / "mixed.parquet"
    pq.write_table(source, path)
    folder = prepare(path, tmp_path)
    parts = [splits.load_split(folder, name) for name in splits.SPLITS]
    assert {str(t) for t in parts[0].features.dtypes.loc[["f32"]]} == {"float32"}
    assert set(parts[0].features.drop(columns="f32").dtypes.astype(str)) == {"float64"}
    combined = pd.concat([p.features for p in parts]).sort_values("f64").reset_index(drop=True)
    expected = source.drop_columns(["y"]).to_pandas().astype({"i16": float, "flag": float, "price": float})
    pd.testing.assert_frame_equal(combined, expected.sort_values("f64").reset_index(drop=True))
    assert {column.name: column.source_type for column in splits.read_schema(folder).columns} == {
        "f32": "float",
        "f64": "double",
        "i16": "int16",
        "flag": "bool",
        "price": "decimal128(8, 2)",
    }


def test_null_in_an_integer_feature_stays_missing(tiny_frame: pd.DataFrame, tmp_path: Path) -> None:
    table = pa.Table.from_pandas(tiny_frame, preserve_index=False).append_column(
        "n", pa.array([None, None, *list(range(len(tiny_frame) - 2))], type=pa.int32())
    )
    path = tmp_path / "nulls.parquet"
    pq.write_table(table, path)
    folder = prepare(path, tmp_path)
    values = pd.concat([splits.load_split(folder, name).features["n"] for name in splits.SPLITS])
    assert values.dtype == np.float64 and values.isna().sum() == 2


def test_a_folder_of_files_splits_like_the_same_rows_in_one_file(tiny_frame: pd.DataFrame, tmp_path: Path) -> None:
    folder = tmp_path / "landing"
    folder.mkdir()
    tiny_frame.iloc[:25].to_csv(folder / "day-1.csv", index=False)
    tiny_frame.iloc[25:].to_csv(folder / "day-2.csv", index=False)
    from_folder = prepare(folder, tmp_path / "f")
    from_file = prepare(write_csv(tmp_path, tiny_frame), tmp_path / "one")
    for name in splits.SPLITS:
        pd.testing.assert_frame_equal(
            splits.load_split(from_folder, name).features, splits.load_split(from_file, name).features
        )
    manifest = splits.read_manifest(from_folder)
    assert manifest["source"] == str(folder) and manifest["rows"] == len(tiny_frame)
    assert [file["path"] for file in manifest["files"]] == ["day-1.csv", "day-2.csv"]
    assert manifest["sha256"] == sources.folder_fingerprint(
        [sources.SourceFile.from_dict(file) for file in manifest["files"]]
    )


@pytest.mark.parametrize("seed", [0, 42, 7, 2**31 - 1])
def test_split_rows_are_scikit_learns(seed: int) -> None:
    """The array draw gives the rows of ``train_test_split`` twice over, as the split always did, for
    many sizes and balances, ties between the classes' remainders among them (equal classes)."""
    from sklearn.model_selection import train_test_split

    rng = np.random.default_rng(seed)
    cases = [(40, 0.5), (41, 0.5), (120, 0.5), (97, 0.1), (1000, 0.3), (2001, 0.05), (569, 212 / 569)]
    cases += [(int(rng.integers(30, 5000)), float(rng.uniform(0.1, 0.9))) for _ in range(20)]
    for size, positive in cases:
        label = (np.arange(size) < round(positive * size)).astype(np.int8)
        rng.shuffle(label)
        for val_fraction, test_fraction in ((0.2, 0.2), (0.1, 0.25), (0.15, 1 / 3)):
            config = make_config(seed=seed, val_fraction=val_fraction, test_fraction=test_fraction)
            index = np.arange(size)
            rest, test = train_test_split(index, test_size=test_fraction, stratify=label, random_state=seed)
            share = val_fraction / (1 - test_fraction)
            train, validation = train_test_split(rest, test_size=share, stratify=label[rest], random_state=seed)
            rows = splits.split_rows(label, config)
            for name, expected in (("train", train), ("validation", validation), ("test", test)):
                np.testing.assert_array_equal(rows[name], np.sort(expected), err_msg=f"{size} rows, {name}")
