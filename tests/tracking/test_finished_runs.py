"""Finished-run records: found again for the same data, settings and code, and only for those."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BUNDLED
from wd_pipeline.config import PipelineConfig, make_config
from wd_pipeline.tracking import finished_runs

RUN = finished_runs.FinishedRun(
    experiment_id="1",
    parent_run_id="abc",
    model_name="m",
    version="3",
    flow_run="http://127.0.0.1:4200/runs/flow-run/x",
    summary={"grid": [{"val_log_loss_se": float("nan"), "n_folds": 1}], "name": "l2 λ=0"},
)


def config(work: Path, **settings: Any) -> PipelineConfig:
    return make_config(work_dir=str(work), grid=[0.0, 1e-2], epochs=3, folds=1, **settings)


def record(work: Path, **settings: Any) -> None:
    made = config(work, **settings)
    finished_runs.record(made, finished_runs.data_sha256(made), RUN)


def test_the_same_run_finds_its_record_whole(tmp_path: Path) -> None:
    record(tmp_path)
    found = finished_runs.find(config(tmp_path))
    assert found is not None and found.parent_run_id == "abc" and found.version == "3"
    assert found.summary["name"] == "l2 λ=0" and found.summary["grid"][0]["val_log_loss_se"] != 0  # NaN kept
    assert [path.name for path in tmp_path.rglob("*") if path.is_file()] == [
        f"{finished_runs.data_sha256(config(tmp_path))}.json"
    ]


@pytest.mark.parametrize(
    "changed",
    [
        {"gate_margin": 0.01},
        {"importance_repeats": 2},
        {"threshold": 0.4},
        {"slice_by": ["mean_radius"]},
        {"seed": 1},
        {"experiment": "other"},
        {"model_name": "other"},
        {"reuse": "never"},
    ],
)
def test_a_setting_that_matters_finds_nothing(tmp_path: Path, changed: dict[str, Any]) -> None:
    record(tmp_path)
    assert finished_runs.find(config(tmp_path, **changed)) is None


def test_where_and_how_the_work_runs_do_not_matter(tmp_path: Path) -> None:
    record(tmp_path)
    copy = tmp_path / "elsewhere.csv"
    shutil.copyfile(BUNDLED, copy)
    same = config(tmp_path, data=str(copy), label="diagnosis", positive_class="malignant", max_parallel=1, chunk_size=1)
    assert finished_runs.find(same) is not None


def test_other_data_finds_nothing_and_does_not_look_without_a_record(tmp_path: Path, monkeypatch) -> None:
    record(tmp_path)
    changed = tmp_path / "changed.csv"
    changed.write_text(BUNDLED.read_text() + BUNDLED.read_text().splitlines()[1] + "\n")  # one row twice
    assert finished_runs.find(config(tmp_path, data=str(changed), positive_class="malignant")) is None
    # Settings that never finished here: the data is not even hashed.
    monkeypatch.setattr(finished_runs, "data_sha256", lambda config: pytest.fail("hashed the data"))
    assert finished_runs.find(config(tmp_path, gate_margin=0.5)) is None
    assert not finished_runs.may_have_record(config(tmp_path / "empty"))


def test_other_code_finds_nothing(tmp_path: Path, monkeypatch) -> None:
    record(tmp_path)
    monkeypatch.setattr(finished_runs, "code_identity", lambda: {"code.git_commit": "another"})
    assert finished_runs.find(config(tmp_path)) is None
