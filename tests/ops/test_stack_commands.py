"""The stack commands without servers: one-line errors, process clean-up, no Prefect import."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wd_pipeline import processes
from wd_pipeline.cli import EXIT_RUN_FAILED, main
from wd_pipeline.errors import PortInUseError
from wd_pipeline.ops import stack


def test_stack_modules_import_neither_prefect_nor_mlflow() -> None:
    code = (
        "import sys\n"
        "import wd_pipeline.ops.stack, wd_pipeline.ops.deploy, wd_pipeline.ops.stack_commands\n"
        "print(sorted(m for m in ('prefect', 'mlflow', 'tensorflow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_port_in_use_is_refused_with_the_fix(tmp_path: Path, capsys) -> None:
    with __import__("socket").socket() as holder:
        holder.bind((stack.HOST, 0))
        holder.listen()
        port = holder.getsockname()[1]
        with pytest.raises(PortInUseError, match=f"port {port} .* is in use"):
            stack.ensure_port_free(port, "Prefect server")
        code = main(
            [
                "stack",
                "up",
                "--state-dir",
                str(tmp_path),
                "--prefect-port",
                str(port),
                "--mlflow-port",
                str(stack.free_port()),
            ]
        )
    err = capsys.readouterr().err
    assert code == EXIT_RUN_FAILED
    assert err.count("\n") == 1 and "pick another port" in err
    assert not (tmp_path / stack.STATE_FILE).exists()


@pytest.mark.parametrize("argv", [["stack", "status"], ["stack", "down"], ["stack", "env"], ["deploy"]])
def test_commands_without_a_stack_say_how_to_start_one(argv: list[str], tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert main([*argv, "--state-dir", str(tmp_path)]) == EXIT_RUN_FAILED
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "wd-pipeline stack up" in err and "Traceback" not in err


def test_down_stops_the_recorded_process_and_what_it_spawned_in_another_session(tmp_path: Path) -> None:
    # A stand-in for the worker: it starts a grandchild in a session of its own, as
    # Prefect does for each flow run, and both must be gone after `down`.
    spawner = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'], start_new_session=True)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(300)\n"
    )
    (tmp_path / "logs").mkdir()
    state = stack.StackState("http://127.0.0.1:1/api", "http://127.0.0.1:2", "pool")
    record = stack._start(
        state, tmp_path, "spawner", stack.ServiceSpec([sys.executable, "-c", spawner], stack.base_env(), "-")
    )
    log = Path(record.log)
    deadline = time.monotonic() + 20
    while not log.read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.1)
    grandchild = int(log.read_text().split()[0])
    assert processes.alive(record.pid) and processes.alive(grandchild)
    assert json.loads((tmp_path / stack.STATE_FILE).read_text())["services"][0]["pid"] == record.pid

    stopped = stack.down(tmp_path)

    assert [r.pid for r in stopped] == [record.pid]
    assert not processes.alive(record.pid) and not processes.alive(grandchild)
    assert not (tmp_path / stack.STATE_FILE).exists()


def test_a_recycled_pid_is_never_signalled(tmp_path: Path) -> None:
    state = stack.StackState("http://127.0.0.1:1/api", "http://127.0.0.1:2", "pool")
    state.services.append(stack.ServiceRecord("ghost", 1, start_ticks=-1, url="-", log="-"))  # pid 1, other start
    state.save(tmp_path)
    assert stack.down(tmp_path)[0].pid == 1  # returns without touching init
    assert processes.alive(1)
