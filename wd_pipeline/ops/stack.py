"""A local server stack without Docker: Prefect server, MLflow server, Prefect worker.

Each server is a plain subprocess in its own session (so its process group can be killed
as a whole), bound to 127.0.0.1, logging into and keeping its state under one folder the
user can delete. What was started is recorded in ``<state dir>/stack.json``; ``down``
only ever signals the processes recorded there (and what they spawned).

This module only starts subprocesses and speaks HTTP: it never imports Prefect or MLflow.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict

from wd_pipeline import processes, storage
from wd_pipeline.config import PROJECT_ROOT, Port, described
from wd_pipeline.errors import ConfigError, PortInUseError, ServiceStartError, StackNotRunningError
from wd_pipeline.ops import databases
from wd_pipeline.ops.server_auth import AUTH_DATABASE_ENV

HOST = "127.0.0.1"
DEFAULT_STATE_DIR = ".wd-stack"
DEFAULT_PREFECT_PORT = 4200
DEFAULT_MLFLOW_PORT = 5000
DEFAULT_WORK_POOL = "wd-process"
STATE_FILE = "stack.json"
STOP_GRACE_SECONDS = 10.0


@dataclass(frozen=True)
class StackAuth:
    """Credentials the servers demand; each server stays open when its credential is unset.

    Taken from the variables the clients already read, so whoever starts the stack and every
    flow run the worker starts (it inherits the environment) hold the same credentials.
    """

    prefect_auth_string: str | None = None  # PREFECT_API_AUTH_STRING, "user:password"
    mlflow_username: str | None = None  # MLFLOW_TRACKING_USERNAME, becomes MLflow's admin
    mlflow_password: str | None = None  # MLFLOW_TRACKING_PASSWORD

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> StackAuth:
        env = dict(os.environ if env is None else env)
        username, password = env.get("MLFLOW_TRACKING_USERNAME"), env.get("MLFLOW_TRACKING_PASSWORD")
        if bool(username) != bool(password):
            raise ConfigError(
                "set both MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (MLflow behind basic auth) or neither"
            )
        return cls(env.get("PREFECT_API_AUTH_STRING") or None, username or None, password or None)

    @property
    def mlflow(self) -> bool:
        return self.mlflow_username is not None


class StackSettings(BaseModel):
    """Where the stack keeps its state and which ports and stores it uses (the flags of ``stack up``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    state_dir: Annotated[Path, described("folder holding the stack's state, logs and data")] = Path(DEFAULT_STATE_DIR)
    prefect_port: Annotated[Port, described("Prefect server port")] = DEFAULT_PREFECT_PORT
    mlflow_port: Annotated[Port, described("MLflow server port")] = DEFAULT_MLFLOW_PORT
    mlflow_backend_uri: Annotated[
        str | None, described("MLflow backend store, e.g. postgresql+psycopg2://…; SQLite in the state dir when empty")
    ] = None
    prefect_database_url: Annotated[
        str | None, described("Prefect database, e.g. postgresql+asyncpg://…; SQLite in the state dir when empty")
    ] = None
    mlflow_artifacts_destination: Annotated[
        str | None,
        described(
            "where the MLflow server stores artifacts, e.g. s3://bucket/prefix (credentials from AWS_ACCESS_KEY_ID, "
            "AWS_SECRET_ACCESS_KEY, endpoint from MLFLOW_S3_ENDPOINT_URL or AWS_ENDPOINT_URL); "
            "mlartifacts/ in the state dir when empty"
        ),
    ] = None
    work_dir: Annotated[
        str | None,
        described(
            "work folder of the worker's flow runs, a folder or s3://bucket/prefix; work/ in the state dir when empty"
        ),
    ] = None
    work_pool: Annotated[str, described("process work pool the worker polls", min_length=1)] = DEFAULT_WORK_POOL
    timeout: Annotated[
        float, described("seconds each service may take to become healthy", gt=0, allow_inf_nan=False)
    ] = 120.0
    # Not a flag: taken from the caller's environment when None, see StackAuth.from_env.
    auth: StackAuth | None = None

    @property
    def prefect_api_url(self) -> str:
        return f"http://{HOST}:{self.prefect_port}/api"

    @property
    def mlflow_url(self) -> str:
        return f"http://{HOST}:{self.mlflow_port}"


@dataclass
class ServiceRecord:
    """One started process, with its start time so a recycled PID is never signalled."""

    name: str
    pid: int
    start_ticks: int
    url: str
    log: str
    command: list[str] = field(default_factory=list)
    started_at: float = 0.0  # epoch seconds


@dataclass
class StackState:
    """Contents of ``stack.json``: enough for ``status``, ``down`` and client exports."""

    prefect_api_url: str
    mlflow_url: str
    work_pool: str
    services: list[ServiceRecord] = field(default_factory=list)

    def exports(self) -> dict[str, str]:
        return {"PREFECT_API_URL": self.prefect_api_url, "MLFLOW_TRACKING_URI": self.mlflow_url}

    def save(self, state_dir: Path) -> None:
        path = state_dir / STATE_FILE
        path.write_text(json.dumps(asdict(self), indent=2), encoding="utf-8")

    @classmethod
    def load(cls, state_dir: Path) -> StackState:
        path = state_dir / STATE_FILE
        if not path.exists():
            raise StackNotRunningError(
                f"no stack recorded in {state_dir}/: start one with `wd-pipeline stack up --state-dir {state_dir}`"
            )
        raw = json.loads(path.read_text(encoding="utf-8"))
        services = [ServiceRecord(**s) for s in raw.pop("services", [])]
        return cls(**raw, services=services)


@dataclass(frozen=True)
class ServiceHealth:
    name: str
    pid: int
    running: bool
    healthy: bool
    url: str


# ---------------------------------------------------------------- up / status / down


def up(settings: StackSettings, echo: Callable[[str], None] = lambda _: None) -> StackState:
    """Start the three services, each only once the one it needs is healthy.

    On any failure everything already started is stopped again, so a failed ``up`` leaves
    no process behind and can simply be retried.
    """
    state_dir = _prepare(
        settings,
        (("Prefect server", settings.prefect_port), ("MLflow server", settings.mlflow_port)),
        (PREFECT_SERVER, MLFLOW_SERVER, PREFECT_WORKER),
    )
    state = StackState(settings.prefect_api_url, settings.mlflow_url, settings.work_pool)
    checks = _health_checks(state, _auth(settings).prefect_auth_string)
    specs = service_specs(settings, state_dir)
    try:
        prefect = _start(state, state_dir, PREFECT_SERVER, specs[PREFECT_SERVER])
        mlflow = _start(state, state_dir, MLFLOW_SERVER, specs[MLFLOW_SERVER])
        _wait(prefect, checks[prefect.name], settings.timeout, echo)
        _wait(mlflow, checks[mlflow.name], settings.timeout, echo)
        worker = _start(state, state_dir, PREFECT_WORKER, specs[PREFECT_WORKER])
        _wait(worker, checks[worker.name], settings.timeout, echo)
    except BaseException:
        _abort(state, state_dir)
        raise
    return state


def stop_service(state_dir: Path, name: str) -> ServiceRecord:
    """Stop one recorded service (and what it spawned); it stays recorded, shown as not running.

    With :func:`start_service` this is a restart — or an outage, if you wait in between:
    what ``tests/stack/test_outages.py`` does to the MLflow and Prefect servers.
    """
    record = _record_named(StackState.load(state_dir.resolve()), name)
    _stop_records([record])
    return record


def start_service(settings: StackSettings, name: str, echo: Callable[[str], None] = lambda _: None) -> ServiceRecord:
    """(Re)start one service with the command, port and store ``up`` gives it, and wait until healthy.

    Without a recorded stack it starts a stack of just this service (``down`` stops it).
    """
    state_dir = settings.state_dir.resolve()
    try:
        state = StackState.load(state_dir)
    except StackNotRunningError:
        state = StackState(settings.prefect_api_url, settings.mlflow_url, settings.work_pool)
    if any(r.name == name and _is_same_process(r) for r in state.services):
        raise ServiceStartError(f"{name} is already running from {state_dir}/: stop it first")
    port = {PREFECT_SERVER: settings.prefect_port, MLFLOW_SERVER: settings.mlflow_port}.get(name)
    if port is not None:
        ensure_port_free(port, name)
    check_databases(settings, (name,))
    _make_folders(state_dir)
    order = [r.name for r in state.services]
    state.services = [r for r in state.services if r.name != name]
    record = _start(state, state_dir, name, service_specs(settings, state_dir)[name])
    if name in order:  # back in its place: `down` stops in reverse start order, the worker first
        state.services.sort(key=lambda r: order.index(r.name) if r.name in order else len(order))
        state.save(state_dir)
    _wait(record, _health_checks(state, _auth(settings).prefect_auth_string)[name], settings.timeout, echo)
    return record


def up_mlflow(settings: StackSettings, echo: Callable[[str], None] = lambda _: None) -> StackState:
    """Only the MLflow server, recorded like a stack (``down`` stops it).

    For pipeline runs that bring their own Prefect API (the CLI's temporary one) but must
    share one tracking server and registry, e.g. several runs racing for one model name.
    """
    state_dir = _prepare(settings, (("MLflow server", settings.mlflow_port),), (MLFLOW_SERVER,))
    state = StackState("", settings.mlflow_url, settings.work_pool)
    try:
        mlflow = _start(state, state_dir, MLFLOW_SERVER, service_specs(settings, state_dir)[MLFLOW_SERVER])
        _wait(mlflow, _health_checks(state)[mlflow.name], settings.timeout, echo)
    except BaseException:
        _abort(state, state_dir)
        raise
    return state


def _prepare(settings: StackSettings, ports: Iterable[tuple[str, int]], servers: Iterable[str]) -> Path:
    """Refuse a running stack, a taken port or a database that does not answer, then create the state folders.

    Returns the state dir.
    """
    state_dir = settings.state_dir.resolve()
    _refuse_if_running(state_dir)
    for name, port in ports:
        ensure_port_free(port, name)
    check_databases(settings, servers)
    _make_folders(state_dir)
    return state_dir


def check_databases(settings: StackSettings, servers: Iterable[str]) -> None:
    """Connect once to the database and S3 bucket each of ``servers`` is given, so a wrong URL, password,
    bucket or key is one line, at once."""
    servers = set(servers)
    if MLFLOW_SERVER in servers and storage.is_remote(settings.mlflow_artifacts_destination or ""):
        with _mlflow_s3_endpoint():
            storage.check_writable(
                str(settings.mlflow_artifacts_destination),
                purpose="MLflow artifacts destination",
                flag="--mlflow-artifacts-destination",
            )
    if PREFECT_WORKER in servers and storage.is_remote(settings.work_dir or ""):
        storage.check_writable(str(settings.work_dir), flag="--work-dir")
    if PREFECT_SERVER in servers and settings.prefect_database_url:
        databases.check_prefect_database(settings.prefect_database_url)
    if MLFLOW_SERVER in servers and settings.mlflow_backend_uri:
        databases.check_mlflow_database(settings.mlflow_backend_uri)


@contextlib.contextmanager
def _mlflow_s3_endpoint() -> Iterator[None]:
    """The check of MLflow's bucket goes where MLflow will: to MLFLOW_S3_ENDPOINT_URL when that is set."""
    saved = os.environ.get("AWS_ENDPOINT_URL_S3")
    if os.environ.get("MLFLOW_S3_ENDPOINT_URL"):
        os.environ["AWS_ENDPOINT_URL_S3"] = os.environ["MLFLOW_S3_ENDPOINT_URL"]
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("AWS_ENDPOINT_URL_S3", None)
        else:
            os.environ["AWS_ENDPOINT_URL_S3"] = saved


def _abort(state: StackState, state_dir: Path) -> None:
    """A failed start leaves no process and no record behind, so it can simply be retried."""
    _stop_records(state.services)
    (state_dir / STATE_FILE).unlink(missing_ok=True)


def status(state_dir: Path) -> list[ServiceHealth]:
    """Whether each recorded process still runs and answers its health check."""
    state = StackState.load(state_dir.resolve())
    checks = _health_checks(state)
    report = []
    for record in state.services:
        running = _is_same_process(record)
        healthy = running and checks.get(record.name, lambda: True)()
        report.append(ServiceHealth(record.name, record.pid, running, healthy, record.url))
    return report


def down(state_dir: Path) -> list[ServiceRecord]:
    """Stop every recorded process and its descendants; returns what was recorded."""
    state_dir = state_dir.resolve()
    state = StackState.load(state_dir)
    # Worker first, so it does not report crashed flow runs to a server already gone.
    _stop_records(list(reversed(state.services)))
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    return state.services


def load_exports(state_dir: Path) -> dict[str, str]:
    return StackState.load(state_dir.resolve()).exports()


# ---------------------------------------------------------------- commands and environments

PREFECT_SERVER = "prefect-server"
MLFLOW_SERVER = "mlflow-server"
PREFECT_WORKER = "prefect-worker"


def _auth(settings: StackSettings) -> StackAuth:
    return settings.auth or StackAuth.from_env()


@dataclass(frozen=True)
class ServiceSpec:
    """How to start one service: its command, its environment and the URL it answers on."""

    command: list[str]
    env: dict[str, str]
    url: str


def service_specs(settings: StackSettings, state_dir: Path) -> dict[str, ServiceSpec]:
    """Per service (credentials from ``settings`` or the environment)."""
    auth = _auth(settings)
    return {
        PREFECT_SERVER: ServiceSpec(
            _prefect_server_command(settings),
            _prefect_env(settings, state_dir, auth),
            f"http://{HOST}:{settings.prefect_port}",
        ),
        MLFLOW_SERVER: ServiceSpec(
            _mlflow_command(settings, state_dir, auth), _mlflow_env(settings, state_dir, auth), settings.mlflow_url
        ),
        PREFECT_WORKER: ServiceSpec(
            _worker_command(settings),
            _worker_env(settings, state_dir, auth),
            f"{settings.prefect_api_url}/work_pools/{settings.work_pool}",
        ),
    }


def _make_folders(state_dir: Path) -> None:
    for folder in ("logs", "prefect", "mlartifacts", "work"):
        (state_dir / folder).mkdir(parents=True, exist_ok=True)


def _record_named(state: StackState, name: str) -> ServiceRecord:
    for record in state.services:
        if record.name == name:
            return record
    known = ", ".join(r.name for r in state.services)
    raise StackNotRunningError(f"no service {name!r} recorded in this stack (it has: {known})")


def venv_bin() -> Path:
    """The folder of this interpreter's console scripts (prefect, mlflow, uvicorn)."""
    return Path(sys.executable).parent


def base_env(**extra: str) -> dict[str, str]:
    """The caller's environment with the venv's ``bin`` first on PATH."""
    env = dict(os.environ)
    # The stack's registry is its tracking server. A registry URI inherited from the caller
    # (mlflow.set_registry_uri() writes one into os.environ) would send clients elsewhere.
    env.pop("MLFLOW_REGISTRY_URI", None)
    env["PATH"] = f"{venv_bin()}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.update(extra)
    return env


def _prefect_server_command(settings: StackSettings) -> list[str]:
    return [str(venv_bin() / "prefect"), "server", "start", "--host", HOST, "--port", str(settings.prefect_port)]


def _prefect_env(settings: StackSettings, state_dir: Path, auth: StackAuth) -> dict[str, str]:
    env = base_env(
        PREFECT_HOME=str(state_dir / "prefect"),
        # Without it the UI served on another port still calls the API on 4200.
        PREFECT_UI_API_URL=settings.prefect_api_url,
        PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT="false",
    )
    env.pop("PREFECT_API_URL", None)  # the server must not try to be a client of another one
    if settings.prefect_database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = settings.prefect_database_url
    if auth.prefect_auth_string:
        # The API then answers 401 to any request without it, except GET /api/health.
        env["PREFECT_SERVER_API_AUTH_STRING"] = auth.prefect_auth_string
    return env


def _mlflow_command(settings: StackSettings, state_dir: Path, auth: StackAuth) -> list[str]:
    # With credentials, through the same entry point as the compose service (it adds `server --app-name basic-auth`).
    launcher = (
        [sys.executable, "-m", "wd_pipeline.ops.server_auth"] if auth.mlflow else [str(venv_bin() / "mlflow"), "server"]
    )
    return [
        *launcher,
        "--host",
        HOST,
        "--port",
        str(settings.mlflow_port),
        "--workers",
        "1",
        "--serve-artifacts",
        "--artifacts-destination",
        settings.mlflow_artifacts_destination or str(state_dir / "mlartifacts"),
    ]


def _mlflow_env(settings: StackSettings, state_dir: Path, auth: StackAuth) -> dict[str, str]:
    env = base_env(
        # The job runner alone costs a few hundred MB and a core at start (see STACK.md).
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
        # Read by `mlflow server` as --backend-store-uri. In the environment, a database
        # password stays out of the process list and out of stack.json, which records commands.
        MLFLOW_BACKEND_STORE_URI=settings.mlflow_backend_uri or f"sqlite:///{state_dir / 'mlflow.db'}",
    )
    if storage.is_remote(settings.mlflow_artifacts_destination or ""):
        # MLflow's S3 client reads its own variable; the generic one names the same store.
        endpoint = env.get("MLFLOW_S3_ENDPOINT_URL") or storage.endpoint()
        if endpoint:
            env["MLFLOW_S3_ENDPOINT_URL"] = endpoint
    if auth.mlflow:
        # The admin is created on the first start only: the users live in the state dir after that.
        env["MLFLOW_AUTH_ADMIN_USERNAME"] = auth.mlflow_username or ""
        env["MLFLOW_AUTH_ADMIN_PASSWORD"] = auth.mlflow_password or ""
        env[AUTH_DATABASE_ENV] = f"sqlite:///{state_dir / 'mlflow-auth.db'}"
        # Only signs the UI's sign-up form (CSRF): a new key per start costs nothing.
        env.setdefault("MLFLOW_FLASK_SERVER_SECRET_KEY", secrets.token_hex(32))
    return env


def _worker_command(settings: StackSettings) -> list[str]:
    return [
        str(venv_bin() / "prefect"),
        "worker",
        "start",
        "--pool",
        settings.work_pool,
        "--type",
        "process",
        "--name",
        f"{settings.work_pool}-local",
    ]


def _worker_env(settings: StackSettings, state_dir: Path, auth: StackAuth) -> dict[str, str]:
    """Flow runs inherit this: they find the servers, the code, a work folder and the credentials."""
    credentials = {
        "PREFECT_API_AUTH_STRING": auth.prefect_auth_string,
        "MLFLOW_TRACKING_USERNAME": auth.mlflow_username,
        "MLFLOW_TRACKING_PASSWORD": auth.mlflow_password,
    }
    return base_env(
        **{key: value for key, value in credentials.items() if value},
        PREFECT_HOME=str(state_dir / "prefect"),
        PREFECT_API_URL=settings.prefect_api_url,
        MLFLOW_TRACKING_URI=settings.mlflow_url,
        WD_PROJECT_ROOT=str(PROJECT_ROOT),
        WD_PIPELINE_WORK_DIR=settings.work_dir or str(state_dir / "work"),
        TF_CPP_MIN_LOG_LEVEL="2",
    )


# ---------------------------------------------------------------- health


def _health_checks(state: StackState, prefect_auth_string: str | None = None) -> dict[str, Callable[[], bool]]:
    """Per service: its HTTP health endpoint; for the worker, being online in its pool.

    Both health endpoints answer without credentials; the worker query needs the Prefect one.
    """
    return {
        PREFECT_SERVER: lambda: _http_ok(f"{state.prefect_api_url}/health"),
        MLFLOW_SERVER: lambda: _http_ok(f"{state.mlflow_url}/health"),
        PREFECT_WORKER: lambda: worker_online(state.prefect_api_url, state.work_pool, prefect_auth_string),
    }


def _http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ValueError):
        return False


def worker_online(prefect_api_url: str, work_pool: str, auth_string: str | None = None) -> bool:
    """True once a worker of ``work_pool`` has sent a heartbeat (the pool exists then too)."""
    request = urllib.request.Request(
        f"{prefect_api_url}/work_pools/{work_pool}/workers/filter",
        data=b"{}",
        headers={"Content-Type": "application/json", **prefect_auth_header(auth_string)},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=2.0) as response:
            workers = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return False
    return any(w.get("status") == "ONLINE" for w in workers)


def prefect_auth_header(auth_string: str | None = None) -> dict[str, str]:
    """The Basic header Prefect's clients send for ``PREFECT_API_AUTH_STRING`` (none when unset)."""
    auth_string = auth_string if auth_string is not None else os.environ.get("PREFECT_API_AUTH_STRING")
    if not auth_string:
        return {}
    return {"Authorization": f"Basic {base64.b64encode(auth_string.encode()).decode()}"}


def ensure_port_free(port: int, service: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As the servers themselves do: connections of a just-stopped server lingering in
        # TIME_WAIT do not block a restart on its port; a listening socket still does.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError:
            raise PortInUseError(
                f"port {port} on {HOST} (for the {service}) is in use: stop what holds it "
                f"(`ss -ltnp 'sport = :{port}'`) or pick another port with a flag"
            ) from None


def free_port() -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


# ---------------------------------------------------------------- processes


def _start(state: StackState, state_dir: Path, name: str, spec: ServiceSpec) -> ServiceRecord:
    """Launch the service's command in a new session and record it at once, so ``down`` can always find it."""

    log_path = state_dir / "logs" / f"{name}.log"
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            spec.command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=spec.env,
            cwd=PROJECT_ROOT,
            start_new_session=True,
        )
    started = processes.start_ticks(process.pid) or 0
    record = ServiceRecord(name, process.pid, started, spec.url, str(log_path), spec.command, time.time())
    state.services.append(record)
    state.save(state_dir)
    return record


def _wait(record: ServiceRecord, healthy: Callable[[], bool], timeout: float, echo: Callable[[str], None]) -> None:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if healthy():
            echo(f"{record.name:<15} healthy {time.time() - record.started_at:5.1f} s after start   {record.url}")
            return
        if not _is_same_process(record):
            raise ServiceStartError(
                f"{record.name} exited during start-up; last log lines from {record.log}:\n{_tail(record.log)}"
            )
        time.sleep(0.5)
    raise ServiceStartError(
        f"{record.name} did not become healthy within {timeout:.0f} s: see {record.log} "
        f"(or raise --timeout on a slow machine)\n{_tail(record.log)}"
    )


def _stop_records(records: Iterable[ServiceRecord]) -> None:
    """SIGTERM each service's process groups (its own and its descendants'), then SIGKILL leftovers."""
    for record in records:
        if not _is_same_process(record):
            continue
        # Prefect starts each flow run in a session of its own: signalling the worker's group
        # alone would orphan a running flow.
        groups = processes.process_groups([record.pid, *processes.descendants(record.pid)])
        processes.stop_groups(groups, leader=record.pid, grace=STOP_GRACE_SECONDS, poll=0.2)


def _is_same_process(record: ServiceRecord) -> bool:
    return processes.same_process(record.pid, record.start_ticks or None)


def _refuse_if_running(state_dir: Path) -> None:
    try:
        state = StackState.load(state_dir)
    except StackNotRunningError:
        return
    if any(_is_same_process(record) for record in state.services):
        raise ServiceStartError(
            f"a stack is already running from {state_dir}/ (Prefect {state.prefect_api_url}, MLflow "
            f"{state.mlflow_url}): use it, or stop it with `wd-pipeline stack down --state-dir {state_dir}`"
        )


def _tail(path: str, lines: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
