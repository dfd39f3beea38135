"""Empty MLflow and Prefect databases, migrated once per test session and copied where a test needs one.

Creating either SQLite database runs every schema migration the package ships, seconds of CPU
each time; the suite creates one for most pipeline runs, background APIs and stacks. A copy of
an empty database already at the latest schema opens at once: clients and servers find nothing
to migrate, and the test still gets an empty store of its own. A path that already holds a
database is left alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path

PREFECT_DATABASE = "prefect.db"  # Prefect's SQLite file in PREFECT_HOME, when no database URL is set


@cache
def _folder() -> Path:
    """Where the templates live: one folder for all test processes of a pytest-xdist run (its run id
    names it), so the four processes migrate once between them; a folder of its own otherwise."""
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if run is None:
        return Path(tempfile.mkdtemp(prefix="wd-db-templates-"))
    folder = Path(tempfile.gettempdir()) / f"wd-db-templates-{run}"
    folder.mkdir(exist_ok=True)
    return folder


@contextlib.contextmanager
def _made_once(template: Path) -> Iterator[Path | None]:
    """Yields a path to build ``template`` at, or None when another process has built it already.

    An exclusive lock serializes the processes; the builder's file is renamed into place only once
    complete, so a process that died part-way leaves nothing that looks like a template.
    """
    with open(template.with_name(template.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if template.exists():
            yield None
            return
        building = template.with_name(f"building-{os.getpid()}-{template.name}")
        yield building
        os.replace(building, template)


@cache
def mlflow_template() -> Path:
    """An MLflow tracking + registry database with its tables made (and the Default experiment)."""
    path = _folder() / "mlflow.db"
    with _made_once(path) as building:
        if building is not None:
            from mlflow import MlflowClient

            client = MlflowClient(tracking_uri=f"sqlite:///{building}", registry_uri=f"sqlite:///{building}")
            client.search_experiments()
            client.search_registered_models()
    return path


@cache
def prefect_template() -> Path:
    """A Prefect server database brought to the latest schema by Prefect's own CLI."""
    path = _folder() / PREFECT_DATABASE
    with _made_once(path) as building:
        if building is not None:
            env = {
                key: value
                for key, value in os.environ.items()
                if key not in {"PREFECT_API_URL", "PREFECT_API_DATABASE_CONNECTION_URL"}
            }
            home = building.with_suffix(".home")
            subprocess.run(
                [str(Path(sys.executable).with_name("prefect")), "server", "database", "upgrade", "-y"],
                env={**env, "PREFECT_HOME": str(home)},
                check=True,
                capture_output=True,
                timeout=300,
            )
            _copy(home / PREFECT_DATABASE, building)  # through SQLite: the database may still have a journal
            shutil.rmtree(home)
    return path


def _copy(template: Path, target: Path) -> None:
    """A consistent copy through SQLite's backup, whatever the template's journal holds."""
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    source, copy = sqlite3.connect(template), sqlite3.connect(target)
    try:
        source.backup(copy)
    finally:
        copy.close()
        source.close()


def seed_mlflow_store(database: Path) -> Path:
    """``database`` holds an empty, migrated MLflow store; returns it."""
    _copy(mlflow_template(), database)
    return database


def seed_prefect_home(home: Path) -> Path:
    """``home`` holds an empty, migrated Prefect database where Prefect looks by default; returns ``home``."""
    _copy(prefect_template(), home / PREFECT_DATABASE)
    return home


def seed_stack_folder(state_dir: Path) -> Path:
    """A stack's folder with empty, migrated SQLite databases where ``stack up`` puts them; returns it."""
    seed_mlflow_store(state_dir / "mlflow.db")
    seed_prefect_home(state_dir / "prefect")
    return state_dir
