"""Which task runner trains the grid: threads by default, Dask only when asked (no cluster starts here)."""

from __future__ import annotations

import dask
import pytest

from wd_pipeline.cli import build_parser, config_from_args
from wd_pipeline.config import make_config


def test_threads_unless_dask_is_configured() -> None:
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows.pipeline import grid_task_runner

    runner = grid_task_runner(make_config(max_parallel=3))
    assert isinstance(runner, ThreadPoolTaskRunner)
    assert runner._max_workers == 3


def test_address_connects_to_a_running_scheduler() -> None:
    from prefect_dask import DaskTaskRunner

    from flows.pipeline import grid_task_runner

    runner = grid_task_runner(make_config(dask_address="tcp://10.0.0.5:8786"))
    assert isinstance(runner, DaskTaskRunner)
    assert runner.address == "tcp://10.0.0.5:8786"
    assert runner.cluster_class is None


def test_workers_start_a_spawning_local_cluster_of_single_threaded_processes() -> None:
    from prefect_dask import DaskTaskRunner

    from flows.pipeline import grid_task_runner

    runner = grid_task_runner(make_config(dask_workers=3))
    assert isinstance(runner, DaskTaskRunner)
    assert runner.address is None
    assert runner.cluster_class == "distributed.LocalCluster"
    assert runner.cluster_kwargs == {"n_workers": 3, "threads_per_worker": 1, "processes": True}
    # Forking after TensorFlow has started can hang: the nanny must spawn its workers.
    assert dask.config.get("distributed.worker.multiprocessing-method") == "spawn"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], (None, 0)),
        (["--dask-workers", "2"], (None, 2)),
        (["--dask-address", "tcp://10.0.0.5:8786"], ("tcp://10.0.0.5:8786", 0)),
        (["--dask-address", ""], (None, 0)),
    ],
)
def test_dask_flags(argv: list[str], expected: tuple[str | None, int]) -> None:
    config = config_from_args(build_parser().parse_args(["run", *argv]))
    assert (config.dask_address, config.dask_workers) == expected
