"""Deployments as a UI or API user triggers them, on one local stack deployed by `wd-pipeline deploy`.

- ``adhoc`` with only another table's ``data`` and ``label`` set (plus a small grid and names of its own) completes
  and registers a model: no default of the bundled data gets in the way.
- A nightly run that times out and one whose flow process is killed end ``TimedOut`` and
  ``Crashed``; the alert automation that deploy created fires for each and posts to a webhook.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from uuid import UUID

import psutil
import pytest
from mlflow import MlflowClient

from flows.alerts import ALERT_URL_ENV, AUTOMATION_NAME
from flows.timeouts import PIPELINE_CEILING_ENV
from tests.helpers.local_stack import ADHOC, NIGHTLY, TINY, LocalStack
from tests.helpers.registry_models import labelled_frame
from wd_pipeline import processes
from wd_pipeline.ops import stack
from wd_pipeline.ops.deploy import install_nightly_alert
from wd_pipeline.tracking.runs import PREFECT_RUN_TAG

pytestmark = [pytest.mark.slow, pytest.mark.stack]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
SMALL = {"grid": [0.0, 0.01], "epochs": 3, "folds": 2}
# The shared stack's other modules count the default experiment's runs and model's versions: keep out of them.
OTHER_TABLE = "adhoc-other-table"
NIGHTLY_RUNS = {**TINY, "experiment": "nightly-alerts"}


@dataclass
class Webhook:
    url: str
    received: list[dict] = field(default_factory=list)

    def texts_naming(self, run_name: str) -> list[str]:
        return [body.get("text", "") for body in list(self.received) if run_name in body.get("text", "")]


@pytest.fixture(scope="module")
def webhook() -> Iterator[Webhook]:
    """A local webhook recording the JSON bodies posted to it, for the whole module."""
    hook = Webhook("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            hook.received.append(json.loads(self.rfile.read(length) or b"{}"))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    hook.url = f"http://127.0.0.1:{server.server_port}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield hook
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def deployed_by_cli(local_stack: LocalStack, webhook: Webhook) -> Iterator[LocalStack]:
    """The stack's deployments and alert automation as `wd-pipeline deploy` makes them, alert URL set;
    afterwards the automation is put back as the shared stack's own deploy made it (no URL: event only)."""
    result = subprocess.run(
        [sys.executable, "-m", "wd_pipeline.cli", "deploy", "--state-dir", str(local_stack.state_dir)],
        env={**local_stack.env, ALERT_URL_ENV: webhook.url},
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert f"Automation {AUTOMATION_NAME!r}" in result.stdout
    yield local_stack
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv(ALERT_URL_ENV, raising=False)
        install_nightly_alert(local_stack.prefect_api_url)


def read_flow_run(flow_run_id):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


def wait_for(flow_run_id, done, timeout: float = 300):
    """The flow run once ``done(run)`` holds; fails after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        run = read_flow_run(flow_run_id)
        if done(run):
            return run
        assert time.monotonic() < deadline, f"flow run {run.name} still {run.state.name} after {timeout:.0f} s"
        time.sleep(1)


def run_log(flow_run_id) -> str:
    """The flow run's log as the Prefect UI shows it, to say why a run ended as it did."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200)
    return "\n".join(f"{log.timestamp:%H:%M:%S.%f} {log.level} {log.message[:300]}" for log in logs)


def fired_for(flow_run_id) -> list:
    """The alert automation's ``triggered`` events whose triggering event is this flow run's."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    with get_client(sync_client=True) as client:
        (automation,) = client.read_automations_by_name(AUTOMATION_NAME)
        wanted = EventFilter(
            event=EventNameFilter(name=["prefect.automation.triggered"]),
            resource=EventResourceFilter(id=[f"prefect.automation.{automation.id}"]),
        )
        events = client.read_events(filter=wanted, limit=50).events
    return [
        event
        for event in events
        if event.payload["triggering_event"]["resource"]["prefect.resource.id"] == f"prefect.flow-run.{flow_run_id}"
    ]


def assert_alerted(run, webhook: Webhook, state_name: str) -> None:
    """The automation fired for ``run`` and the webhook got a post naming the run and its end state."""
    deadline = time.monotonic() + 120
    fired: list = []
    while time.monotonic() < deadline:
        fired = fired_for(run.id)
        if fired and webhook.texts_naming(run.name):
            break
        time.sleep(2)
    assert fired, f"automation {AUTOMATION_NAME!r} did not fire for the {state_name} run {run.name}"
    texts = webhook.texts_naming(run.name)
    assert any(f"ended {state_name}" in text for text in texts), webhook.received


def flow_run_processes(flow_run_id: UUID, worker_pid: int) -> list[psutil.Process]:
    """The worker's descendants started for this flow run (their environment names it)."""
    found = []
    for pid in processes.descendants(worker_pid):
        try:
            process = psutil.Process(pid)
            if process.environ().get("PREFECT__FLOW_RUN_ID") == str(flow_run_id):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def worker_pid(state_dir: Path) -> int:
    (worker,) = [r for r in stack.StackState.load(state_dir).services if r.name == stack.PREFECT_WORKER]
    return worker.pid


def test_adhoc_with_only_data_and_label_of_another_table_completes_and_registers(
    deployed_by_cli: LocalStack, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A 0/1 label, no positive class given: the bundled data's 'malignant' must not apply."""
    table = tmp_path_factory.mktemp("their-table") / "customers.csv"
    labelled_frame(rows=160).to_csv(table, index=False)
    parameters = {"data": str(table), "label": "y", **SMALL, "experiment": OTHER_TABLE, "model_name": OTHER_TABLE}
    options = [arg for key, value in parameters.items() for arg in ("-p", f"{key}={json.dumps(value)}")]
    cli = subprocess.run(
        ["prefect", "deployment", "run", ADHOC, *options, "--watch", "--watch-interval", "2"],
        env=deployed_by_cli.env,
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert cli.returncode == 0, cli.stdout[-3000:] + cli.stderr[-2000:]
    flow_run_id = next(line.split()[-1] for line in cli.stdout.splitlines() if "UUID:" in line)
    run = read_flow_run(flow_run_id)
    assert run.state.type.value == "COMPLETED", run.state
    assert set(run.parameters) == set(parameters)  # nothing else set: the defaults had to fit

    client = MlflowClient(tracking_uri=deployed_by_cli.mlflow_url, registry_uri=deployed_by_cli.mlflow_url)
    versions = client.search_model_versions(f"name = '{OTHER_TABLE}'")
    registered = [v for v in versions if client.get_run(v.run_id).data.tags.get(PREFECT_RUN_TAG) == str(run.id)]
    assert len(registered) == 1, [(v.version, v.run_id) for v in versions]


def test_a_timed_out_nightly_run_fires_the_alert(deployed_by_cli: LocalStack, webhook: Webhook) -> None:
    """The ceiling made tiny for this run only, through the process's environment (a job variable)."""
    from prefect.deployments import run_deployment

    run = run_deployment(
        NIGHTLY,
        parameters=NIGHTLY_RUNS,
        job_variables={"env": {PIPELINE_CEILING_ENV: "1"}},
        timeout=300,
        poll_interval=1,
        _sync=True,
    )
    assert run.state.name == "TimedOut", f"{run.state}\n{run_log(run.id)}"
    assert run.state.is_failed()
    assert_alerted(run, webhook, "TimedOut")


def test_a_crashed_nightly_run_fires_the_alert(deployed_by_cli: LocalStack, webhook: Webhook) -> None:
    """The flow run's process killed mid-run: the worker reports the run Crashed."""
    from prefect.deployments import run_deployment

    started = run_deployment(NIGHTLY, parameters=NIGHTLY_RUNS, timeout=0, _sync=True)
    wait_for(started.id, lambda run: run.state.is_running() or run.state.is_final(), timeout=300)
    deadline = time.monotonic() + 60
    while not (targets := flow_run_processes(started.id, worker_pid(deployed_by_cli.state_dir))):
        assert time.monotonic() < deadline, "no process of the running flow run found under the worker"
        time.sleep(0.5)
    for process in targets:
        os.kill(process.pid, signal.SIGKILL)
    run = wait_for(started.id, lambda run: run.state.is_final(), timeout=120)
    assert run.state.name == "Crashed", run.state
    assert_alerted(run, webhook, "Crashed")
