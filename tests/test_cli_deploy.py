"""``wd-pipeline deploy``: the score flow deployed beside the pipeline, and run settings for the nightly deployment."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from wd_pipeline import cli
from wd_pipeline.ops import deploy as deploy_module


def deployments(path: Path) -> dict[str, dict]:
    return {f"{d['entrypoint']} {d['name']}": d for d in yaml.safe_load(path.read_text())["deployments"]}


def test_the_score_flow_has_an_adhoc_deployment() -> None:
    found = deployments(deploy_module.PREFECT_FILE)
    score = found["flows/score.py:score adhoc"]
    assert score["schedules"] == [] and score["enforce_parameter_schema"] is True
    assert {"flows/pipeline.py:weight_decay_pipeline nightly", "flows/pipeline.py:weight_decay_pipeline adhoc"} <= set(
        found
    )


@pytest.fixture
def applied(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """What ``prefect deploy`` would have been given: each call's deployments, read while the file exists."""
    calls: list[dict] = []

    def fake_deploy(state_dir: Path, prefect_file: Path = deploy_module.PREFECT_FILE, names=None) -> str:
        calls.append({"deployments": deployments(prefect_file), "names": names})
        return "deployed"

    monkeypatch.setattr(deploy_module, "deploy", fake_deploy)
    return calls


NIGHTLY = "flows/pipeline.py:weight_decay_pipeline nightly"
ADHOC = "flows/pipeline.py:weight_decay_pipeline adhoc"


def test_flags_and_a_config_file_become_the_nightly_parameters(applied, tmp_path: Path, capsys) -> None:
    config = tmp_path / "nightly.toml"
    config.write_text('data = "data/adult.parquet"\nlabel = "income"\nepochs = 30\n')
    argv = [
        "deploy",
        "--config",
        str(config),
        "--positive-class",
        ">50K",
        "--epochs",
        "40",
        "--state-dir",
        str(tmp_path),
    ]
    assert cli.main(argv) == 0
    (call,) = applied
    assert call["deployments"][NIGHTLY]["parameters"] == {
        "data": "data/adult.parquet",
        "label": "income",
        "epochs": 40,
        "positive_class": ">50K",
    }
    assert call["deployments"][ADHOC]["parameters"] == {}  # the form stays the user's
    assert call["deployments"][NIGHTLY]["schedules"] == deployments(deploy_module.PREFECT_FILE)[NIGHTLY]["schedules"]
    assert capsys.readouterr().out.startswith("nightly parameters  data='data/adult.parquet', label='income'")


def test_without_run_settings_the_file_is_applied_as_it_is(applied, tmp_path: Path) -> None:
    assert cli.main(["deploy", "--state-dir", str(tmp_path)]) == 0
    assert applied[0]["deployments"][NIGHTLY]["parameters"] == {}


def test_a_bad_setting_is_refused_before_anything_is_deployed(applied, tmp_path: Path, capsys) -> None:
    assert cli.main(["deploy", "--epochs", "0", "--state-dir", str(tmp_path)]) == cli.EXIT_BAD_SETTINGS
    assert capsys.readouterr().err == "error: invalid settings: epochs: Input should be greater than or equal to 1\n"
    assert applied == []
