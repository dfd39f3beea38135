"""Deployments are named ``flow-name/deployment-name``: both flows have an ``adhoc``."""

from __future__ import annotations

from pathlib import Path

import pytest

from wd_pipeline.errors import ConfigError
from wd_pipeline.ops.deploy import NIGHTLY, PREFECT_FILE, declared, deploy, deployment_name


def test_the_name_joins_the_flow_of_the_entrypoint_and_the_deployment() -> None:
    assert deployment_name({"name": "adhoc", "entrypoint": "flows/score.py:score"}) == "score/adhoc"
    assert (
        deployment_name({"name": "nightly", "entrypoint": "flows/pipeline.py:weight_decay_pipeline"})
        == "weight-decay-pipeline/nightly"
    )


def test_a_bare_deployment_name_is_refused_before_prefect_runs(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    with pytest.raises(ConfigError) as refused:
        deploy(tmp_path, names=["adhoc"])
    assert str(refused.value) == (
        "deployment name 'adhoc' is ambiguous: name it as flow-name/deployment-name, "
        "e.g. 'weight-decay-pipeline/nightly'"
    )


def test_the_yaml_declares_the_nightly_deployment_the_alert_watches() -> None:
    assert NIGHTLY in declared(PREFECT_FILE)
    assert declared(PREFECT_FILE) >= {"weight-decay-pipeline/adhoc", "score/adhoc"}
