"""One view of local processes: a zombie is dead, a recycled pid is another process, spawned ones are found."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import psutil
import pytest

from tests.helpers.zombies import proc_stat, zombie
from wd_pipeline import processes

HOST = socket.gethostname()
SLEEPER = [sys.executable, "-c", "import time; time.sleep(300)"]


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen]:
    """A running child in a session (and so a process group) of its own."""
    child = subprocess.Popen(SLEEPER, start_new_session=True)
    try:
        yield child
    finally:
        child.kill()
        child.wait()


def test_this_process_is_alive_and_itself() -> None:
    pid = os.getpid()
    assert processes.alive(pid)
    assert processes.same_process(pid, processes.start_ticks(pid))
    assert processes.identity_alive(processes.identity()) is True


def test_start_ticks_are_the_kernels_field_22(sleeper: subprocess.Popen) -> None:
    # MLflow owner tags and stack.json hold this field as the kernel reports it: the helper must agree.
    for pid in (os.getpid(), sleeper.pid):
        assert processes.start_ticks(pid) == int(proc_stat(pid)[19])
    assert processes.identity() == f"{HOST}:{os.getpid()}:{proc_stat(os.getpid())[19]}"


def test_a_zombie_is_dead_everywhere() -> None:
    with zombie() as pid:
        assert proc_stat(pid)[0] == "Z" and psutil.pid_exists(pid)  # the kernel still lists it
        ticks = processes.start_ticks(pid)
        assert ticks == int(proc_stat(pid)[19])
        assert not processes.alive(pid)
        assert not processes.same_process(pid, ticks)
        assert processes.identity_alive(f"{HOST}:{pid}:{ticks}") is False
        assert pid not in processes.descendants(os.getpid())
        assert processes.process_groups([pid]) == {pid}  # it still belongs to its group…
        assert not processes.groups_alive({pid})  # …but nothing in that group runs


def test_an_exited_and_reaped_pid_is_dead() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert not processes.alive(child.pid)
    assert processes.start_ticks(child.pid) is None
    assert not processes.same_process(child.pid, None)
    assert processes.identity_alive(f"{HOST}:{child.pid}:1") is False
    assert processes.descendants(child.pid) == [] and processes.process_groups([child.pid]) == set()


def test_a_pid_held_by_another_process_is_not_the_recorded_one(sleeper: subprocess.Popen) -> None:
    ticks = processes.start_ticks(sleeper.pid)
    assert ticks is not None and processes.same_process(sleeper.pid, ticks)
    # The recorded pid now runs a process that started at another time: a recycled pid.
    assert not processes.same_process(sleeper.pid, ticks - 1)
    assert processes.identity_alive(f"{HOST}:{sleeper.pid}:{ticks + 1}") is False
    # init runs, but it is not the process that started when this one did.
    assert processes.alive(1)
    assert processes.identity_alive(f"{HOST}:1:{processes.start_ticks(os.getpid())}") is False


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("another-host:{pid}:1", None),  # cannot be checked from here
        ("{host}:not-a-pid:1", None),
        ("{host}:{pid}:not-ticks", None),
        ("{host}:{pid}:", True),  # start unknown: the pid alone decides
        ("{host}:{pid}", True),
        ("{host}:0:", False),  # 0 names a process group, never a process
    ],
)
def test_identity_strings(template: str, expected: bool | None) -> None:
    # Filled in here, not in the ids: test processes (pytest-xdist) must collect the same tests.
    identity = template.format(host=HOST, pid=os.getpid())
    assert processes.identity_alive(identity) is expected


def test_descendants_in_other_sessions_are_found_and_a_zombie_group_is_not_alive() -> None:
    # The parent starts a grandchild in a session of its own (as Prefect starts a flow run)
    # and never reaps it: killed, the grandchild stays a zombie.
    spawner = (
        "import subprocess, sys, time\n"
        f"child = subprocess.Popen({SLEEPER!r}, start_new_session=True)\n"
        "print(child.pid, flush=True)\n"
        "time.sleep(300)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", spawner], stdout=subprocess.PIPE, start_new_session=True)
    try:
        grandchild = int(parent.stdout.readline())
        assert processes.descendants(parent.pid) == [grandchild]
        assert {parent.pid, grandchild} <= set(processes.descendants(os.getpid()))
        groups = processes.process_groups([parent.pid, grandchild])
        assert groups == {parent.pid, grandchild}
        assert processes.groups_alive({grandchild}) and processes.groups_alive(groups)

        os.kill(grandchild, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while proc_stat(grandchild)[0] != "Z":
            assert time.monotonic() < deadline, "the grandchild did not die"
            time.sleep(0.01)
        assert processes.descendants(parent.pid) == []
        assert not processes.groups_alive({grandchild})
        assert processes.groups_alive(groups)  # the parent still runs
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()
    assert not processes.groups_alive(groups)  # the parent reaped, the grandchild a zombie or reaped by init
