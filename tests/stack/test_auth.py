"""Both servers behind authentication, as real processes: refused without credentials, the pipeline works with them.

The stack is started by `stack.up` with credentials, so MLflow runs through
``python -m wd_pipeline.ops.server_auth`` exactly as the compose service does, and the Prefect
server with ``PREFECT_SERVER_API_AUTH_STRING`` as in compose.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.local_stack import ADHOC, TINY
from tests.helpers.templates import seed_stack_folder
from wd_pipeline import processes
from wd_pipeline.config import DEFAULT_MODEL_NAME
from wd_pipeline.errors import TrackingError
from wd_pipeline.ops import stack
from wd_pipeline.ops.deploy import deploy
from wd_pipeline.tracking import runs

pytestmark = [pytest.mark.slow, pytest.mark.stack]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
WRONG = stack.prefect_auth_header("wd:wrong-password")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass(frozen=True)
class SecuredStack:
    state: stack.StackState
    auth: stack.StackAuth
    state_dir: Path
    env: dict[str, str]  # what a client needs: URLs and credentials


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredStack]:
    auth = stack.StackAuth(f"wd:{secrets.token_urlsafe(16)}", "wd-admin", secrets.token_urlsafe(16))
    state_dir = seed_stack_folder(tmp_path_factory.mktemp("secured"))
    settings = stack.StackSettings(
        state_dir=state_dir, prefect_port=stack.free_port(), mlflow_port=stack.free_port(), timeout=180, auth=auth
    )
    state = stack.up(settings)
    client_env = {
        **state.exports(),
        "PREFECT_API_AUTH_STRING": auth.prefect_auth_string or "",
        "MLFLOW_TRACKING_USERNAME": auth.mlflow_username or "",
        "MLFLOW_TRACKING_PASSWORD": auth.mlflow_password or "",
    }
    patch = pytest.MonkeyPatch()
    try:
        for key, value in client_env.items():
            patch.setenv(key, value)
        yield SecuredStack(state, auth, state_dir, stack.base_env(**client_env))
    finally:
        patch.undo()
        recorded = stack.down(state_dir)
        alive = [r.name for r in recorded if processes.alive(r.pid)]
        assert not alive, f"still running after stack down: {alive}"


def http_status(url: str, headers: dict[str, str] | None = None, body: bytes | None = None) -> int:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def basic(user: str, password: str) -> dict[str, str]:
    return stack.prefect_auth_header(f"{user}:{password}")


def test_prefect_api_answers_only_with_the_auth_string(secured: SecuredStack) -> None:
    api = secured.state.prefect_api_url
    assert http_status(f"{api}/health") == 200  # probes stay open
    assert http_status(f"{api}/flows/filter", body=b"{}") == 401
    assert http_status(f"{api}/flows/filter", WRONG, b"{}") == 401
    assert http_status(f"{api}/flows/filter", stack.prefect_auth_header(secured.auth.prefect_auth_string), b"{}") == 200


def test_mlflow_answers_only_with_credentials(secured: SecuredStack) -> None:
    url, auth = secured.state.mlflow_url, secured.auth
    search = f"{url}/api/2.0/mlflow/experiments/search?max_results=1"
    assert http_status(f"{url}/health") == 200
    assert http_status(search) == 401
    assert http_status(search, basic(auth.mlflow_username or "", "wrong-password-123")) == 401
    assert http_status(search, basic(auth.mlflow_username or "", auth.mlflow_password or "")) == 200


def test_the_auth_ini_holds_no_password_and_only_its_owner_reads_it(secured: SecuredStack) -> None:
    mlflow = next(record for record in secured.state.services if record.name == "mlflow-server")
    environ = dict(
        item.split("=", 1) for item in Path(f"/proc/{mlflow.pid}/environ").read_text().split("\0") if "=" in item
    )
    ini = Path(environ["MLFLOW_AUTH_CONFIG_PATH"])
    assert ini.stat().st_mode & 0o077 == 0
    text = ini.read_text()
    assert f"sqlite:///{secured.state_dir.resolve() / 'mlflow-auth.db'}" in text
    assert secured.auth.mlflow_password not in text
    assert mlflow.command[1:3] == ["-m", "wd_pipeline.ops.server_auth"]


def test_tracking_and_registry_work_with_credentials_and_say_what_is_missing_without(
    secured: SecuredStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = runs.get_client()
    experiment_id = runs.ensure_experiment(client, "auth-probe")
    client.create_registered_model("auth-probe-model")
    assert client.get_registered_model("auth-probe-model").name == "auth-probe-model"

    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME")
    with pytest.raises(TrackingError) as refused:
        runs.ensure_experiment(runs.get_client(), "auth-probe")
    assert str(refused.value) == (
        f"the MLflow tracking server at {secured.state.mlflow_url} refused the request (HTTP 401, not authenticated): "
        "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to a user of that server"
    )
    assert experiment_id


def test_a_deployed_run_completes_through_the_worker_and_registers_the_champion(secured: SecuredStack) -> None:
    """The worker and the flow-run process it starts log in to both servers with inherited credentials."""
    deploy(secured.state_dir, names=[ADHOC])
    run = subprocess.run(
        [
            "prefect",
            "deployment",
            "run",
            ADHOC,
            "-p",
            f"grid={json.dumps(TINY['grid'])}",
            "-p",
            f"epochs={TINY['epochs']}",
            "-p",
            "folds=1",
            "--watch",
            "--watch-interval",
            "2",
            "--watch-timeout",
            "600",
        ],
        env=secured.env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=660,
    )
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    flow_run_id = UUID.search(run.stdout).group(0)
    request = urllib.request.Request(
        f"{secured.state.prefect_api_url}/flow_runs/{flow_run_id}",
        headers=stack.prefect_auth_header(secured.auth.prefect_auth_string),
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert json.loads(response.read())["state_type"] == "COMPLETED"
    champion = runs.get_client().get_model_version_by_alias(DEFAULT_MODEL_NAME, "champion")
    assert champion.tags["gate.alias"] == "champion"


def test_the_cli_without_the_prefect_auth_string_says_what_to_set(secured: SecuredStack, tmp_path: Path) -> None:
    env = {key: value for key, value in secured.env.items() if key != "PREFECT_API_AUTH_STRING"}
    env["WD_PIPELINE_WORK_DIR"] = str(tmp_path / "work")
    command = ["wd-pipeline", "score", "--data", "data/breast_cancer.csv", "--output", str(tmp_path / "out.parquet")]
    refused = subprocess.run(command, env=env, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 1
    assert (
        f"error: the Prefect server at {secured.state.prefect_api_url} refused the request (HTTP 401): "
        "set PREFECT_API_AUTH_STRING to the user:password it expects"
    ) in refused.stderr
    assert not (tmp_path / "out.parquet").exists()
