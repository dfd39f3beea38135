"""infra/: the deployments file and the production compose stack, checked without servers."""

from __future__ import annotations

import ast
import os
import re
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from flows.summary import summary_markdown
from tests.helpers.summaries import pipeline_summary
from wd_pipeline.ops.deploy import deployment_name
from wd_pipeline.tracking.runs import model_version_url

INFRA = Path(__file__).resolve().parents[2] / "infra"
ROOT = INFRA.parent
SECRET_KEYS = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|AUTH_STRING|_USER$|_USERNAME$")
# Credentials compose demands besides the database and object-store ones.
AUTH_SETTINGS = (
    "MLFLOW_ADMIN_USERNAME",
    "MLFLOW_ADMIN_PASSWORD",
    "MLFLOW_FLASK_SERVER_SECRET_KEY",
    "PREFECT_API_AUTH_STRING",
)


def deployments() -> dict[str, dict]:
    """The yaml's deployments by ``flow-name/deployment-name``: a bare name is shared by both flows' ``adhoc``."""
    document = yaml.safe_load((INFRA / "prefect.yaml").read_text())
    found = [deployment_name(d) for d in document["deployments"]]
    assert len(set(found)) == len(found), f"a deployment is declared twice: {found}"
    return {deployment_name(d): d for d in document["deployments"]}


def test_every_deployment_is_named_flow_slash_deployment_and_found_once() -> None:
    assert set(deployments()) == {"weight-decay-pipeline/nightly", "weight-decay-pipeline/adhoc", "score/adhoc"}
    for entry in yaml.safe_load((INFRA / "prefect.yaml").read_text())["deployments"]:
        path, function = entry["entrypoint"].split(":")
        flow_names = re.findall(r"@flow\(name=\"([\w-]+)\"[^)]*\)\s*\ndef (\w+)", (ROOT / path).read_text())
        assert (deployment_name(entry).split("/")[0], function) in flow_names


def test_deployments_run_the_pipeline_flow_from_the_project_root() -> None:
    document = yaml.safe_load((INFRA / "prefect.yaml").read_text())
    pull = document["pull"][0]["prefect.deployments.steps.set_working_directory"]
    assert pull["directory"] == "{{ $WD_PROJECT_ROOT }}"
    for deployment in deployments().values():
        path, function = deployment["entrypoint"].split(":")
        tree = ast.parse((ROOT / path).read_text())
        assert function in {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
        assert deployment["work_pool"]["name"] == "wd-process"
        assert deployment["enforce_parameter_schema"] is True


def test_nightly_has_a_cron_with_time_zone_and_adhoc_no_schedule() -> None:
    found = deployments()
    nightly = found["weight-decay-pipeline/nightly"]
    assert nightly["schedules"] == [{"cron": "0 2 * * *", "timezone": "Europe/Berlin", "active": True}]
    assert found["weight-decay-pipeline/adhoc"]["schedules"] == found["score/adhoc"]["schedules"] == []


def compose() -> dict:
    return yaml.safe_load((INFRA / "docker-compose.yml").read_text())


def test_compose_has_the_production_services() -> None:
    services = compose()["services"]
    assert {"postgres", "seaweedfs", "prefect-server", "mlflow", "worker"} <= set(services)
    mlflow = " ".join(services["mlflow"]["command"])
    assert "--artifacts-destination=s3://" in mlflow and "postgresql" not in mlflow  # its password stays out of `ps`
    assert services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
    assert "postgresql+asyncpg://" in services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    for service in services.values():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), port


def test_compose_takes_every_credential_from_the_environment() -> None:
    for name, service in compose()["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_KEYS.search(key) and key != "MLFLOW_BUCKET":
                assert re.fullmatch(r"\$\{\w+:\?[^}]*\}", str(value)), f"{name}.{key} = {value!r}"
    text = (INFRA / "docker-compose.yml").read_text()
    assert "change-me" not in text
    assert "infra/.env" in (ROOT / ".gitignore").read_text()


needs_compose = pytest.mark.skipif(
    shutil.which("docker-compose") is None, reason="Debian's docker-compose is not installed"
)


def compose_config(env_file: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """``docker-compose config`` with only ``env_file`` as the source of variables."""
    command = [
        "docker-compose",
        "--project-directory",
        str(INFRA),
        "-f",
        str(INFRA / "docker-compose.yml"),
        "--env-file",
        str(env_file),
        "config",
        *flags,
    ]
    clean_env = {"PATH": os.environ["PATH"]}  # no credential may leak in from the caller
    return subprocess.run(command, capture_output=True, text=True, env=clean_env, check=False)


def env_file_with(tmp_path: Path, **values: str) -> Path:
    """``.env.example`` with ``values`` replacing (or, when empty, dropping) its settings."""
    lines = [line for line in (INFRA / ".env.example").read_text().splitlines() if line.split("=")[0] not in values]
    path = tmp_path / "test.env"
    path.write_text("\n".join([*lines, *(f"{key}={value}" for key, value in values.items() if value)]) + "\n")
    return path


@needs_compose
def test_docker_compose_config_validates_and_demands_the_secrets(tmp_path: Path) -> None:
    ok = compose_config(INFRA / ".env.example", "-q")
    assert ok.returncode == 0, ok.stderr
    (tmp_path / "empty.env").write_text("")
    missing = compose_config(tmp_path / "empty.env", "-q")
    assert missing.returncode != 0 and "set POSTGRES_USER" in missing.stderr


@needs_compose
@pytest.mark.parametrize("name", AUTH_SETTINGS)
def test_compose_refuses_to_start_without_each_server_credential(tmp_path: Path, name: str) -> None:
    missing = compose_config(env_file_with(tmp_path, **{name: ""}), "-q")
    assert missing.returncode != 0
    assert f"set {name}" in missing.stderr


@needs_compose
def test_both_servers_demand_the_credentials_the_worker_sends(tmp_path: Path) -> None:
    values = {
        "MLFLOW_ADMIN_USERNAME": "ops",
        "MLFLOW_ADMIN_PASSWORD": secrets.token_urlsafe(18),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32),
        "PREFECT_API_AUTH_STRING": f"ops:{secrets.token_urlsafe(18)}",
    }
    resolved = compose_config(env_file_with(tmp_path, **values))
    assert resolved.returncode == 0, resolved.stderr
    services = yaml.safe_load(resolved.stdout)["services"]
    mlflow, prefect, worker = (services[name]["environment"] for name in ("mlflow", "prefect-server", "worker"))
    assert services["mlflow"]["command"][:3] == ["python", "-m", "wd_pipeline.ops.server_auth"]
    assert mlflow["MLFLOW_AUTH_ADMIN_USERNAME"] == worker["MLFLOW_TRACKING_USERNAME"] == "ops"
    assert mlflow["MLFLOW_AUTH_ADMIN_PASSWORD"] == worker["MLFLOW_TRACKING_PASSWORD"] == values["MLFLOW_ADMIN_PASSWORD"]
    assert mlflow["MLFLOW_FLASK_SERVER_SECRET_KEY"] == values["MLFLOW_FLASK_SERVER_SECRET_KEY"]
    assert mlflow["WD_MLFLOW_AUTH_DATABASE_URI"].endswith("@postgres:5432/mlflow_auth")
    assert (
        prefect["PREFECT_SERVER_API_AUTH_STRING"]
        == worker["PREFECT_API_AUTH_STRING"]
        == values["PREFECT_API_AUTH_STRING"]
    )
    assert services["deploy"]["environment"]["PREFECT_API_AUTH_STRING"] == values["PREFECT_API_AUTH_STRING"]
    assert "mlflow_auth" in (INFRA / "postgres" / "create-databases.sh").read_text()


# NAME=value / NAME: value for credential-like upper-case names, and user:password@ inside URLs.
SECRET_ASSIGNMENT = re.compile(
    r"(?<![\w${])[A-Z][A-Z0-9_]*(?:PASSWORD|SECRET|SECRET_KEY|AUTH_STRING|TOKEN|ACCESS_KEY)[A-Z0-9_]*[ \t]*[=:][ \t]*[\"']?([^\s\"',}]*)"
)
REFERENCE = ("$", "{", "<")  # ${VAR}, $VAR, {name}, <placeholder>
URL_CREDENTIALS = re.compile(r"://[\w.-]+:([\w.~%!*-]+)@")


def committed_secrets(name: str, text: str) -> list[str]:
    """Literal values given to credentials in ``text``: anything but a placeholder or a ``$`` reference."""
    found = []
    for pattern in (SECRET_ASSIGNMENT, URL_CREDENTIALS):
        for match in pattern.finditer(text):
            value = match.group(1)
            # In a user:password string only the password counts.
            password = value if value.startswith(REFERENCE) else value.split(":")[-1]
            if password and not password.startswith(REFERENCE) and "change-me" not in password:
                found.append(f"{name}: {match.group(0)}")
    return found


def test_committed_files_hold_no_secret() -> None:
    listing = ["git", "ls-files", "--cached", "--others", "--exclude-standard"]  # tracked or about to be
    tracked = subprocess.run(listing, cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    assert not [name for name in tracked if name.endswith((".env", ".ini", ".db")) or name.startswith(".wd-stack/")]
    found = []
    for name in tracked:
        path = ROOT / name
        if name == "uv.lock" or not path.is_file() or path.stat().st_size > 1_000_000:
            continue
        try:
            found += committed_secrets(name, path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            continue
    assert found == []
    # The check itself must see a real secret, placed as it might be.
    fake = secrets.token_urlsafe(12)
    assert committed_secrets("x", f"MLFLOW_ADMIN_PASSWORD={fake}") != []
    assert committed_secrets("x", f"PREFECT_API_AUTH_STRING: admin:{fake}") != []
    assert committed_secrets("x", f"uri: postgresql://wd:{fake.replace('-', '')}@db/mlflow") != []
    assert committed_secrets("x", "MLFLOW_ADMIN_PASSWORD=change-me-mlflow-admin-password") == []


def test_summary_links_the_model_version_page_on_a_tracking_server() -> None:
    text = summary_markdown(pipeline_summary(tracking_uri="http://127.0.0.1:5000/"))
    assert "[wd-classifier v4](http://127.0.0.1:5000/#/models/wd-classifier/versions/4)" in text


def test_summary_has_no_ui_link_for_a_local_store() -> None:
    assert model_version_url("sqlite:///mlflow.db", "m", 1) is None
    assert "#/models" not in summary_markdown(pipeline_summary(tracking_uri="sqlite:///x.db"))
