"""One contender in a race to create the same registered model: ``python -m tests.helpers.lock_contender URI NAME FOLDER``.

Each contender imports MLflow and connects first, reports ready, then waits for a
common start signal (a file), so the creates hit the store as nearly at once as processes can.
Prints ``created`` or the MLflow error code it got.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

READY = "ready-"
GO = "go"


def main(uri: str, name: str, folder: Path) -> str:
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.search_registered_models(max_results=1)  # connect (and open the store) before the start signal
    (folder / f"{READY}{id(client)}").touch()
    deadline = time.monotonic() + 300
    while not (folder / GO).exists():
        if time.monotonic() > deadline:
            return "no start signal"
        time.sleep(0.001)
    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        return exc.error_code
    return "created"


def race(uri: str, name: str, folder: Path, contenders: int = 3) -> list[str]:
    """What each of ``contenders`` processes got from creating the same registered model at once, sorted."""
    folder.mkdir()
    command = [sys.executable, "-m", "tests.helpers.lock_contender", uri, name, str(folder)]
    root = Path(__file__).resolve().parents[1]
    processes = [
        subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(contenders)
    ]
    deadline = time.monotonic() + 300
    while len(list(folder.glob(f"{READY}*"))) < contenders and time.monotonic() < deadline:
        time.sleep(0.05)
    (folder / GO).touch()
    outputs = [process.communicate(timeout=300) for process in processes]
    assert all(process.returncode == 0 for process in processes), [err[-2000:] for _, err in outputs]
    return sorted(out.strip() for out, _ in outputs)


if __name__ == "__main__":
    print(main(sys.argv[1], sys.argv[2], Path(sys.argv[3])))
