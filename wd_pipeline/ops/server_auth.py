"""Start ``mlflow server`` behind MLflow's basic-auth app, configured only from the environment.

MLflow takes the admin user from ``MLFLOW_AUTH_ADMIN_USERNAME`` / ``MLFLOW_AUTH_ADMIN_PASSWORD``
and the CSRF key from ``MLFLOW_FLASK_SERVER_SECRET_KEY``, but the database of users only from
an ini file (``MLFLOW_AUTH_CONFIG_PATH``). In production that database URI carries the
PostgreSQL password, so the file can be neither committed nor baked into the image: this
entry point writes it at start, into a private folder, from ``WD_MLFLOW_AUTH_DATABASE_URI``,
then replaces itself with ``mlflow server --app-name basic-auth <arguments>``.

    python -m wd_pipeline.ops.server_auth --host 127.0.0.1 --port 5000 ...

The compose service, ``wd-pipeline stack up`` (when ``MLFLOW_TRACKING_USERNAME`` and
``MLFLOW_TRACKING_PASSWORD`` are set) and the tests all start the server through here.
Prefect needs no file: its server checks ``PREFECT_SERVER_API_AUTH_STRING`` itself.
Standard library only, so the stack can use it without importing MLflow.
"""

from __future__ import annotations

import configparser
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from wd_pipeline.errors import ConfigError

AUTH_DATABASE_ENV = "WD_MLFLOW_AUTH_DATABASE_URI"
REQUIRED_ENV = (
    "MLFLOW_AUTH_ADMIN_USERNAME",
    "MLFLOW_AUTH_ADMIN_PASSWORD",
    "MLFLOW_FLASK_SERVER_SECRET_KEY",
    AUTH_DATABASE_ENV,
)
CONFIG_FILE = "basic_auth.ini"
# What a user other than the admin may do with resources they did not create.
DEFAULT_PERMISSION = "READ"
# Each request's password check is a deliberately slow PBKDF2 hash: about 0.2-0.8 s of a
# core, per request, on the development machines. A pipeline run makes hundreds of requests,
# so successful checks are cached per server worker; the price is that a changed password
# or deleted user is still accepted for up to this long.
AUTH_CACHE_SECONDS = 60


def write_auth_config(
    folder: Path,
    database_uri: str,
    default_permission: str = DEFAULT_PERMISSION,
    cache_seconds: int = AUTH_CACHE_SECONDS,
) -> Path:
    """Write the basic-auth ini (owner-readable only) into ``folder``; returns its path.

    No admin password goes into the file: MLflow reads it from the environment.
    """
    config = configparser.ConfigParser()
    # MLflow reads the file with interpolation on: a '%' in a database password must be doubled.
    config["mlflow"] = {
        "default_permission": default_permission,
        "database_uri": database_uri.replace("%", "%%"),
        "auth_cache_ttl_seconds": str(cache_seconds),
    }
    path = folder / CONFIG_FILE
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        config.write(handle)
    return path


def server_env(env: Mapping[str, str], folder: Path) -> dict[str, str]:
    """``env`` plus ``MLFLOW_AUTH_CONFIG_PATH`` of a freshly written ini; refuses missing settings."""
    missing = [name for name in REQUIRED_ENV if not env.get(name)]
    if missing:
        raise ConfigError(
            f"MLflow basic auth needs {', '.join(missing)} in the environment: set them "
            "(infra/.env for docker compose) and start again"
        )
    path = write_auth_config(folder, env[AUTH_DATABASE_ENV])
    return {**env, "MLFLOW_AUTH_CONFIG_PATH": str(path)}


def main(argv: Sequence[str] | None = None) -> int:
    """Write the ini, then exec ``mlflow server --app-name basic-auth`` with the given arguments."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        env = server_env(os.environ, Path(tempfile.mkdtemp(prefix="mlflow-auth-")))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    mlflow = Path(sys.executable).with_name("mlflow")
    os.execve(mlflow, [str(mlflow), "server", "--app-name", "basic-auth", *arguments], env)
    return 1  # not reached: execve replaces this process


if __name__ == "__main__":
    raise SystemExit(main())
