"""`wd-pipeline gc`: what no protected alias and no newer run needs goes; nothing an alias points at does.

The slow test makes real pipeline runs on tiny tables in one MLflow store and work folder:

    A  table 1, model gc-a  @champion             (old: before both cut-offs)
    D  table 3, model gc-d  @challenger           (old)
    B  table 2, model gc-b  alias removed         (old)
    ── cut-off 1 ──
    C  table 2, model gc-c  alias removed         (reuses B's splits and units)
    ── cut-off 2 (`--older-than 1s`) ──

At cut-off 1 only B's run artifacts may go: its splits and units are C's too. At cut-off 2
C's artifacts and table 2's splits and units go too. A's and D's never do.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from flows.pipeline import weight_decay_pipeline
from tests.helpers.registry_models import labelled_frame
from tests.helpers.stores import isolated_store
from wd_pipeline.cli import main
from wd_pipeline.errors import ConfigError
from wd_pipeline.ops import retention
from wd_pipeline.tracking.runs import PARENT_RUN_TAG, SPLITS_TAG


@pytest.mark.parametrize(
    ("text", "seconds"), [("30d", 30 * 86_400), ("12h", 43_200), ("2w", 1_209_600), ("90m", 5400), (" 45s ", 45)]
)
def test_an_age_is_a_whole_number_and_a_unit(text: str, seconds: int) -> None:
    assert retention.parse_age(text) == dt.timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["30", "-1d", "abc", "0d", "1.5d", "30 d", "30y"])
def test_an_age_without_a_unit_or_sign_is_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="is not an age"):
        retention.parse_age(text)


def test_an_entry_changed_at_an_unknown_time_counts_as_new() -> None:
    stamp = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    assert retention.modified({"mtime": stamp.timestamp()}) == stamp
    assert retention.modified({"LastModified": stamp.replace(tzinfo=None)}) == stamp
    assert retention.modified({}) > dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)


def test_a_work_folder_behind_a_url_is_listed_and_removed_through_fsspec() -> None:
    """The same code reads a remote work folder (here fsspec's in-memory one, as for ``s3://``)."""
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/gc-work/points/u1/model.keras", b"x" * 300)
    fs.pipe("/gc-work/points/u1/result.json", b"{}")
    fs.pipe("/gc-work/splits/s1/train.parquet", b"y" * 50)
    try:
        entries = {
            (kind, name, where, size) for kind, name, where, size, _ in retention.work_entries("memory://gc-work")
        }
        assert entries == {
            ("unit", "u1", "memory:///gc-work/points/u1", 302),
            ("splits", "s1", "memory:///gc-work/splits/s1", 50),
        }
        later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
        plan = retention.Plan(later, [retention.Removable("unit", "memory:///gc-work/points/u1", 302)])
        retention.apply(None, plan)  # no run artifacts in the plan: no MLflow client needed
        assert not fs.exists("/gc-work/points/u1") and fs.exists("/gc-work/splits/s1")
    finally:
        fs.rm("/gc-work", recursive=True)


# ---------------------------------------------------------------- real runs


@dataclass(frozen=True)
class Made:
    """One pipeline run: its model, the runs of its tree, its split folder and unit folders."""

    model: str
    tree: list[str]  # run ids, parent first
    splits: Path
    units: list[Path]

    def artifact_uris(self, client: MlflowClient) -> set[str]:
        return {client.get_run(run_id).info.artifact_uri for run_id in self.tree if has_artifacts(client, run_id)}


def has_artifacts(client: MlflowClient, run_id: str) -> bool:
    return bool(get_artifact_repository(client.get_run(run_id).info.artifact_uri).list_artifacts())


def tree(client: MlflowClient, run: mlflow.entities.Run) -> list[str]:
    """``run`` and every run nested under it, parent first."""
    children = client.search_runs([run.info.experiment_id], f"tags.`{PARENT_RUN_TAG}` = '{run.info.run_id}'")
    return [run.info.run_id, *(run_id for child in children for run_id in tree(client, child))]


def pipeline_run(client: MlflowClient, work: Path, table: Path, model: str) -> Made:
    state = weight_decay_pipeline(
        data=str(table),
        label="y",
        grid=[0.0],
        epochs=2,
        folds=1,
        model_name=model,
        min_test_roc_auc=0.0,
        return_state=True,
    )
    assert state.type.value == "COMPLETED", state.message
    parent = client.get_run(state.result().parent_run_id)
    runs = tree(client, parent)
    keys = {client.get_run(run_id).data.tags.get(retention.UNIT_TAG) for run_id in runs} - {None}
    assert keys, "the runs of the tree name no trained unit"
    return Made(model, runs, work / "splits" / parent.data.tags[SPLITS_TAG], [work / "points" / k for k in keys])


@dataclass(frozen=True)
class History:
    work: Path
    made: dict[str, Made]
    cutoff: dt.datetime


@pytest.fixture(scope="module")
def history(prefect_api, tmp_path_factory: pytest.TempPathFactory) -> Iterator[History]:
    folder = tmp_path_factory.mktemp("retention")
    with isolated_store(folder):
        client = MlflowClient()
        work = folder / "work"
        tables = {}
        for seed in (1, 2, 3):
            tables[seed] = folder / f"table{seed}.csv"
            labelled_frame(rows=120, seed=seed).to_csv(tables[seed], index=False)
        made = {"A": pipeline_run(client, work, tables[1], "gc-a"), "D": pipeline_run(client, work, tables[3], "gc-d")}
        client.set_registered_model_alias("gc-d", "challenger", "1")
        client.delete_registered_model_alias("gc-d", "champion")
        made["B"] = pipeline_run(client, work, tables[2], "gc-b")
        client.delete_registered_model_alias("gc-b", "champion")
        time.sleep(0.05)
        cutoff = dt.datetime.now(dt.UTC)
        time.sleep(0.05)
        made["C"] = pipeline_run(client, work, tables[2], "gc-c")
        client.delete_registered_model_alias("gc-c", "champion")
        assert made["C"].splits == made["B"].splits and set(made["C"].units) == set(made["B"].units)
        yield History(work, made, cutoff)


def work_items(made: Made) -> set[str]:
    return {str(made.splits), *map(str, made.units)}


@pytest.mark.slow
def test_gc_removes_only_what_no_alias_and_no_newer_run_needs(history: History, capsys) -> None:
    client = MlflowClient()
    made = history.made
    kept_by_alias = {name: (work_items(made[name]), made[name].artifact_uris(client)) for name in ("A", "D")}
    assert all(items and uris for items, uris in kept_by_alias.values())
    old_orphan = history.work / "points" / "left-by-a-crash"
    old_orphan.mkdir()
    (old_orphan / "model.keras").write_bytes(b"x" * 2048)
    long_ago = (history.cutoff - dt.timedelta(days=2)).timestamp()
    os.utime(old_orphan / "model.keras", (long_ago, long_ago))

    # Cut-off 1: B is old and unprotected, but C still trains on table 2.
    plan = retention.make_plan(client, str(history.work), history.cutoff)
    listed = {(item.kind, item.location) for item in plan.remove}
    b_artifacts = made["B"].artifact_uris(client)
    assert b_artifacts
    assert listed == {("artifacts", uri) for uri in b_artifacts} | {("unit", str(old_orphan))}
    assert all(item.size > 0 for item in plan.remove)
    assert all(Path(path).exists() for path in work_items(made["B"]))  # planning removes nothing
    assert retention.apply(client, plan) == plan.remove
    assert not any(has_artifacts(client, run_id) for run_id in made["B"].tree)
    assert retention.REMOVED_TAG in client.get_run(made["B"].tree[0]).data.tags
    assert not old_orphan.exists()
    assert all(Path(path).exists() for path in work_items(made["C"]))
    assert mlflow.pyfunc.load_model("models:/gc-b/1") is not None  # logged models are never gc's

    # Cut-off 2 (the CLI, one second back): C is old too; table 2's splits and units are needed by no one.
    time.sleep(1.1)
    young_orphan = history.work / "points" / "being-written"
    young_orphan.mkdir()
    (young_orphan / "model.keras").write_bytes(b"x")
    # Still being written while both gc commands run, however long a busy machine makes them take.
    moments_ahead = time.time() + 120
    os.utime(young_orphan / "model.keras", (moments_ahead, moments_ahead))
    expected = work_items(made["C"]) | made["C"].artifact_uris(client)
    assert main(["gc", "--older-than", "1s", "--dry-run"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("would remove")]
    assert {line.split()[-1] for line in lines} == expected, out
    assert f"\n{len(expected)} item(s), " in out and " to remove; kept what " in out
    assert all(Path(path).exists() for path in work_items(made["C"]))
    assert made["C"].artifact_uris(client) == expected - work_items(made["C"])

    assert main(["gc", "--older-than", "1s"]) == 0
    out = capsys.readouterr().out
    assert {line.split()[-1] for line in out.splitlines() if line.startswith("removed ")} == expected, out
    assert not any(Path(path).exists() for path in work_items(made["C"]))
    assert not any(has_artifacts(client, run_id) for run_id in made["C"].tree)
    assert young_orphan.exists()

    # Nothing an alias points at went, and both still load.
    for name, (items, uris) in kept_by_alias.items():
        assert all(Path(path).exists() for path in items), name
        assert made[name].artifact_uris(client) == uris, name
    assert mlflow.pyfunc.load_model("models:/gc-a@champion") is not None
    assert mlflow.pyfunc.load_model("models:/gc-d@challenger") is not None
    os.utime(young_orphan / "model.keras")  # its writing ends now
    time.sleep(1.1)  # now the unnamed entry is older than the cut-off too, and only it is listed
    assert main(["gc", "--older-than", "1s", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert [line.split()[-1] for line in out.splitlines() if line.startswith("would remove")] == [str(young_orphan)]
