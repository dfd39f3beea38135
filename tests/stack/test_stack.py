"""The pipeline deployed on a local Prefect server, recorded on an MLflow server, served, browsed."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlparse

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from tests.helpers.local_stack import ADHOC, NIGHTLY, TINY, LocalStack
from tests.helpers.model_server import invoke, served_model
from wd_pipeline.cli import main
from wd_pipeline.config import DEFAULT_EXPERIMENT, DEFAULT_MODEL_NAME

pytestmark = [pytest.mark.slow, pytest.mark.stack]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def read_flow_run(flow_run_id):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


def read_deployment(name: str):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_deployment_by_name(name)


@pytest.fixture(scope="module")
def two_runs(local_stack: LocalStack) -> list:
    """`adhoc` triggered once through the Python API and once through the CLI, both watched to the end;
    the second with ``reuse=never``, or it would return the first run's result instead of registering."""
    from prefect.deployments import run_deployment

    by_api = run_deployment(ADHOC, parameters=TINY, timeout=600, poll_interval=2)
    cli = subprocess.run(
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
            "reuse=never",
            "--watch",
            "--watch-interval",
            "2",
            "--watch-timeout",
            "600",
        ],
        env=local_stack.env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=660,
    )
    assert cli.returncode == 0, cli.stdout[-2000:] + cli.stderr[-2000:]
    by_cli = read_flow_run(UUID.search(cli.stdout).group(0))
    return [by_api, by_cli]


def test_stack_status_reports_every_service_healthy(local_stack: LocalStack, capsys) -> None:
    assert main(["stack", "status", "--state-dir", str(local_stack.state_dir)]) == 0
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines()] == ["prefect-server", "mlflow-server", "prefect-worker"]
    assert "NOT" not in out


def test_a_second_stack_up_on_the_same_state_dir_is_refused(local_stack: LocalStack, capsys) -> None:
    assert main(["stack", "up", "--state-dir", str(local_stack.state_dir)]) == 1
    assert "already running" in capsys.readouterr().err


def test_adhoc_runs_from_api_and_cli_complete(two_runs) -> None:
    assert [run.state.type.value for run in two_runs] == ["COMPLETED", "COMPLETED"]
    assert all(run.parameters["epochs"] == 3 for run in two_runs)


def test_mlflow_server_holds_experiment_child_runs_and_versions(two_runs, local_stack: LocalStack) -> None:
    client = MlflowClient(tracking_uri=local_stack.mlflow_url, registry_uri=local_stack.mlflow_url)
    experiment = client.get_experiment_by_name(DEFAULT_EXPERIMENT)
    parents = client.search_runs([experiment.experiment_id], "tags.`prefect.flow_run_id` != ''")
    # Other modules on the shared stack record in this experiment too: keep to these two runs.
    parents = [
        p
        for p in parents
        if "mlflow.parentRunId" not in p.data.tags
        and p.data.tags["prefect.flow_run_id"] in {str(r.id) for r in two_runs}
    ]
    assert sorted(p.data.tags["prefect.flow_run_id"] for p in parents) == sorted(str(r.id) for r in two_runs)
    for parent in parents:
        assert parent.info.status == "FINISHED"
        assert parent.data.tags["prefect.flow_run_url"].startswith(local_stack.prefect_ui)
        children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
        points = sorted(c.info.run_name for c in children if not c.info.run_name.startswith("refit "))
        assert points == ["l2 λ=0", "l2 λ=1e-02"]
        assert len(children) == len(points) + 1  # and the refit of the chosen point
        plots = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
        assert "plots/validation_curve.png" in plots  # proxied through the server's artifact store
    versions = client.search_model_versions(f"name = '{DEFAULT_MODEL_NAME}'")
    assert sorted(v.version for v in versions) == ["1", "2"]
    assert client.get_model_version_by_alias(DEFAULT_MODEL_NAME, "champion").version == "1"
    assert any((local_stack.state_dir / "mlartifacts").rglob("MLmodel"))


def test_summary_artifact_links_the_mlflow_model_version(two_runs, local_stack: LocalStack) -> None:
    from prefect.artifacts import Artifact

    summary = str(Artifact.get("pipeline-summary").data)
    assert f"{local_stack.mlflow_url}/#/models/{DEFAULT_MODEL_NAME}/versions/" in summary
    assert Artifact.get("grid-results") is not None


def test_nightly_has_its_cron_schedule_and_a_typed_form(local_stack: LocalStack) -> None:
    nightly = read_deployment(NIGHTLY)
    (schedule,) = nightly.schedules
    assert (schedule.schedule.cron, schedule.schedule.timezone, schedule.active) == ("0 2 * * *", "Europe/Berlin", True)
    assert not read_deployment(ADHOC).schedules
    properties = nightly.parameter_openapi_schema["properties"]
    assert properties["epochs"]["minimum"] == 1 and properties["grid"]["type"] == "array"


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"epochs": 0}, "Validation failed for field 'epochs'. Failure reason: 0 is less than the minimum of 1"),
        ({"grid": [-1.0]}, "Validation failed for field 'grid[0]'. Failure reason: -1.0 is less than the minimum of 0"),
    ],
)
def test_bad_parameters_are_refused_by_the_server_and_register_nothing(
    two_runs, local_stack: LocalStack, parameters, message
) -> None:
    """The deployment enforces the flow's parameter schema: no run is created at all."""
    from prefect.deployments import run_deployment
    from prefect.exceptions import PrefectHTTPStatusError

    client = MlflowClient(tracking_uri=local_stack.mlflow_url, registry_uri=local_stack.mlflow_url)
    before = len(client.search_model_versions(f"name = '{DEFAULT_MODEL_NAME}'"))
    with pytest.raises(PrefectHTTPStatusError, match="409 Conflict") as refused:
        run_deployment(ADHOC, parameters={**TINY, **parameters}, timeout=300, poll_interval=2)
    assert message in str(refused.value)
    assert len(client.search_model_versions(f"name = '{DEFAULT_MODEL_NAME}'")) == before


def test_served_champion_predicts_probabilities(two_runs, local_stack: LocalStack, bundled: pd.DataFrame) -> None:
    rows = bundled.drop(columns="diagnosis").head(20)
    with served_model(
        f"models:/{DEFAULT_MODEL_NAME}@champion",
        env=local_stack.env,
        cwd=local_stack.state_dir,
        log=SCREENSHOTS / "mlflow-models-serve.log",
    ) as url:
        predictions = invoke(url, list(rows.columns), rows.values.tolist())
    probability = np.array([p["probability"] for p in predictions])
    assert probability.shape == (20,) and np.all((probability >= 0) & (probability <= 1))
    mlflow.set_tracking_uri(local_stack.mlflow_url)
    mlflow.set_registry_uri(local_stack.mlflow_url)
    champion = mlflow.pyfunc.load_model(f"models:/{DEFAULT_MODEL_NAME}@champion")
    np.testing.assert_allclose(probability, champion.predict(rows)["probability"], rtol=1e-5)


# ---------------------------------------------------------------- the UIs, in headless Chromium

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
SCREENSHOTS = PROJECT_ROOT / "test-artifacts"
DOCS_SCREENSHOTS = PROJECT_ROOT / "docs" / "screenshots"


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium); .ci/run installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


def show(browser, url: str, expected: list[str], screenshot: str) -> str:
    """Open ``url``, wait until every expected text is on the page, save a screenshot."""
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    try:
        page.goto(url, wait_until="domcontentloaded")
        deadline = time.monotonic() + 45
        text = ""
        while time.monotonic() < deadline:
            text = page.inner_text("body")
            if all(word.lower() in text.lower() for word in expected):
                break
            page.wait_for_timeout(500)
        _close_side_panels(page)
        page.wait_for_timeout(1000)  # let charts and tables finish drawing for the picture
        SCREENSHOTS.mkdir(exist_ok=True)
        page.screenshot(path=SCREENSHOTS / screenshot)
        if os.environ.get("WD_UPDATE_DOCS_SCREENSHOTS") == "1":
            DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            shutil.copy(SCREENSHOTS / screenshot, DOCS_SCREENSHOTS / screenshot)
    finally:
        page.close()
    missing = [word for word in expected if word.lower() not in text.lower()]
    assert not missing, f"{url}: {missing} not on the page; see {SCREENSHOTS / screenshot}"
    return text


def _close_side_panels(page) -> None:
    """Best effort, for a readable picture: MLflow 3.17 opens an assistant panel on every page."""
    panel_close = page.locator("button[aria-label='Close']").last
    try:
        if panel_close.is_visible():
            panel_close.click(timeout=2000)
    except Exception:  # a cosmetic step must not fail the test
        pass


# A title from each group of the form, in the order the form must show them.
FORM_GROUPS = ["Positive class", "Hidden units", "Regularisation modes", "Gate metric", "Work folder"]


def test_prefect_ui_shows_the_adhoc_parameter_form(two_runs, local_stack: LocalStack, browser) -> None:
    """Titles and descriptions, not parameter names, grouped data, model, grid, registry, execution."""
    adhoc = read_deployment(ADHOC)
    url = f"{local_stack.prefect_ui}/deployments/deployment/{adhoc.id}/run"
    expected = [*FORM_GROUPS, "λ grid", "training epochs per grid point", "binary target column"]
    text = show(browser, url, expected, "prefect-adhoc-run-form.png")
    positions = [text.index(title) for title in FORM_GROUPS]
    assert positions == sorted(positions), dict(zip(FORM_GROUPS, positions, strict=True))


def test_prefect_ui_shows_the_flow_runs(two_runs, local_stack: LocalStack, browser) -> None:
    show(browser, f"{local_stack.prefect_ui}/runs", [run.name for run in two_runs], "prefect-flow-runs.png")


def test_mlflow_ui_shows_runs_and_registered_model(two_runs, local_stack: LocalStack, browser) -> None:
    client = MlflowClient(tracking_uri=local_stack.mlflow_url)
    experiment = client.get_experiment_by_name(DEFAULT_EXPERIMENT)
    show(
        browser,
        f"{local_stack.mlflow_url}/#/experiments/{experiment.experiment_id}/runs",
        [run.name for run in two_runs],
        "mlflow-experiment-runs.png",
    )
    show(
        browser,
        f"{local_stack.mlflow_url}/#/models/{DEFAULT_MODEL_NAME}",
        [DEFAULT_MODEL_NAME, "Version 2"],
        "mlflow-registered-model.png",
    )


def _listening(port: int) -> set[str]:
    """Addresses with a socket in LISTEN state on ``port``, from the kernel's own tables."""

    found: set[str] = set()
    for table, width in (("tcp", 4), ("tcp6", 16)):
        path = Path("/proc/net") / table
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port:
                continue
            raw = bytes.fromhex(address)
            # The kernel prints each 32-bit word in host (little-endian) order.
            packed = b"".join(raw[i : i + 4][::-1] for i in range(0, width, 4))
            found.add(str(ipaddress.ip_address(packed)))
    return found


def test_every_server_listens_on_loopback_only(local_stack: LocalStack) -> None:
    """Exposure: nothing the stack starts is reachable from another host unless asked."""

    for url in (local_stack.prefect_api_url, local_stack.mlflow_url):
        addresses = _listening(urlparse(url).port)
        assert addresses, f"nothing listens for {url}"
        assert all(ipaddress.ip_address(a).is_loopback for a in addresses), (url, addresses)


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict]]]:
    """A local webhook that records the JSON bodies posted to it."""
    received: list[dict] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            received.append(json.loads(self.rfile.read(length) or b"{}"))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook", received
    finally:
        server.shutdown()
        server.server_close()


def read_automations(name: str) -> list:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_automations_by_name(name)


def automation_events(automation_id, name: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    wanted = EventFilter(
        event=EventNameFilter(name=[name]), resource=EventResourceFilter(id=[f"prefect.automation.{automation_id}"])
    )
    with get_client(sync_client=True) as client:
        return client.read_events(filter=wanted, limit=50).events


def test_a_failed_nightly_run_fires_the_alert_automation(local_stack: LocalStack, webhook, monkeypatch) -> None:
    """Deploy made the automation (event only without a URL); with a URL it posts the failed run to the webhook."""
    from prefect.deployments import run_deployment

    from flows.alerts import ALERT_URL_ENV, AUTOMATION_NAME
    from wd_pipeline.ops.deploy import install_nightly_alert

    (deployed,) = read_automations(AUTOMATION_NAME)
    assert [action.type for action in deployed.actions] == ["do-nothing"]

    url, received = webhook
    monkeypatch.setenv(ALERT_URL_ENV, url)
    install_nightly_alert(local_stack.prefect_api_url)  # a redeploy replaces it, never adds one
    (automation,) = read_automations(AUTOMATION_NAME)
    assert [action.type for action in automation.actions] == ["send-notification"]

    failed = run_deployment(
        NIGHTLY, parameters={**TINY, "data": "data/no-such-table.csv"}, timeout=300, poll_interval=2, _sync=True
    )
    assert failed.state.is_failed(), failed.state
    deadline = time.monotonic() + 120
    fired: list = []
    executed: list = []
    # The server records that the action ran only after the post went out: wait for all three.
    while time.monotonic() < deadline:
        fired = [
            event
            for event in automation_events(automation.id, "prefect.automation.triggered")
            if event.payload["triggering_event"]["resource"]["prefect.resource.id"] == f"prefect.flow-run.{failed.id}"
        ]
        executed = automation_events(automation.id, "prefect.automation.action.executed")
        if fired and received and executed:
            break
        time.sleep(2)
    assert fired, f"automation {AUTOMATION_NAME!r} did not fire for the failed run {failed.name}"
    assert any(failed.name in body.get("text", "") and "Failed" in body["text"] for body in received), received
    assert executed, "the server recorded no executed action of the automation"
