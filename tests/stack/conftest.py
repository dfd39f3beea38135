"""The local stacks (Prefect server, MLflow server, worker) on free ports, and one PostgreSQL server.

Starting and deploying a stack costs tens of seconds, so the modules that only *use* one share
``local_stack``: started once for this package and torn down when the test process leaves it
(the suite's ordering keeps those modules together, see ``tests/conftest.py``). A module that
stops, restarts or breaks servers takes ``own_stack`` instead, so no other module sees it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.local_stack import LocalStack
from tests.helpers.postgres import NOT_INSTALLED, Postgres, binaries, running_postgres
from tests.helpers.templates import seed_stack_folder
from wd_pipeline import processes
from wd_pipeline.ops import stack
from wd_pipeline.ops.deploy import deploy


@contextlib.contextmanager
def pointed_at(settings: stack.StackSettings) -> Iterator[LocalStack]:
    """Clients of this process (variables and Prefect settings) pointed at a started stack, restored after."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    state = stack.StackState.load(settings.state_dir)
    exports = state.exports()
    patch = pytest.MonkeyPatch()
    try:
        for key, value in exports.items():
            patch.setenv(key, value)
        with temporary_settings({PREFECT_API_URL: exports["PREFECT_API_URL"]}):
            yield LocalStack(
                settings.state_dir, state.prefect_api_url, state.mlflow_url, stack.base_env(**exports), settings
            )
    finally:
        patch.undo()


@contextlib.contextmanager
def stopped_after(state_dir: Path) -> Iterator[None]:
    """Stop the stack on exit, and check it: nothing it recorded may outlive ``stack down``."""
    try:
        yield
    finally:
        recorded = stack.down(state_dir)
        alive = [r.name for r in recorded if processes.alive(r.pid)]
        assert not alive, f"still running after stack down: {alive}"


@contextlib.contextmanager
def deployed(settings: stack.StackSettings) -> Iterator[LocalStack]:
    """The stack already started from ``settings``: deployed, clients pointed at it, stopped after."""
    with stopped_after(settings.state_dir):
        deploy(settings.state_dir)
        with pointed_at(settings) as started:
            yield started


def started_stack(tmp_path_factory: pytest.TempPathFactory, name: str) -> stack.StackSettings:
    """A stack started through the same code as `wd-pipeline stack up`, on free ports."""
    settings = stack.StackSettings(
        state_dir=seed_stack_folder(tmp_path_factory.mktemp(name)),
        prefect_port=stack.free_port(),
        mlflow_port=stack.free_port(),
        timeout=180,
    )
    stack.up(settings)
    return settings


@pytest.fixture(scope="package")
def shared_stack_settings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[stack.StackSettings]:
    """One deployed stack for every module of this package that only uses its servers."""
    settings = started_stack(tmp_path_factory, "stack")
    with stopped_after(settings.state_dir):
        deploy(settings.state_dir)
        yield settings


@pytest.fixture(scope="module")
def local_stack(shared_stack_settings: stack.StackSettings) -> Iterator[LocalStack]:
    """The shared stack, with this module's clients pointed at it. Never stop or break its servers here."""
    with pointed_at(shared_stack_settings) as started:
        yield started


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A stack of the module's own, deployed and torn down after: for tests that stop or restart its servers."""
    with deployed(started_stack(tmp_path_factory, "own-stack")) as started:
        yield started


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """Debian's PostgreSQL on a free port, with the compose databases (prefect, mlflow, mlflow_auth)."""
    if binaries() is None:
        pytest.skip(NOT_INSTALLED)
    with running_postgres() as server:
        yield server
