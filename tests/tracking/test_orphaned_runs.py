"""Runs left RUNNING by a killed or exited pipeline process are closed KILLED; live and foreign runs are not."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from tests.helpers.zombies import zombie
from wd_pipeline import processes
from wd_pipeline.tracking import runs


def dead_owner() -> str:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return f"{socket.gethostname()}:{child.pid}:1"


def test_only_runs_of_a_dead_local_process_are_closed(workspace: Path) -> None:
    client = runs.get_client()
    experiment = runs.ensure_experiment(client, "orphans")
    dead = client.create_run(experiment, tags={runs.OWNER_TAG: dead_owner()}).info.run_id
    point = client.create_run(experiment, tags={runs.PARENT_RUN_TAG: dead}).info.run_id
    fold = client.create_run(experiment, tags={runs.PARENT_RUN_TAG: point}).info.run_id
    alive = client.create_run(experiment, tags={runs.OWNER_TAG: processes.identity()}).info.run_id
    alive_child = client.create_run(experiment, tags={runs.PARENT_RUN_TAG: alive}).info.run_id
    foreign = client.create_run(experiment, tags={runs.OWNER_TAG: "another-host:1:1"}).info.run_id
    untagged = client.create_run(experiment).info.run_id

    with zombie() as pid:  # exited, not yet reaped by its parent: it will never finish its run
        exited = f"{socket.gethostname()}:{pid}:{processes.start_ticks(pid)}"
        unreaped = client.create_run(experiment, tags={runs.OWNER_TAG: exited}).info.run_id
        assert sorted(runs.close_orphaned_runs(client, experiment)) == sorted([dead, point, fold, unreaped])
    status = {
        run_id: client.get_run(run_id).info.status
        for run_id in (dead, point, fold, unreaped, alive, alive_child, foreign, untagged)
    }
    assert [status[r] for r in (dead, point, fold, unreaped)] == ["KILLED"] * 4
    assert [status[r] for r in (alive, alive_child, foreign, untagged)] == ["RUNNING"] * 4
    assert "is gone" in client.get_run(fold).data.tags[runs.CLOSED_TAG]
