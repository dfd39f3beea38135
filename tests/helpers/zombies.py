"""Real zombie processes, and the kernel's own word on a process's state and start."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def proc_stat(pid: int) -> list[str]:
    """Fields of ``/proc/<pid>/stat`` from the state on (field 3), read without psutil."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rfind(")") + 2 :].split()


@contextmanager
def zombie() -> Iterator[int]:
    """A child that has exited, in a process group of its own, left unreaped for the body.

    The child calls only ``setpgid`` and ``_exit``: nothing that could trip over locks held by
    the parent's other threads at the moment of the fork.
    """
    pid = os.fork()
    if pid == 0:  # the child
        try:
            os.setpgid(0, 0)
        finally:
            os._exit(0)
    try:
        deadline = time.monotonic() + 10
        while proc_stat(pid)[0] != "Z":
            assert time.monotonic() < deadline, "the forked child did not exit"
            time.sleep(0.01)
        yield pid
    finally:
        os.waitpid(pid, 0)
