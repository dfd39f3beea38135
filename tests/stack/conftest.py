"""One local stack (Prefect server, MLflow server, worker) on free ports for the whole module,
and one PostgreSQL server for the whole session."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from tests.helpers.local_stack import LocalStack
from tests.helpers.postgres import NOT_INSTALLED, Postgres, binaries, running_postgres
from wd_pipeline import processes
from wd_pipeline.ops import stack
from wd_pipeline.ops.deploy import deploy


@contextlib.contextmanager
def deployed(settings: stack.StackSettings) -> Iterator[LocalStack]:
    """The stack already started from ``settings``: deployed, clients pointed at it, stopped after.

    Stopping is checked: nothing it recorded may outlive ``stack down``.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    state_dir = settings.state_dir
    patch = pytest.MonkeyPatch()
    try:
        state = stack.StackState.load(state_dir)
        deploy(state_dir)
        exports = state.exports()
        for key, value in exports.items():
            patch.setenv(key, value)
        with temporary_settings({PREFECT_API_URL: exports["PREFECT_API_URL"]}):
            yield LocalStack(state_dir, state.prefect_api_url, state.mlflow_url, stack.base_env(**exports), settings)
    finally:
        patch.undo()
        recorded = stack.down(state_dir)
        alive = [r.name for r in recorded if processes.alive(r.pid)]
        assert not alive, f"still running after stack down: {alive}"


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """Started through the same code as `wd-pipeline stack up`, deployed, and torn down after."""
    settings = stack.StackSettings(
        state_dir=tmp_path_factory.mktemp("stack"),
        prefect_port=stack.free_port(),
        mlflow_port=stack.free_port(),
        timeout=180,
    )
    stack.up(settings)
    with deployed(settings) as started:
        yield started


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """Debian's PostgreSQL on a free port, with the compose databases (prefect, mlflow, mlflow_auth)."""
    if binaries() is None:
        pytest.skip(NOT_INSTALLED)
    with running_postgres() as server:
        yield server
