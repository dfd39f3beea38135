"""Connect once to a server's database before the server is started.

Given a wrong database URL or password, the servers fail late and loudly: Prefect's exits
after its start-up with a traceback, MLflow's retries for minutes until ``stack up`` gives
up. One connection made first, through SQLAlchemy with the driver the server itself will
use, turns each of these into one line that names the server, the URL (password hidden),
what went wrong and what to check.

SQLAlchemy and the drivers are imported only when a database URL is given; SQLite files
are not checked (the servers create them).
"""

from __future__ import annotations

import asyncio
import re
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from wd_pipeline.errors import ConfigError

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

PREFECT_DATABASE_FLAG = "--prefect-database-url"
MLFLOW_DATABASE_FLAG = "--mlflow-backend-uri"
# The only two Prefect 3's server accepts.
PREFECT_DRIVERS = ("postgresql+asyncpg", "sqlite+aiosqlite")
# Database servers reached over the network; anything else is left to the server to judge.
NETWORK_DIALECTS = ("postgresql", "mysql", "mssql")
# MLflow's SQL store is synchronous.
ASYNC_DRIVERS = ("asyncpg", "aiosqlite", "aiomysql", "asyncmy", "psycopg_async")
CONNECT_TIMEOUT_SECONDS = 10
# Per driver: how to bound the wait for an address that swallows packets.
TIMEOUT_ARGUMENT = {"psycopg2": "connect_timeout", "asyncpg": "timeout"}
# libpq's prefix before the reason: `connection to server at "h" (addr), port 5432 failed: FATAL:  `.
LIBPQ_PREFIX = re.compile(r"^connection to server (?:at|on) .*? failed: (?:FATAL:\s+)?")


@dataclass(frozen=True)
class DatabaseTarget:
    """A server's database as its user named it: which server, which URL, which flag gave it."""

    server: str
    url: str
    flag: str


def check_prefect_database(url: str) -> None:
    """Refuse a URL the Prefect server cannot use, in one line; PostgreSQL is connected to once."""
    target = DatabaseTarget("Prefect server", url, PREFECT_DATABASE_FLAG)
    parsed = _parse(target)
    if parsed.drivername not in PREFECT_DRIVERS:
        raise ConfigError(
            f"the Prefect server takes a postgresql+asyncpg:// (or sqlite+aiosqlite://) database URL, "
            f"not {parsed.drivername}://: correct {target.flag}"
        )
    _check(target, parsed)


def check_mlflow_database(url: str) -> None:
    """Refuse a database URL the MLflow server cannot use, in one line (network databases only)."""
    target = DatabaseTarget("MLflow server", url, MLFLOW_DATABASE_FLAG)
    parsed = _parse(target)
    if parsed.drivername.partition("+")[2] in ASYNC_DRIVERS:
        raise ConfigError(
            f"the MLflow server needs a synchronous database driver, not {parsed.drivername}://: "
            f"write e.g. postgresql+psycopg2:// in {target.flag}"
        )
    _check(target, parsed)


def _parse(target: DatabaseTarget) -> URL:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(target.url)
    except ArgumentError:
        # Not echoed: a URL that does not parse may still hold a password.
        raise ConfigError(
            f"{target.flag} for the {target.server} is not a database URL "
            "(dialect+driver://<user>:<password>@<host>:<port>/<database>): correct it"
        ) from None


def _check(target: DatabaseTarget, parsed: URL) -> None:
    if parsed.get_backend_name() not in NETWORK_DIALECTS:
        return
    try:
        _connect(parsed)
    except Exception as exc:  # the driver's own exceptions, whichever driver it is
        reason, hint = _explain(exc, parsed, target.flag)
        shown = parsed.render_as_string(hide_password=True)
        raise ConfigError(f"the {target.server} cannot use its database {shown}: {reason}; {hint}") from None


def _connect(parsed: URL) -> None:
    """One connection, opened and closed, through the dialect and driver the URL names."""
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool

    timeout = TIMEOUT_ARGUMENT.get(parsed.get_driver_name())
    connect_args: dict[str, Any] = {timeout: CONNECT_TIMEOUT_SECONDS} if timeout else {}
    if parsed.get_dialect().is_async:
        asyncio.run(_connect_async(parsed, connect_args))
        return
    engine = create_engine(parsed, poolclass=NullPool, connect_args=connect_args)
    try:
        with engine.connect():
            pass
    finally:
        engine.dispose()


async def _connect_async(parsed: URL, connect_args: dict[str, Any]) -> None:
    from sqlalchemy.ext.asyncio import create_async_engine
    from sqlalchemy.pool import NullPool

    engine = create_async_engine(parsed, poolclass=NullPool, connect_args=connect_args)
    try:
        async with engine.connect():
            pass
    finally:
        await engine.dispose()


def _explain(exc: BaseException, parsed: URL, flag: str) -> tuple[str, str]:
    """The reason in the same words whichever driver failed, and what the user should check."""
    cause = getattr(exc, "orig", None) or exc
    address = f"{parsed.host or 'localhost'}:{parsed.port or 5432}"
    text = LIBPQ_PREFIX.sub("", (str(cause).strip().splitlines() or [type(cause).__name__])[0]).strip()
    if isinstance(cause, ModuleNotFoundError):
        fix = "write postgresql+psycopg2:// (psycopg2 is installed)" if parsed.drivername == "postgresql" else ""
        return f"its driver is not installed ({text})", fix or f"install it or name an installed driver in {flag}"
    if isinstance(cause, ConnectionRefusedError) or "Connection refused" in text:
        return "connection refused", f"check that PostgreSQL runs at {address} and that {flag} names its host and port"
    if isinstance(cause, socket.gaierror) or "could not translate host name" in text:
        return f"unknown host {parsed.host}", f"correct the host in {flag}"
    if isinstance(cause, TimeoutError) or "timeout expired" in text:
        return (
            f"no answer within {CONNECT_TIMEOUT_SECONDS} s",
            f"check that PostgreSQL runs at {address} and that no firewall drops the connection",
        )
    if "password" in text or re.search(r'role ".*" does not exist', text):
        return text, f"check the user and password in {flag}"
    if re.search(r'database ".*" does not exist', text):
        return text, f"create it (as infra/postgres/create-databases.sh does) or correct its name in {flag}"
    return text, f"check {flag}"
