"""A stack that cannot start says why and leaves nothing running."""

from __future__ import annotations

from pathlib import Path

import pytest

from wd_pipeline import processes
from wd_pipeline.errors import ServiceStartError
from wd_pipeline.ops import stack

pytestmark = [pytest.mark.slow, pytest.mark.stack]


def test_a_server_that_exits_on_start_is_reported_and_the_rest_stopped(tmp_path: Path) -> None:
    settings = stack.StackSettings(
        state_dir=tmp_path,
        prefect_port=stack.free_port(),
        mlflow_port=stack.free_port(),
        mlflow_backend_uri="nosuchdb://nowhere",
        timeout=180,
    )
    started: list[int] = []
    original = stack._start

    def recording_start(*args, **kwargs):
        record = original(*args, **kwargs)
        started.append(record.pid)
        return record

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stack, "_start", recording_start)
        with pytest.raises(ServiceStartError, match="mlflow-server exited during start-up") as failed:
            stack.up(settings)
    assert "mlflow-server.log" in str(failed.value)
    assert len(started) == 2 and not any(processes.alive(pid) for pid in started)
    assert not (tmp_path / stack.STATE_FILE).exists()
