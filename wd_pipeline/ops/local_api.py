"""One Prefect API in the background for the embedded default: started once, reused by every run.

Without ``PREFECT_API_URL`` Prefect starts a temporary API for each run and stops it at the
end, so every run pays for a server start (imports, database migrations) and its teardown.
Instead, the first run starts this one API (with the Prefect UI) in a session of its own;
later runs with the same ``PREFECT_HOME`` find it and use it at once. It keeps its flow runs
in the same database under ``PREFECT_HOME`` as the temporary one would.

What it is, is recorded in ``<PREFECT_HOME>/wd-local-api.json``; an exclusive lock on a file
beside it makes runs that start together wait for one start instead of racing. A recorded API
whose process is gone, was replaced by another process with the same pid, or no longer
answers is stale: it is stopped (if it still runs) and a new one started.

The process started is a small supervisor (``python -m wd_pipeline.ops.local_api``) that runs
the server as its child and stops it after :data:`IDLE_SECONDS` in which no run used it, so
an API nobody stops does not live forever. A run counts as using it while its process lives:
it leaves a file named after its identity in ``wd-local-api.users/``.

The server is started by command, never imported: this module is plain library code.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from wd_pipeline import processes
from wd_pipeline.errors import ServiceStartError

HOST = "127.0.0.1"
STATE_FILE = "wd-local-api.json"
LOCK_FILE = "wd-local-api.lock"
LOG_FILE = "wd-local-api.log"
USERS_FOLDER = "wd-local-api.users"
STARTUP_TIMEOUT_ENV = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
DEFAULT_STARTUP_TIMEOUT = 120.0
IDLE_SECONDS = 3600.0
CHECK_SECONDS = 15.0
STOP_GRACE_SECONDS = 10.0
# A busy machine can keep a healthy server from answering for a while: give it this long
# before calling it hung and replacing it (a run using it would lose its API).
HUNG_AFTER_SECONDS = 15.0
# Settings the server process reads at start: a run with other values needs another server.
SERVER_SETTING_PREFIXES = ("PREFECT_SERVER_", "PREFECT_API_DATABASE_", "PREFECT_UI_")


@dataclass(frozen=True)
class LocalApi:
    """A background API as recorded in its state file."""

    pid: int
    start_ticks: int | None
    port: int
    home: str
    settings_key: str

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://{HOST}:{self.port}"


def prefect_home() -> Path:
    """The folder Prefect keeps its database in: ``PREFECT_HOME``, else Prefect's default."""
    return Path(os.environ.get("PREFECT_HOME") or "~/.prefect").expanduser().resolve()


def settings_key(env: dict[str, str] | None = None) -> str:
    """A digest of the server settings in ``env``, so a server started with others is not reused."""
    env = dict(os.environ) if env is None else env
    chosen = sorted((k, v) for k, v in env.items() if k.startswith(SERVER_SETTING_PREFIXES))
    return hashlib.sha256(json.dumps(chosen).encode()).hexdigest()[:16]


def ensure(home: Path | None = None) -> LocalApi:
    """The running background API for ``home``, started first when there is none (or a stale one).

    Marks this process as a user of it until it exits (see the module's docstring).
    """
    home = home or prefect_home()
    home.mkdir(parents=True, exist_ok=True)
    key = settings_key()
    with _locked(home):
        recorded = read(home)
        if recorded is not None and recorded.settings_key == key and _answers(recorded):
            api = recorded
        else:
            if recorded is not None:
                _stop_process(recorded)
            api = _launch(home, key)
        _register_user(home)
        _state_path(home).touch()
    return api


def ensure_in_background(home: Path | None = None) -> Starting:
    """:func:`ensure` on a thread, so that the caller's own start-up work overlaps the server's."""
    return Starting(home or prefect_home())


class Starting:
    """A background API being found or started; :meth:`result` waits for it."""

    def __init__(self, home: Path) -> None:
        self._api: LocalApi | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(home,), name="local-prefect-api", daemon=True)
        self._thread.start()

    def _run(self, home: Path) -> None:
        try:
            self._api = ensure(home)
        except BaseException as exc:  # handed to the thread that waits for it
            self._error = exc

    def result(self) -> LocalApi:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._api is not None
        return self._api


def read(home: Path) -> LocalApi | None:
    """The API recorded for ``home`` (running or not); None when nothing (readable) is recorded."""
    try:
        return LocalApi(**json.loads(_state_path(home).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def status(home: Path | None = None) -> tuple[LocalApi | None, bool]:
    """The recorded API and whether it runs and answers now."""
    api = read(home or prefect_home())
    return api, api is not None and processes.same_process(api.pid, api.start_ticks) and healthy(api)


def stop(home: Path | None = None) -> LocalApi | None:
    """Stop the background API of ``home``; returns the one stopped, None when none was running."""
    home = home or prefect_home()
    if not _state_path(home).exists():
        return None
    with _locked(home):
        api = read(home)
        _state_path(home).unlink(missing_ok=True)
        if api is None or not processes.same_process(api.pid, api.start_ticks):
            return None
        _stop_process(api)
        return api


def healthy(api: LocalApi, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api.api_url}/health", timeout=timeout) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def startup_timeout() -> float:
    try:
        return float(os.environ.get(STARTUP_TIMEOUT_ENV, DEFAULT_STARTUP_TIMEOUT))
    except ValueError:
        return DEFAULT_STARTUP_TIMEOUT


# ---------------------------------------------------------------- start and stop


def _answers(api: LocalApi) -> bool:
    """Whether the recorded process still runs and answers, allowing a busy one some time."""
    deadline = time.monotonic() + HUNG_AFTER_SECONDS
    while processes.same_process(api.pid, api.start_ticks):
        if healthy(api):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return False


def _launch(home: Path, key: str) -> LocalApi:
    """Start the supervisor (and through it the server) in a session of its own and wait until it answers."""
    port = _free_port()
    command = [sys.executable, "-m", __name__, "--home", str(home), "--port", str(port)]
    with (home / LOG_FILE).open("ab") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=home,
            env=server_env(home, port),
            start_new_session=True,
        )
    api = LocalApi(process.pid, processes.start_ticks(process.pid), port, str(home), key)
    _state_path(home).write_text(json.dumps(asdict(api), indent=2), encoding="utf-8")  # found by stop() from now on
    deadline = time.monotonic() + startup_timeout()
    while time.monotonic() < deadline:
        if healthy(api):
            return api
        if process.poll() is not None:
            break
        time.sleep(0.2)
    _stop_process(api)
    _state_path(home).unlink(missing_ok=True)
    raise ServiceStartError(
        f"the background Prefect API did not start within {startup_timeout():.0f} s: see {home / LOG_FILE} "
        f"(raise {STARTUP_TIMEOUT_ENV} on a slow machine, or set PREFECT_API_URL to a running Prefect server)"
    )


def _stop_process(api: LocalApi) -> None:
    """SIGTERM the API's process group (supervisor and server), SIGKILL what is left after the grace."""
    if not processes.same_process(api.pid, api.start_ticks):
        return
    groups = processes.process_groups([api.pid])
    processes.stop_groups(groups, leader=api.pid, grace=STOP_GRACE_SECONDS, poll=0.1)


def server_env(home: Path, port: int) -> dict[str, str]:
    """The environment of the server: this one, with the home, its own UI address and no services."""
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)  # the server must not try to be a client of another one
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_UI_API_URL=f"http://{HOST}:{port}/api",
        PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT="false",
        PREFECT_SERVER_ANALYTICS_ENABLED=env.get("PREFECT_SERVER_ANALYTICS_ENABLED", "false"),
        # API and UI only: schedules, late-run marking and the like serve deployments and
        # workers, which a run through the CLI does not have.
        PREFECT__SERVER_WEBSERVER_ONLY="1",
        PREFECT__SERVER_FINAL="1",
    )
    return env


def server_command(port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "prefect.server.api.server:create_app",
        "--host",
        HOST,
        "--port",
        str(port),
        "--log-level",
        "error",
        "--lifespan",
        "on",
    ]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def _state_path(home: Path) -> Path:
    return home / STATE_FILE


@contextlib.contextmanager
def _locked(home: Path) -> Iterator[None]:
    with (home / LOCK_FILE).open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# ---------------------------------------------------------------- users and idleness


def _register_user(home: Path) -> None:
    """Leave this process's identity in the users folder; the file goes when the process ends."""
    folder = home / USERS_FOLDER
    folder.mkdir(exist_ok=True)
    (folder / processes.identity()).touch()


def busy(home: Path) -> bool:
    """Whether a process that uses the API still runs; files of ended processes are removed."""
    folder = home / USERS_FOLDER
    if not folder.is_dir():
        return False
    running = False
    for entry in folder.iterdir():
        if processes.identity_alive(entry.name) is False:
            entry.unlink(missing_ok=True)
        else:
            running = True
    return running


def last_used(home: Path) -> float:
    """When a run last asked for the API (the state file is touched then), as a Unix time."""
    try:
        return _state_path(home).stat().st_mtime
    except OSError:
        return 0.0


def supervise(home: Path, port: int, idle_seconds: float = IDLE_SECONDS) -> int:
    """Run the server until told to stop, until it exits, or until nobody used it for ``idle_seconds``."""
    server = subprocess.Popen(server_command(port), stdin=subprocess.DEVNULL, env=server_env(home, port))
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    while not stopping.wait(min(CHECK_SECONDS, idle_seconds / 2)):
        if server.poll() is not None:
            return server.returncode
        if not busy(home) and time.time() - last_used(home) > idle_seconds:
            print(f"no run used the API for {idle_seconds:.0f} s: stopping", flush=True)
            break
    server.terminate()
    try:
        server.wait(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="supervise the background Prefect API (started by wd-pipeline)")
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--idle-seconds", type=float, default=IDLE_SECONDS)
    args = parser.parse_args(argv)
    return supervise(args.home, args.port, args.idle_seconds)


if __name__ == "__main__":
    raise SystemExit(main())
