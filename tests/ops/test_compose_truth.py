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
import subprocess
from pathlib import Path

import pytest
import yaml
from sqlalchemy.engine import make_url

from tests.helpers import postgres as test_postgres
from tests.helpers import s3 as test_s3
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
        "--artifacts-destination": "the deployment's bucket and prefix; s3:// on both sides (checked below)",
    },
    "worker": {"--name": "a worker's name says where it runs"},
}
ONLY_IN_COMPOSE = {
    "mlflow": {"--allowed-hosts": "clients call the container by its service name, a Host MLflow must be told of"},
}
# Environment of the compose services that the local stack does not have.
ENV_ONLY_IN_COMPOSE: dict[str, dict[str, str]] = {"mlflow": {}}
# SeaweedFS: flags the tests' server sets and compose does not, and flags both set otherwise.
S3_ONLY_IN_TESTS = {
    **{flag: "every port is a free one, chosen per session" for flag in test_s3.PORT_FLAGS},
    "-volume.max": "no volume count cap: the tests' data is small, the default cap reserves disk per volume",
    "-volume.preStopSeconds": "a stop in the outage test is immediate; a deployment drains for 10 s",
}
S3_DIFFERENT_VALUES = {
    "-dir": "a temporary folder; the seaweedfs-data volume in compose",
    "-ip": "127.0.0.1; the service name in compose",
    "-ip.bind": "loopback only; the container's network in compose",
    "-master.volumeSizeLimitMB": "64 MB volumes for test data; 1 GB in compose",
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
def store() -> test_s3.SeaweedS3:
    """The S3 server the tests start, described without starting it."""
    ports = {flag: 1 for flag in test_s3.PORT_FLAGS}
    return test_s3.SeaweedS3(folder=Path("/nonexistent"), ports=ports, access_key="key", secret_key="secret")


@pytest.fixture(scope="module")
def specs(database: test_postgres.Postgres, store: test_s3.SeaweedS3) -> dict[str, stack.ServiceSpec]:
    """What `stack up` starts with the tests' PostgreSQL URLs and S3 store, default ports and credentials."""
    settings = stack.StackSettings(
        prefect_database_url=database.prefect_url(),
        mlflow_backend_uri=database.mlflow_url(),
        mlflow_artifacts_destination=f"s3://{test_s3.BUCKET}/mlartifacts",
        work_dir=f"s3://{test_s3.BUCKET}/work",
        auth=stack.StackAuth("admin:secret", "admin", "secret"),
    )
    with pytest.MonkeyPatch.context() as patch:
        for key, value in store.env().items():
            patch.setenv(key, value)
        patch.delenv("MLFLOW_S3_ENDPOINT_URL")  # set by `stack up` from AWS_ENDPOINT_URL
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
    destination = dict(flag.split("=", 1) for flag in as_list(service["command"]) if "=" in flag)
    assert destination["--artifacts-destination"].startswith("s3://")
    assert spec.command[spec.command.index("--artifacts-destination") + 1].startswith("s3://")
    assert spec.env["MLFLOW_S3_ENDPOINT_URL"] == spec.env["AWS_ENDPOINT_URL"]
    # MLflow's users: PostgreSQL in compose, a SQLite file in the state dir locally.
    assert make_url(spec.env["WD_MLFLOW_AUTH_DATABASE_URI"]).get_backend_name() == "sqlite"


def test_worker_matches(compose: dict, specs: dict[str, stack.ServiceSpec]) -> None:
    service, spec = compose["worker"], specs[stack.PREFECT_WORKER]
    compare_commands("worker", as_list(service["command"]), spec.command)
    env = service["environment"]
    assert set(env) <= set(spec.env), "the worker's environment in compose has variables the local one lacks"
    for key in ("PREFECT_SERVER_ANALYTICS_ENABLED", "TF_CPP_MIN_LOG_LEVEL"):
        assert env[key] == spec.env[key], key
    # No shared disk: the work folder is in the S3 store on both sides.
    assert env["WD_PIPELINE_WORK_DIR"].startswith("s3://") and spec.env["WD_PIPELINE_WORK_DIR"].startswith("s3://")
    assert "volumes" not in service


def single_dash_flags(words: list[str]) -> dict[str, str]:
    return dict(word.split("=", 1) for word in words if word.startswith("-") and "=" in word)


def test_seaweedfs_matches(compose: dict, store: test_s3.SeaweedS3) -> None:
    """The tests run compose's start script with compose's flags, plus their own folder and ports."""
    service = compose["seaweedfs"]
    entrypoint, command = service["entrypoint"], as_list(service["command"])
    mounted = {
        target: INFRA / source.removeprefix("./")
        for source, _, target in (volume.rpartition(":")[0].partition(":") for volume in service["volumes"])
    }
    assert mounted[entrypoint[-1]] == test_s3.START_SCRIPT
    ours = store.command()
    assert Path(ours[1]) == test_s3.START_SCRIPT
    compose_flags, test_flags = single_dash_flags(command), single_dash_flags(ours[2:])
    assert set(compose_flags) - set(test_flags) == set(), "flags only in compose"
    assert set(test_flags) - set(compose_flags) == set(S3_ONLY_IN_TESTS), "flags only in the tests"
    differing = {flag for flag in compose_flags if compose_flags[flag] != test_flags[flag]}
    assert differing == set(S3_DIFFERENT_VALUES), "flag values"
    assert set(service["environment"]) <= set(store.server_env())


def test_seaweedfs_is_the_version_the_tests_run(compose: dict) -> None:
    binary = test_s3.weed_binary()
    if binary is None:
        pytest.skip(test_s3.NOT_INSTALLED)
    out = subprocess.run([str(binary), "version"], capture_output=True, text=True, check=True).stdout
    version = re.search(r"\b(\d+\.\d+)\b", out).group(1)  # "version 8000GB 4.48 pypi linux amd64"
    assert compose["seaweedfs"]["image"] == f"chrislusf/seaweedfs:{version}"


def test_buckets_are_made_by_the_same_script(compose: dict) -> None:
    service = compose["s3-buckets"]
    (mount,) = service["volumes"]
    source, target = mount.split(":")[:2]
    assert INFRA / source.removeprefix("./") == test_s3.CREATE_BUCKETS
    assert as_list(service["command"])[1] == target
    buckets = as_list(service["command"])[2:]
    work = compose["worker"]["environment"]["WD_PIPELINE_WORK_DIR"]
    assert work.removeprefix("s3://").split("/")[0] in buckets


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
