"""Local processes, judged one way everywhere: alive or not, still the one recorded, what it spawned.

Tracking asks whether the process that opened a pipeline run (or holds the promotion lock)
still exists; the local stack asks whether a server it started still runs and which
processes to stop with it. Both get their answers here, from psutil.

A pid alone does not name a process for long: the kernel hands a freed pid to the next
process that starts. A process is therefore recorded as pid + start time, and the start
time is kept in clock ticks since boot (field 22 of ``/proc/<pid>/stat``), not as a date:
it is fixed for the life of the process, whereas a wall-clock start time is derived from
the boot time and moves whenever the system clock is stepped. Owner tags in MLflow
(``host:pid:ticks``) and ``start_ticks`` in ``stack.json`` hold it in this form.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Collection, Iterable

import psutil

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_GONE = (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)


def alive(pid: int) -> bool:
    """Whether ``pid`` is a process that still runs.

    A zombie counts as dead. It has exited; only its parent has not reaped it yet (collected
    its exit status), so it will run no more code: it cannot finish an MLflow run, release a
    lock or answer a health check. Counting it alive would keep a crashed pipeline's runs
    open for as long as its parent lingers, and make a server that died under the very
    process that started it look up until that process waits for it.
    """
    process = _process(pid)
    return process is not None and _running(process)


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot; None when there is no such process."""
    process = _process(pid)
    return None if process is None else _ticks(process)


def same_process(pid: int, ticks: int | None) -> bool:
    """Whether ``pid`` still runs and is the process that started at ``ticks``.

    ``ticks`` None means the start was never recorded: then the pid alone decides.
    """
    process = _process(pid)
    if process is None or not _running(process):
        return False
    return ticks is None or _ticks(process) == ticks


def identity() -> str:
    """``host:pid:ticks`` of this process, for another process to ask :func:`identity_alive` later."""
    ticks = start_ticks(os.getpid())
    return f"{socket.gethostname()}:{os.getpid()}:{'' if ticks is None else ticks}"


def identity_alive(identity: str) -> bool | None:
    """Whether the process an :func:`identity` string names still runs; None when this host cannot tell.

    None for another host's process and for a string that does not parse. An empty start
    (written where the start could not be read) leaves the decision to the pid.
    """
    host, _, rest = identity.partition(":")
    pid_text, _, ticks_text = rest.partition(":")
    if host != socket.gethostname() or not pid_text.isdigit() or not (ticks_text == "" or ticks_text.isdigit()):
        return None
    return same_process(int(pid_text), int(ticks_text) if ticks_text else None)


def descendants(pid: int) -> list[int]:
    """Pids of the running processes ``pid`` started, and those they started, in any session.

    Found through parent links, so a child that moved to a session of its own (as Prefect
    starts each flow run) is still found; one whose parent has already exited is not.
    """
    process = _process(pid)
    if process is None:
        return []
    try:
        children = process.children(recursive=True)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return []
    return [child.pid for child in children if _running(child)]


def process_groups(pids: Iterable[int]) -> set[int]:
    """The process groups of those ``pids`` that still exist."""
    groups = set()
    for pid in pids:
        try:
            groups.add(os.getpgid(pid))
        except (ProcessLookupError, PermissionError):
            continue
    return groups


def stop_groups(groups: Collection[int], *, leader: int, grace: float, poll: float) -> None:
    """SIGTERM every process group, SIGKILL what is left after ``grace`` seconds.

    ``leader`` is reaped along the way when this very process started it, so it does not
    linger as a zombie that :func:`groups_alive` would have to skip.
    """
    _signal_groups(groups, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and groups_alive(groups):
        _reap(leader)
        time.sleep(poll)
    if groups_alive(groups):
        _signal_groups(groups, signal.SIGKILL)
        time.sleep(0.2)
    _reap(leader)


def _signal_groups(groups: Iterable[int], sig: signal.Signals) -> None:
    for group in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, sig)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def groups_alive(groups: Collection[int]) -> bool:
    """Whether any running process (zombies excepted, see :func:`alive`) is in one of ``groups``."""
    for pid in psutil.pids():
        try:
            group = os.getpgid(pid)
        except (ProcessLookupError, PermissionError):
            continue
        if group in groups and alive(pid):
            return True
    return False


def _process(pid: int) -> psutil.Process | None:
    if pid <= 0:  # 0 and negative numbers address process groups in kill(2), never one process
        return None
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() not in _GONE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True  # it exists; only its details are hidden from this user


def _ticks(process: psutil.Process) -> int | None:
    """psutil gives the start as a date (boot time + ticks); taking the boot time off again gives the ticks."""
    try:
        return round((process.create_time() - psutil.boot_time()) * CLOCK_TICKS)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
