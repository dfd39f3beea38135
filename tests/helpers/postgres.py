"""Debian's PostgreSQL, started for the tests: ``initdb`` and ``pg_ctl`` into a temporary folder.

The server listens on a free port of 127.0.0.1 and on a socket in its own folder, and is set
up as the compose service's image sets up its own: the user and password the URLs carry
(password checked on TCP, trusted on the socket) and the databases made by the very script
compose runs on first start, ``infra/postgres/create-databases.sh``.

PostgreSQL refuses to run as root. Run as root (CI containers are), initdb and the server
run as the ``postgres`` system user that Debian's package creates, in a folder outside
pytest's temporary tree (root's ``/tmp/pytest-of-root`` is closed to other users).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wd_pipeline.ops import stack

ROOT = Path(__file__).resolve().parents[2]
CREATE_DATABASES = ROOT / "infra" / "postgres" / "create-databases.sh"
DEBIAN_BINARIES = Path("/usr/lib/postgresql")
SYSTEM_USER = "postgres"  # made by Debian's postgresql-common, owns the server when we are root
USER = "wd"
PREFECT_DATABASE = "prefect"
MLFLOW_DATABASE = "mlflow"
# Durability is not what these tests are about: without fsync a test database on a busy disk
# costs no waiting. Everything else (SQL, locks, transactions) is the server as shipped.
SERVER_OPTIONS = ("-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off")
NOT_INSTALLED = "Debian's PostgreSQL is not installed (apt-get install postgresql); .ci/run installs it"


def binaries() -> Path | None:
    """The newest ``/usr/lib/postgresql/<major>/bin`` with initdb (Debian keeps it off PATH), else PATH's."""
    found = sorted(DEBIAN_BINARIES.glob("*/bin/initdb"), key=lambda path: int(path.parts[-3]))
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def installed_major() -> int | None:
    """The major version of the PostgreSQL the tests start, from ``pg_ctl --version``."""
    folder = binaries()
    if folder is None:
        return None
    out = subprocess.run([str(folder / "pg_ctl"), "--version"], capture_output=True, text=True, check=True).stdout
    return int(out.split()[-1].split(".")[0])  # "pg_ctl (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"


@dataclass(frozen=True)
class Postgres:
    """A running server: where it listens, who may log in, and the URLs each server gets."""

    folder: Path
    port: int
    password: str
    user: str = USER
    host: str = stack.HOST

    @property
    def socket_dir(self) -> Path:
        return self.folder / "socket"

    def url(self, database: str, driver: str = "psycopg2", password: str | None = None) -> str:
        """The SQLAlchemy URL of ``database`` with ``driver`` (asyncpg for Prefect, psycopg2 for MLflow)."""
        secret = self.password if password is None else password
        return f"postgresql+{driver}://{self.user}:{secret}@{self.host}:{self.port}/{database}"

    def prefect_url(self, password: str | None = None) -> str:
        """What the Prefect server is given, as compose gives it: asyncpg, database ``prefect``."""
        return self.url(PREFECT_DATABASE, "asyncpg", password)

    def mlflow_url(self, password: str | None = None) -> str:
        """What the MLflow server is given, as compose gives it: psycopg2, database ``mlflow``."""
        return self.url(MLFLOW_DATABASE, "psycopg2", password)

    def query(self, database: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Rows of one read-only query, over TCP with the password, as a server connects."""
        import psycopg2

        connection = psycopg2.connect(
            host=self.host, port=self.port, user=self.user, password=self.password, dbname=database
        )
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql, params)
                return cursor.fetchall()
        finally:
            connection.close()

    def create_database(self, name: str) -> None:
        """One more empty database, for a test that needs its own beside the compose ones."""
        self.psql("-c", f'CREATE DATABASE "{name}"')

    def psql(self, *args: str) -> str:
        command = ["psql", "-v", "ON_ERROR_STOP=1", "--dbname", "postgres", *args]
        return subprocess.run(command, env=self.client_env(), capture_output=True, text=True, check=True).stdout

    def client_env(self) -> dict[str, str]:
        """The variables psql and the compose init script read: the socket, the port, the user."""
        folder = binaries()
        return {
            **os.environ,
            "PATH": f"{folder}{os.pathsep}{os.environ.get('PATH', '')}",
            "PGHOST": str(self.socket_dir),
            "PGPORT": str(self.port),
            "PGUSER": self.user,
            "POSTGRES_USER": self.user,
        }


def _as_server_user() -> dict[str, Any]:
    """Popen arguments that drop root to the ``postgres`` user; nothing when not root."""
    if os.geteuid() != 0:
        return {}
    import pwd

    try:
        account = pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        raise RuntimeError(
            f"PostgreSQL will not run as root and there is no {SYSTEM_USER!r} user to run it as: "
            "install Debian's postgresql package (it creates the user) or run the tests unprivileged"
        ) from None
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


def _run(command: list[str], folder: Path) -> None:
    result = subprocess.run(command, cwd=folder, capture_output=True, text=True, check=False, **_as_server_user())
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}{result.stderr}")


@contextlib.contextmanager
def running_postgres() -> Iterator[Postgres]:
    """initdb, pg_ctl start, the compose databases; pg_ctl stop and the folder removed after."""
    bin_dir = binaries()
    if bin_dir is None:
        raise RuntimeError(NOT_INSTALLED)
    # Short (a socket path must fit in 107 bytes) and reachable by the server's user.
    folder = Path(tempfile.mkdtemp(prefix="wd-pg-", dir="/tmp"))
    server = Postgres(folder=folder, port=stack.free_port(), password=secrets.token_urlsafe(16))
    data = folder / "data"
    try:
        server.socket_dir.mkdir()
        password_file = folder / "password"
        password_file.write_text(server.password + "\n")
        password_file.chmod(0o600)
        owner = _as_server_user()
        if owner:
            for path in (folder, server.socket_dir, password_file):
                os.chown(path, owner["user"], owner["group"])
        _run(
            [
                str(bin_dir / "initdb"),
                "--pgdata",
                str(data),
                "--username",
                server.user,
                "--pwfile",
                str(password_file),
                "--auth-local",
                "trust",
                "--auth-host",
                "scram-sha-256",
                "--encoding",
                "UTF8",
                "--locale",
                "C",
                "--no-sync",
            ],
            folder,
        )
        password_file.unlink()
        options = [
            "-c",
            f"port={server.port}",
            "-c",
            f"listen_addresses={server.host}",
            "-c",
            f"unix_socket_directories={server.socket_dir}",
            *SERVER_OPTIONS,
        ]
        log = folder / "server.log"
        _run(
            [
                str(bin_dir / "pg_ctl"),
                "--pgdata",
                str(data),
                "--log",
                str(log),
                "--options",
                " ".join(options),
                "start",
            ],
            folder,
        )
        try:
            created = subprocess.run(
                ["sh", str(CREATE_DATABASES)], env=server.client_env(), capture_output=True, text=True
            )
            if created.returncode != 0:
                raise RuntimeError(f"{CREATE_DATABASES} failed ({created.returncode}):\n{created.stderr}")
            yield server
        finally:
            _run([str(bin_dir / "pg_ctl"), "--pgdata", str(data), "--mode", "fast", "stop"], folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
