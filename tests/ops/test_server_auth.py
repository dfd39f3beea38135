"""The basic-auth ini written at start, and the refusals before anything starts (no server here)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from wd_pipeline.errors import ConfigError
from wd_pipeline.ops import server_auth
from wd_pipeline.ops.stack import StackAuth, prefect_auth_header

# '%' as URL-quoting leaves it in a password: MLflow's ini parser would take it for interpolation.
DATABASE = "postgresql+psycopg2://wd:change-me%40pass%word@postgres:5432/mlflow_auth"


def test_mlflow_reads_the_written_ini_back_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.server.auth.config import read_auth_config

    path = server_auth.write_auth_config(tmp_path, DATABASE)
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(path))
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_USERNAME", "ops")
    monkeypatch.setenv("MLFLOW_AUTH_ADMIN_PASSWORD", "from-the-environment")
    config = read_auth_config()
    assert config.database_uri == DATABASE
    assert (config.admin_username, config.admin_password) == ("ops", "from-the-environment")
    assert config.default_permission == "READ"
    assert config.auth_cache_ttl_seconds == server_auth.AUTH_CACHE_SECONDS == 60
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "admin_password" not in path.read_text()


def test_the_launcher_names_every_missing_setting(tmp_path: Path) -> None:
    env = {"MLFLOW_AUTH_ADMIN_USERNAME": "ops", server_auth.AUTH_DATABASE_ENV: DATABASE}
    with pytest.raises(ConfigError) as refused:
        server_auth.server_env(env, tmp_path)
    assert str(refused.value) == (
        "MLflow basic auth needs MLFLOW_AUTH_ADMIN_PASSWORD, MLFLOW_FLASK_SERVER_SECRET_KEY in the environment: "
        "set them (infra/.env for docker compose) and start again"
    )
    assert list(tmp_path.iterdir()) == []


def test_the_launcher_exits_2_with_the_message_and_starts_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in server_auth.REQUIRED_ENV:
        monkeypatch.delenv(name, raising=False)
    assert server_auth.main(["--port", "1"]) == 2
    assert capsys.readouterr().err.startswith("error: MLflow basic auth needs MLFLOW_AUTH_ADMIN_USERNAME, ")


def test_stack_auth_comes_from_the_client_variables() -> None:
    env = {
        "PREFECT_API_AUTH_STRING": "ops:pw",
        "MLFLOW_TRACKING_USERNAME": "ops",
        "MLFLOW_TRACKING_PASSWORD": "pw-long-enough",
    }
    assert StackAuth.from_env(env) == StackAuth("ops:pw", "ops", "pw-long-enough")
    assert StackAuth.from_env({}) == StackAuth()
    with pytest.raises(ConfigError, match="set both MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"):
        StackAuth.from_env({"MLFLOW_TRACKING_USERNAME": "ops"})
    assert prefect_auth_header("ops:pw") == {"Authorization": "Basic b3BzOnB3"}
