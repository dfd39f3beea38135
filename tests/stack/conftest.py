"""One local stack (Prefect server, MLflow server, worker) on free ports for the whole module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.helpers.local_stack import LocalStack
from wd_pipeline import processes
from wd_pipeline.ops import stack
from wd_pipeline.ops.deploy import deploy


@pytest.fixture(scope="module")
def local_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """Started through the same code as `wd-pipeline stack up`, deployed, and torn down after."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    state_dir = tmp_path_factory.mktemp("stack")
    settings = stack.StackSettings(
        state_dir=state_dir, prefect_port=stack.free_port(), mlflow_port=stack.free_port(), timeout=180
    )
    state = stack.up(settings)
    patch = pytest.MonkeyPatch()
    try:
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
