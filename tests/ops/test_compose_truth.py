"""infra/docker-compose.yml stays the truth: what the tests start matches it, service for service.

Read without Docker and without starting anything: the compose file (its variables filled
from ``infra/.env.example``) beside the commands and environments ``wd-pipeline stack up``
builds (``stack.service_specs``) for the PostgreSQL URLs the stack tests give it
(``tests/helpers/postgres.py``). Every way the two may differ is listed below with its
reason; any other difference fails, so a change to one side has to be made to the other
or be listed here.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from sqlalchemy.engine import make_url

from tests.helpers import postgres as test_postgres
from wd_pipeline.ops import stack

INFRA = Path(__file__).resolve().parents[2] / "infra"
# ${NAME}, ${NAME:?message}, ${NAME:-default}; $$ is a literal $.
VARIABLE = re.compile(r"\$\{(\w+)(?::([?-])([^}]*))?\}")

# Flags the container must set otherwise than a stack on one machine.
DIFFERENT_VALUES = {
    "prefect-server": {"--host": "the container listens on its network; the local stack on 127.0.0.1 only"},
    "mlflow": {
        "--host": "the container listens on its network; the local stack on 127.0.0.1 only",
        "--workers": "two for production; one keeps the local stack near 0.5 GB on two cores",
        "--artifacts-destination": "S3 in compose; a folder in the state dir locally (issue #15 item 2)",
    },
    "worker": {"--name": "a worker's name says where it runs"},
}
ONLY_IN_COMPOSE = {
    "mlflow": {"--allowed-hosts": "clients call the container by its service name, a Host MLflow must be told of"},
}
# Environment of the compose services that the local stack does not have (yet).
ENV_ONLY_IN_COMPOSE = {
    "mlflow": {
        "MLFLOW_S3_ENDPOINT_URL": "the S3 artifact store (issue #15 item 2)",
        "AWS_ACCESS_KEY_ID": "the S3 artifact store (issue #15 item 2)",
        "AWS_SECRET_ACCESS_KEY": "the S3 artifact store (issue #15 item 2)",
    },
}


def env_example() -> dict[str, str]:
    lines = (INFRA / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def resolved(text: str, values: dict[str, str]) -> str:
    """Compose's variable substitution, enough for this file."""

    def value(match: re.Match[str]) -> str:
        name, kind, default = match.groups()
        if name in values:
            return values[name]
        assert kind == "-", f"{name} is required by compose and missing from .env.example"
        return default

    return VARIABLE.sub(value, text).replace("$$", "$")


@pytest.fixture(scope="module")
def compose() -> dict:
    text = resolved((INFRA / "docker-compose.yml").read_text(), env_example())
    return yaml.safe_load(text)["services"]


@pytest.fixture(scope="module")
def database() -> test_postgres.Postgres:
    """The server the stack tests start, described without starting it."""
    return test_postgres.Postgres(folder=Path("/nonexistent"), port=5432, password="unused")


@pytest.fixture(scope="module")
def specs(database: test_postgres.Postgres) -> dict[str, stack.ServiceSpec]:
    """What `stack up` starts with the tests' PostgreSQL URLs, default ports and both servers' credentials."""
    settings = stack.StackSettings(
        prefect_database_url=database.prefect_url(),
        mlflow_backend_uri=database.mlflow_url(),
        auth=stack.StackAuth("admin:secret", "admin", "secret"),
    )
    return stack.service_specs(settings, Path("/state"))


def as_list(command: str | list[str]) -> list[str]:
    return shlex.split(command) if isinstance(command, str) else list(command)


def split_command(command: list[str]) -> tuple[list[str], dict[str, str | None]]:
    """The words before the first flag, and each flag with its value (None for a switch)."""
    first = next((i for i, word in enumerate(command) if word.startswith("--")), len(command))
    words, flags, rest = command[:first], {}, command[first:]
    i = 0
    while i < len(rest):
        flag, _, value = rest[i].partition("=")
        if value or "=" in rest[i]:
            flags[flag] = value
        elif i + 1 < len(rest) and not rest[i + 1].startswith("--"):
            flags[flag] = rest[i + 1]
            i += 1
        else:
            flags[flag] = None
        i += 1
    return words, flags


def program(words: list[str]) -> list[str]:
    """The command without its interpreter's path: ``prefect server start``, ``python -m module``."""
    name = Path(words[0]).name
    return ["python" if name.startswith("python") else name, *words[1:]]


def compare_commands(service: str, compose_command: list[str], stack_command: list[str]) -> None:
    compose_words, compose_flags = split_command(compose_command)
    stack_words, stack_flags = split_command(stack_command)
    assert program(compose_words) == program(stack_words), service
    only_compose = set(compose_flags) - set(stack_flags)
    assert only_compose == set(ONLY_IN_COMPOSE.get(service, {})), f"{service}: flags only in compose"
    assert set(stack_flags) - set(compose_flags) == set(), f"{service}: flags only in the local stack"
    differing = {flag for flag in stack_flags if stack_flags[flag] != compose_flags[flag]}
    assert differing == set(DIFFERENT_VALUES.get(service, {})), f"{service}: flag values"


def same_database(compose_url: str, stack_url: str) -> None:
    """Same dialect and driver, same database name; host and credentials are the deployment's."""
    ours, theirs = make_url(stack_url), make_url(compose_url)
    assert (ours.drivername, ours.database) == (theirs.drivername, theirs.database)


def test_postgresql_is_the_major_version_the_tests_run(compose: dict) -> None:
    major = test_postgres.installed_major()
    if major is None:
        pytest.skip(test_postgres.NOT_INSTALLED)
    image, tag = compose["postgres"]["image"].split(":")
    assert (image, int(tag.split("-")[0])) == ("postgres", major)


def test_the_tests_create_the_databases_with_the_compose_init_script(compose: dict) -> None:
    mounted = {
        INFRA / source.removeprefix("./")
        for source, _, target in (volume.partition(":") for volume in compose["postgres"]["volumes"])
        if target.startswith("/docker-entrypoint-initdb.d/")
    }
    assert mounted == {test_postgres.CREATE_DATABASES}
    created = re.search(r"for database in ([\w ]+);", test_postgres.CREATE_DATABASES.read_text()).group(1).split()
    named = [
        compose["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"],
        compose["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"],
        compose["mlflow"]["environment"]["WD_MLFLOW_AUTH_DATABASE_URI"],
    ]
    assert sorted(make_url(url).database for url in named) == sorted(created)
    assert {test_postgres.PREFECT_DATABASE, test_postgres.MLFLOW_DATABASE} <= set(created)


def test_prefect_server_matches(compose: dict, specs: dict[str, stack.ServiceSpec]) -> None:
    service, spec = compose["prefect-server"], specs[stack.PREFECT_SERVER]
    compare_commands("prefect-server", as_list(service["command"]), spec.command)
    env = service["environment"]
    same_database(env["PREFECT_API_DATABASE_CONNECTION_URL"], spec.env["PREFECT_API_DATABASE_CONNECTION_URL"])
    assert env["PREFECT_UI_API_URL"] == spec.env["PREFECT_UI_API_URL"]  # the default ports are compose's
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == spec.env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert "PREFECT_SERVER_API_AUTH_STRING" in spec.env


def test_mlflow_server_matches(compose: dict, specs: dict[str, stack.ServiceSpec]) -> None:
    service, spec = compose["mlflow"], specs[stack.MLFLOW_SERVER]
    compare_commands("mlflow", as_list(service["command"]), spec.command)
    env = service["environment"]
    same_database(env["MLFLOW_BACKEND_STORE_URI"], spec.env["MLFLOW_BACKEND_STORE_URI"])
    assert env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == spec.env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] == "false"
    missing = set(env) - set(spec.env)
    assert missing == set(ENV_ONLY_IN_COMPOSE["mlflow"]), "environment only in compose"
    # MLflow's users: PostgreSQL in compose, a SQLite file in the state dir locally.
    assert make_url(spec.env["WD_MLFLOW_AUTH_DATABASE_URI"]).get_backend_name() == "sqlite"


def test_worker_matches(compose: dict, specs: dict[str, stack.ServiceSpec]) -> None:
    service, spec = compose["worker"], specs[stack.PREFECT_WORKER]
    compare_commands("worker", as_list(service["command"]), spec.command)
    env = service["environment"]
    assert set(env) <= set(spec.env), "the worker's environment in compose has variables the local one lacks"
    for key in ("PREFECT_SERVER_ANALYTICS_ENABLED", "TF_CPP_MIN_LOG_LEVEL"):
        assert env[key] == spec.env[key], key


def test_the_comparison_sees_a_difference(specs: dict[str, stack.ServiceSpec]) -> None:
    """A flag set otherwise, or present on one side only, fails unless it is listed above."""
    command = specs[stack.PREFECT_WORKER].command
    other_type = [word if word != "process" else "thread" for word in command]
    with pytest.raises(AssertionError, match="flag values"):
        compare_commands("worker", other_type, command)
    with pytest.raises(AssertionError, match="flags only in compose"):
        compare_commands("worker", [*command, "--limit", "1"], command)
    with pytest.raises(AssertionError, match="flags only in the local stack"):
        compare_commands("worker", command, [*command, "--limit", "1"])
