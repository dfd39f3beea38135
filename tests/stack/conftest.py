"""The local stacks (Prefect server, MLflow server, worker) on free ports, and one PostgreSQL server.

Starting and deploying a stack costs tens of seconds, so the modules that only *use* one share
``local_stack``: started once for this package and torn down when the test process leaves it
(the suite's ordering keeps those modules together, see ``tests/conftest.py``). A module that
stops, restarts or breaks servers takes ``own_stack`` instead, so no other module sees it.

The modules on the production stores (PostgreSQL, S3) share ``production_stack`` the same way.
Their tests that take a server away (S3 or MLflow for 20 s) or kill a process bring it back
before they end, and each test keeps to its own experiment and model names.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.local_stack import LocalStack
from tests.helpers.postgres import NOT_INSTALLED, Postgres, binaries, running_postgres
from tests.helpers.s3 import BUCKET, SeaweedS3
from tests.helpers.templates import seed_stack_folder
from wd_pipeline import processes
from wd_pipeline.cli import main
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


# Prefixes of the session's bucket the production stack uses, one per purpose.
PRODUCTION_ARTIFACTS = "stack-artifacts"
PRODUCTION_WORK = "stack-work"


@contextlib.contextmanager
def s3_clients(s3_server: SeaweedS3) -> Iterator[None]:
    """This process (and what it starts) given the S3 store's credentials and generic endpoint, restored after.

    MLflow's own endpoint variable is left out: `stack up` must give the MLflow server the generic one.
    """
    patch = pytest.MonkeyPatch()
    try:
        for key, value in s3_server.env().items():
            patch.setenv(key, value)
        patch.delenv("MLFLOW_S3_ENDPOINT_URL")
        yield
    finally:
        patch.undo()


def stack_up_argv(settings: stack.StackSettings) -> list[str]:
    """`wd-pipeline stack up` with a flag for each setting given."""
    flags = {
        "--prefect-port": settings.prefect_port,
        "--mlflow-port": settings.mlflow_port,
        "--prefect-database-url": settings.prefect_database_url,
        "--mlflow-backend-uri": settings.mlflow_backend_uri,
        "--mlflow-artifacts-destination": settings.mlflow_artifacts_destination,
        "--work-dir": settings.work_dir,
        "--timeout": settings.timeout,
    }
    given = [item for flag, value in flags.items() if value is not None for item in (flag, str(value))]
    return ["stack", "up", "--state-dir", str(settings.state_dir), *given]


@pytest.fixture(scope="package")
def production_stack_settings(
    postgres: Postgres, s3_server: SeaweedS3, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[stack.StackSettings]:
    """One deployed stack as production runs it (``infra/docker-compose.yml``), for test_postgres, test_s3
    and test_dask_cluster: Prefect and MLflow on PostgreSQL (compose's ``prefect`` and ``mlflow``
    databases), MLflow's artifacts and the worker's work folder in the S3 bucket. Started through
    the real command with every flag those modules exercise."""
    settings = stack.StackSettings(
        state_dir=tmp_path_factory.mktemp("production-stack"),
        prefect_port=stack.free_port(),
        mlflow_port=stack.free_port(),
        prefect_database_url=postgres.prefect_url(),
        mlflow_backend_uri=postgres.mlflow_url(),
        mlflow_artifacts_destination=f"s3://{BUCKET}/{PRODUCTION_ARTIFACTS}",
        work_dir=f"s3://{BUCKET}/{PRODUCTION_WORK}",
        timeout=180,
    )
    with s3_clients(s3_server):
        assert main(stack_up_argv(settings)) == 0
    with stopped_after(settings.state_dir):
        deploy(settings.state_dir)
        yield settings


@pytest.fixture(scope="module")
def production_stack(production_stack_settings: stack.StackSettings, s3_server: SeaweedS3) -> Iterator[LocalStack]:
    """The production stack, with this module's clients pointed at it and at the S3 store.

    A test may take one of its servers away for a while, but starts it again before it ends.
    """
    with s3_clients(s3_server), pointed_at(production_stack_settings) as started:
        yield started
