"""promote / rollback against a real MLflow store: the alias moves under the lock, recorded, or nothing moves."""

from __future__ import annotations

from pathlib import Path

import pytest

from wd_pipeline import cli
from wd_pipeline.errors import ConfigError
from wd_pipeline.tracking import promotion, promotion_lock, runs
from wd_pipeline.tracking.registry import CHALLENGER, CHAMPION

NAME = "wd-promo"


@pytest.fixture
def versions(workspace: Path):
    """``NAME`` with versions 1-3: v1 champion by the gate, v2 gated champion over v1, v3 a challenger."""
    import mlflow

    client = runs.get_client()
    client.create_registered_model(NAME)
    mlflow.set_tracking_uri(client.tracking_uri)
    with mlflow.start_run() as run:
        mlflow.log_text("model", "model/MLmodel")
    for number, (previous, card) in enumerate([("", "# Card v1"), ("1", "# Card v2"), ("2", "# Card v3")], start=1):
        client.create_model_version(NAME, f"runs:/{run.info.run_id}/model", run.info.run_id, description=card)
        client.set_model_version_tag(NAME, str(number), promotion.GATE_PREVIOUS_TAG, previous)
    client.set_registered_model_alias(NAME, CHAMPION, "2")
    client.set_registered_model_alias(NAME, CHALLENGER, "3")
    return client


def champion(client) -> str:
    return str(client.get_model_version_by_alias(NAME, CHAMPION).version)


def test_promote_moves_the_alias_and_records_who_when_why_and_what_it_replaced(versions) -> None:
    move = promotion.promote(versions, NAME, "3", reason="new columns reviewed")
    assert champion(versions) == "3" and (move.version, move.previous) == ("3", "2")
    tags = versions.get_model_version(NAME, "3").tags
    assert tags[promotion.REASON_TAG] == "new columns reviewed" and tags[promotion.HOW_TAG] == "promote"
    assert tags[promotion.PREVIOUS_TAG] == "2" and tags[promotion.BY_TAG] == promotion.who()
    assert tags[promotion.AT_TAG].endswith("Z")
    description = versions.get_model_version(NAME, "3").description
    assert description.startswith("# Card v3\n\n## Champion history\n- ")
    assert "promote by" in description and "v3 replaces v2 as @champion — new columns reviewed" in description
    with pytest.raises(Exception, match=r"not found|RESOURCE_DOES_NOT_EXIST"):  # one version is not both
        versions.get_model_version_by_alias(NAME, CHALLENGER)
    assert promotion_lock.read_holder(versions, promotion_lock.lock_name(NAME)) is None  # released


def test_rollback_undoes_step_by_step_through_promotions_and_gate_records(versions) -> None:
    promotion.promote(versions, NAME, "3", reason="reviewed")
    first = promotion.rollback(versions, NAME, reason="worse in production")
    assert champion(versions) == "2" and (first.version, first.previous, first.how) == ("2", "3", "rollback")
    assert versions.get_model_version(NAME, "2").tags[promotion.ROLLED_BACK_FROM_TAG] == "3"
    second = promotion.rollback(versions, NAME)  # v2 was the gate's champion over v1: one more step back
    assert champion(versions) == "1" and second.previous == "2" and second.reason == "rollback"
    with pytest.raises(ConfigError) as caught:
        promotion.rollback(versions, NAME)
    assert str(caught.value) == (
        f"@champion v1 of '{NAME}' records no champion before it: choose one with ./wd promote {NAME} VERSION --reason ..."
    )
    assert champion(versions) == "1"


@pytest.mark.parametrize(
    ("version", "reason", "message"),
    [
        (
            "9",
            "x",
            f"model '{NAME}' has no version 9; its versions are 1, 2, 3: "
            f"pass one of them, e.g. ./wd promote {NAME} 3 --reason ...",
        ),
        ("2", "x", f"version 2 of '{NAME}' is already @champion: nothing to promote"),
        (
            "3",
            "  ",
            "--reason is empty: say why the gate is overridden, e.g. --reason 'new columns reviewed'",
        ),
    ],
)
def test_a_refused_promotion_changes_nothing(versions, version: str, reason: str, message: str) -> None:
    before = versions.get_model_version(NAME, version if version != "9" else "3")
    with pytest.raises(ConfigError) as caught:
        promotion.promote(versions, NAME, version, reason=reason)
    assert str(caught.value) == message
    assert champion(versions) == "2"
    after = versions.get_model_version(NAME, before.version)
    assert (after.tags, after.description) == (before.tags, before.description)


def test_an_unknown_model_is_named(versions) -> None:
    with pytest.raises(ConfigError, match=r"^no registered model named 'nope' in the registry"):
        promotion.promote(versions, "nope", "1", reason="x")


def test_promotion_waits_for_the_lock_a_gate_holds(versions) -> None:
    settings = promotion_lock.LockSettings(ttl=300, timeout=0.5, poll=0.05)
    with (
        promotion_lock.promotion_lock(versions, NAME, settings),
        pytest.raises(Exception, match=r"promotion lock .* was not released within 0\.5 s"),
    ):
        promotion.promote(versions, NAME, "3", reason="x", lock=settings)
    assert champion(versions) == "2"


def test_the_history_keeps_the_latest_moves_within_the_description_limit() -> None:
    description = "# Card\n" + "x" * 300
    for step in range(40):
        description = promotion.with_history(description, f"move {step:02d} " + "y" * 20, limit=1000)
    assert len(description) <= 1000
    assert description.rstrip().endswith("move 39 " + "y" * 20) and "move 00" not in description
    assert description.startswith("# Card\n")


def test_the_commands_print_one_line(versions, capsys) -> None:
    assert cli.main(["promote", NAME, "3", "--reason", "reviewed"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith(f"@champion     {NAME} v3 (was v2): promote by ") and out.endswith(", reviewed")
    assert cli.main(["rollback", NAME]) == 0
    assert capsys.readouterr().out.startswith(f"@champion     {NAME} v2 (was v3): rollback by ")
    assert cli.main(["promote", NAME, "2", "--reason", "x"]) == cli.EXIT_BAD_SETTINGS
    err = capsys.readouterr().err
    assert err == f"error: version 2 of '{NAME}' is already @champion: nothing to promote\n"
    assert cli.main(["promote", NAME, "v3", "--reason", "x"]) == cli.EXIT_BAD_SETTINGS
    assert capsys.readouterr().err == "error: VERSION 'v3' is not a version number: give one like 3\n"
