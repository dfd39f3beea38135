"""The stack on an S3 store (SeaweedFS, tests/helpers/s3.py): MLflow's artifacts and the work folder in buckets.

The shared ``production_stack`` (tests/stack/conftest.py), started through the real command
(`wd-pipeline stack up --mlflow-artifacts-destination s3://… --work-dir s3://…`, its servers on
PostgreSQL): the MLflow server proxies artifacts into the bucket, the worker's flow runs keep
splits and trained units under the work prefix, and nothing of either lands in the state dir.
Then the S3 store goes away for 20 s in the middle of a deployment run's grid and the run
completes with every unit logged once; and a CLI run against the stack's servers, killed
mid-grid, resumes from the units it left in the bucket.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from tests.flows import test_crash_resume as crash
from tests.helpers.local_stack import ADHOC, TINY, LocalStack
from tests.helpers.s3 import BUCKET, SeaweedS3
from tests.stack import test_outages as outages
from tests.stack.conftest import PRODUCTION_ARTIFACTS, PRODUCTION_WORK

pytestmark = [pytest.mark.slow, pytest.mark.stack]

ARTIFACTS = PRODUCTION_ARTIFACTS  # the stack's prefixes of the session's bucket
WORK = PRODUCTION_WORK
S3_DOWN_SECONDS = 20


def result_keys(server: SeaweedS3, prefix: str) -> set[str]:
    """Units whose result is in the bucket (uploaded last: the unit is whole)."""
    return {key for key in server.keys(BUCKET, f"{prefix}/points/") if key.endswith("/result.json")}


@pytest.fixture(scope="module")
def s3_run(production_stack: LocalStack) -> Any:
    from prefect.deployments import run_deployment

    name = "s3-artifacts"
    return run_deployment(
        ADHOC, parameters={**TINY, "experiment": name, "model_name": name}, timeout=600, poll_interval=2
    )


def test_model_artifacts_are_in_the_bucket_and_the_registered_model_predicts(
    s3_run: Any, production_stack: LocalStack, s3_server: SeaweedS3, bundled
) -> None:
    import mlflow

    assert s3_run.state.type.value == "COMPLETED", s3_run.state
    client = MlflowClient(tracking_uri=production_stack.mlflow_url, registry_uri=production_stack.mlflow_url)
    (version,) = client.search_model_versions("name = 's3-artifacts'")
    keys = s3_server.keys(BUCKET, f"{ARTIFACTS}/")
    # The version's source is models:/m-<id>; the server proxies the logged model's files into
    # <destination>/<experiment id>/models/m-<id>/artifacts/.
    model_id = version.model_id or version.source.removeprefix("models:/")
    experiment_id = client.get_logged_model(model_id).experiment_id
    model_files = f"{ARTIFACTS}/{experiment_id}/models/{model_id}/artifacts/"
    assert f"{model_files}MLmodel" in keys, (version.source, [key for key in keys if key.endswith("MLmodel")])
    assert any(key.startswith(model_files) and key.endswith(".keras") for key in keys), model_files
    assert not list((production_stack.state_dir / "mlartifacts").iterdir()), "artifacts landed in the state dir"

    mlflow.set_tracking_uri(production_stack.mlflow_url)
    mlflow.set_registry_uri(production_stack.mlflow_url)
    model = mlflow.pyfunc.load_model(f"models:/s3-artifacts/{version.version}")
    features = bundled.drop(columns=["diagnosis"]).head(20)
    probability = model.predict(features)["probability"].to_numpy()
    assert probability.shape == (20,) and ((probability >= 0) & (probability <= 1)).all()


def test_the_work_folder_is_in_the_bucket_only(s3_run: Any, production_stack: LocalStack, s3_server: SeaweedS3) -> None:
    keys = s3_server.keys(BUCKET, f"{WORK}/")
    assert any(key.startswith(f"{WORK}/splits/") and key.endswith("/manifest.json") for key in keys)
    assert len(result_keys(s3_server, WORK)) >= len(TINY["grid"])
    assert not (production_stack.state_dir / "work").exists() or not any(
        (production_stack.state_dir / "work").iterdir()
    )


def test_s3_store_away_for_20_s_mid_grid(s3_run: Any, production_stack: LocalStack, s3_server: SeaweedS3) -> None:
    """The store stops once the grid trains; uploads and reads wait for it; the run completes, nothing twice."""
    name = "s3-outage"
    before = result_keys(s3_server, WORK)
    flow_run = outages.start_run(name, 3)
    deadline = time.monotonic() + 300
    while not result_keys(s3_server, WORK) - before:
        state = outages.read_flow_run(flow_run.id).state
        assert state.type.value not in outages.TERMINAL, f"ended before training: {state}"
        assert time.monotonic() < deadline, "no unit reached the bucket in time"
        time.sleep(0.5)
    s3_server.stop()
    stopped = time.monotonic()
    time.sleep(S3_DOWN_SECONDS)
    s3_server.start()
    down = time.monotonic() - stopped
    final = outages.wait_for_end(flow_run.id, timeout=600)
    assert final.state.type.value == "COMPLETED", final.state
    assert outages.unfinished(final.id) == []
    # One FINISHED run per grid point and fold, each epoch's value once and equal to the unit in the bucket.
    outages.assert_complete_record(outages.mlflow_client(production_stack), name, final.id, f"s3://{BUCKET}/{WORK}")
    print(f"S3 store down {down:.1f} s; retried tasks: {outages.retried_tasks(final.id)}")


def test_kill_9_then_rerun_resumes_from_the_bucket(
    production_stack: LocalStack, s3_server: SeaweedS3, tmp_path: Path
) -> None:
    """The crash-resume test of tests/flows with the work folder in S3: only the missing units are trained.

    Both runs are the CLI against the stack's servers (its experiment is its own), with a work prefix of its own.
    """
    prefix = f"crash-{os.getpid()}-{int(time.time())}"
    env = {
        **production_stack.env,
        **s3_server.env(),
        "WD_PIPELINE_WORK_DIR": f"s3://{BUCKET}/{prefix}",
        "WD_PIPELINE_S3_CACHE": str(tmp_path / "cache"),
    }
    log = (tmp_path / "first.log").open("w")
    first = subprocess.Popen(
        crash.COMMAND, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 400
        while not result_keys(s3_server, prefix):
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no unit finished in time"
            time.sleep(0.3)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    crash.assert_group_gone(first.pid)
    client = s3_server.client()

    def stamps() -> dict[str, Any]:
        return {
            key.split("/")[-2]: client.head_object(Bucket=BUCKET, Key=key)["LastModified"]
            for key in result_keys(s3_server, prefix)
        }

    survivors = stamps()
    assert 1 <= len(survivors) < 6, survivors  # killed mid-grid: 3 λ × 2 folds
    # Another machine resumes: nothing of the first run's local copies is there.
    env["WD_PIPELINE_S3_CACHE"] = str(tmp_path / "other-cache")
    second = subprocess.run(crash.COMMAND, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    mlflow = MlflowClient(tracking_uri=env["MLFLOW_TRACKING_URI"])
    experiment = mlflow.get_experiment_by_name("crash-resume").experiment_id
    resumed = mlflow.search_runs([experiment], filter_string="tags.resumed = 'true'")
    assert {run.data.tags["unit_key"] for run in resumed} == set(survivors)
    after = stamps()
    assert {key: after[key] for key in survivors} == survivors  # not trained or written again
    assert f"{prefix}/wd-pipeline.log" in s3_server.keys(BUCKET, f"{prefix}/")
    print(f"units in the bucket before the kill: {len(survivors)}; resumed: {len(resumed)}; all: {len(after)}")
