"""infra/: the deployments file and the production compose stack, checked without servers."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from flows.summary import summary_markdown
from wd_pipeline.tracking import model_version_url

INFRA = Path(__file__).resolve().parents[2] / "infra"
ROOT = INFRA.parent
SECRET_KEYS = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|_USER$")


def deployments() -> dict[str, dict]:
    document = yaml.safe_load((INFRA / "prefect.yaml").read_text())
    return {d["name"]: d for d in document["deployments"]}


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
    nightly, adhoc = deployments()["nightly"], deployments()["adhoc"]
    assert nightly["schedules"] == [{"cron": "0 2 * * *", "timezone": "Europe/Berlin", "active": True}]
    assert adhoc["schedules"] == []


def compose() -> dict:
    return yaml.safe_load((INFRA / "docker-compose.yml").read_text())


def test_compose_has_the_production_services() -> None:
    services = compose()["services"]
    assert {"postgres", "minio", "prefect-server", "mlflow", "worker"} <= set(services)
    mlflow = " ".join(services["mlflow"]["command"])
    assert "postgresql+psycopg2://" in mlflow and "--artifacts-destination=s3://" in mlflow
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


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="Debian's docker-compose is not installed")
def test_docker_compose_config_validates_and_demands_the_secrets(tmp_path: Path) -> None:
    base = ["docker-compose", "--project-directory", str(INFRA), "-f", str(INFRA / "docker-compose.yml")]
    clean_env = {"PATH": os.environ["PATH"]}  # no credential may leak in from the caller
    ok = subprocess.run([*base, "--env-file", str(INFRA / ".env.example"), "config", "-q"], capture_output=True, text=True, env=clean_env)
    assert ok.returncode == 0, ok.stderr
    (tmp_path / "empty.env").write_text("")
    missing = subprocess.run([*base, "--env-file", str(tmp_path / "empty.env"), "config", "-q"], capture_output=True, text=True, env=clean_env)
    assert missing.returncode != 0 and "set POSTGRES_USER" in missing.stderr


SUMMARY = {
    "chosen_mode": "l2", "chosen_lambda": 1e-3, "rule": "one-se", "per_mode": {"l2": 1e-3}, "selection_metric": "log_loss", "test_metrics": {"accuracy": 0.97},
    "run_url": "…", "registry": {"model_name": "wd-classifier", "version": "4", "alias": "champion", "reason": "first", "model_uri": "models:/m-1"},
}


def test_summary_links_the_model_version_page_on_a_tracking_server() -> None:
    text = summary_markdown({**SUMMARY, "tracking_uri": "http://127.0.0.1:5000/"})
    assert "[wd-classifier v4](http://127.0.0.1:5000/#/models/wd-classifier/versions/4)" in text


def test_summary_has_no_ui_link_for_a_local_store() -> None:
    assert model_version_url("sqlite:///mlflow.db", "m", 1) is None
    assert "#/models" not in summary_markdown({**SUMMARY, "tracking_uri": "sqlite:///x.db"})
