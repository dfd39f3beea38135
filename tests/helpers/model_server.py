"""``mlflow models serve`` as a user starts it, on a free port, stopped with its process group."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from wd_pipeline import processes
from wd_pipeline.ops import stack


@contextmanager
def served_model(model_uri: str, *, env: dict[str, str], cwd: Path, log: Path, timeout: float = 120) -> Iterator[str]:
    """Serve ``model_uri`` with the local environment; yields the server's base URL."""
    port = stack.free_port()
    command = [
        str(stack.venv_bin() / "mlflow"),
        "models",
        "serve",
        "-m",
        model_uri,
        "--env-manager",
        "local",
        "-p",
        str(port),
    ]
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as sink:
        server = subprocess.Popen(
            [*command, "--host", stack.HOST],
            env=env,
            cwd=cwd,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://{stack.HOST}:{port}"
    try:
        deadline = time.monotonic() + timeout
        while not stack._http_ok(f"{url}/ping"):
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"model server did not start:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(1)
        yield url
    finally:
        processes.stop_groups([server.pid], leader=server.pid, grace=30, poll=0.2)


def invoke(url: str, columns: list[str], rows: list[list[Any]]) -> list[dict[str, Any]]:
    """POST rows (``None`` for a gap) in the ``dataframe_split`` format; returns the predictions."""
    payload = {"dataframe_split": {"columns": columns, "data": rows}}
    request = urllib.request.Request(
        f"{url}/invocations", data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())["predictions"]
