"""A Dask cluster started the way an operator starts one on other hosts: ``dask scheduler`` and ``dask worker``.

Each worker is its own ``dask worker`` command (a nanny and its worker process) with its own
working directory, ``HOME`` and ``TMPDIR``, and an environment built from nothing but what
a worker host would be given: the venv's ``bin`` on PATH, the code on PYTHONPATH (an image
would carry it installed), and the variables the caller names (the servers' URLs, the S3
endpoint and its credentials). Nothing of the test process's environment leaks in: no log
file of the flow's, no preload setting, no work folder.

Everything listens on 127.0.0.1 on free ports. :meth:`DaskCluster.busy_worker` finds a worker
in the middle of a task and :meth:`DaskWorker.kill` ends it like a lost host (SIGKILL to the
nanny and its worker process at once, so nothing restarts it).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wd_pipeline import processes
from wd_pipeline.ops import stack

ROOT = Path(__file__).resolve().parents[2]
WORKER_NAMES = ("worker-a", "worker-b")
START_SECONDS = 120.0  # a worker imports Prefect, MLflow and (its preload) TensorFlow before it joins
STOP_SECONDS = 20.0
# Prefect's engine logs each task run's end on the worker that ran it: "Task run 'NAME' - Finished in state ..."
FINISHED_LINE = re.compile(r"Task run '(?P<name>.+?)' - Finished in state (?P<state>\w+)")


@dataclass
class DaskWorker:
    """One ``dask worker`` command: its folder (cwd, HOME, TMPDIR), its log and its process group."""

    name: str
    folder: Path
    process: subprocess.Popen[bytes]

    @property
    def log(self) -> Path:
        return self.folder / "worker.log"

    def log_size(self) -> int:
        """Where the log ends now: :meth:`finished_tasks` from here on leaves out what came before."""
        return self.log.stat().st_size if self.log.exists() else 0

    def finished_tasks(self, since: int = 0) -> dict[str, str]:
        """Task runs this worker finished (logged after byte ``since``), by name: their end state."""
        if not self.log.exists():
            return {}
        with self.log.open("rb") as log:
            log.seek(since)
            text = log.read().decode("utf-8", errors="replace")
        return {match["name"]: match["state"] for match in FINISHED_LINE.finditer(text)}

    def kill(self) -> None:
        """Lose the host: SIGKILL to the nanny and its worker process together."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=STOP_SECONDS)

    def alive(self) -> bool:
        return self.process.poll() is None


@dataclass
class DaskCluster:
    address: str
    scheduler: subprocess.Popen[bytes]
    scheduler_log: Path
    workers: dict[str, DaskWorker] = field(default_factory=dict)

    def client(self) -> Any:
        """A Dask client of this cluster (the caller closes it)."""
        from distributed import Client

        return Client(self.address, timeout=30)

    def busy_worker(self, timeout: float = 300.0) -> DaskWorker:
        """The first worker seen running a task (not merely holding one queued), polling the scheduler."""
        deadline = time.monotonic() + timeout
        with self.client() as client:
            while time.monotonic() < deadline:
                for name in _executing(client):
                    return self.workers[name]
                time.sleep(0.2)
        raise TimeoutError(f"no Dask worker ran a task within {timeout:.0f} s")


def _executing(client: Any) -> list[str]:
    """Names of the workers executing a task right now."""

    def executing(dask_worker: Any) -> int:
        return len(dask_worker.state.executing)

    counts = client.run(executing)
    names = {address: info["name"] for address, info in client.scheduler_info(n_workers=-1)["workers"].items()}
    return [names[address] for address, count in counts.items() if count and address in names]


def worker_env(folder: Path, extra: Mapping[str, str]) -> dict[str, str]:
    """The whole environment of a worker host: built, not inherited."""
    tmp = folder / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    return {
        "PATH": f"{stack.venv_bin()}{os.pathsep}/usr/bin{os.pathsep}/bin",
        "HOME": str(folder),
        "TMPDIR": str(tmp),
        "PYTHONPATH": str(ROOT),
        "LANG": "C.UTF-8",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        **extra,
    }


def _start(command: Sequence[str], folder: Path, env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            list(command),
            cwd=folder,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: killed or stopped as one host
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=STOP_SECONDS)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # the nanny's worker process, should it outlive the nanny


@contextlib.contextmanager
def running_cluster(root: Path, env: Mapping[str, str], names: Sequence[str] = WORKER_NAMES) -> Iterator[DaskCluster]:
    """A scheduler and one worker per name under ``root``, each worker given only ``env``; stopped after."""
    port = stack.free_port()
    scheduler_folder = root / "scheduler"
    scheduler_folder.mkdir(parents=True)
    scheduler_log = scheduler_folder / "scheduler.log"
    scheduler = _start(
        ["dask", "scheduler", "--host", stack.HOST, "--port", str(port), "--no-dashboard"],
        scheduler_folder,
        worker_env(scheduler_folder, {}),
        scheduler_log,
    )
    cluster = DaskCluster(f"tcp://{stack.HOST}:{port}", scheduler, scheduler_log)
    try:
        for name in names:
            folder = root / name
            folder.mkdir(parents=True)
            command = [
                "dask",
                "worker",
                cluster.address,
                "--name",
                name,
                "--nthreads",
                "1",
                "--host",
                stack.HOST,
                "--no-dashboard",
                "--local-directory",
                str(folder / "dask"),
                "--preload",
                "wd_pipeline.logs",
                "--death-timeout",
                "60",
            ]
            process = _start(command, folder, worker_env(folder, env), folder / "worker.log")
            cluster.workers[name] = DaskWorker(name, folder, process)
        _wait_for_workers(cluster, len(names))
        yield cluster
    finally:
        for worker in cluster.workers.values():
            _stop(worker.process)
        _stop(scheduler)
        groups = {process.pid for process in (scheduler, *(w.process for w in cluster.workers.values()))}
        assert not processes.groups_alive(groups), "Dask processes still running after the cluster was stopped"


def _wait_for_workers(cluster: DaskCluster, count: int) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        dead = [w.name for w in cluster.workers.values() if not w.alive()]
        if cluster.scheduler.poll() is not None or dead:
            raise RuntimeError(f"Dask cluster failed to start ({dead or 'scheduler'}): see {cluster.scheduler_log}")
        try:
            with cluster.client() as client:
                client.wait_for_workers(count, timeout=max(1.0, deadline - time.monotonic()))
                return
        except (OSError, TimeoutError):
            time.sleep(1)
    raise TimeoutError(f"{count} Dask workers did not join {cluster.address} within {START_SECONDS:.0f} s")
