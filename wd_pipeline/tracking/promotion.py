"""Moving ``@champion`` by hand: promote a chosen version, or roll back to the champion before.

The gate (:func:`~wd_pipeline.tracking.registry.register`) never promotes a version whose
inputs changed, by design; a person who has looked at it can. Both moves override the gate
on purpose, under the same promotion lock, and are recorded where the version is read:
``champion.*`` tags (who, when, why, how, the champion it replaced) and a line in the
``Champion history`` section of the version's description (its model card).

Rollback follows the record, like an undo: the champion's ``champion.previous`` tag (set
when a promotion put it there) or, for a version the gate promoted, ``gate.champion_version``.
Rolling back does not rewrite the restored version's own ``champion.previous``, so a second
rollback goes one step further back instead of toggling between two versions.
"""

from __future__ import annotations

import datetime
import getpass
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

from wd_pipeline.errors import ConfigError
from wd_pipeline.tracking.promotion_lock import LockSettings, promotion_lock
from wd_pipeline.tracking.registry import CHALLENGER, CHAMPION, MAX_DESCRIPTION, current_champion, version_description

if TYPE_CHECKING:
    from mlflow import MlflowClient

BY_TAG = "champion.by"
AT_TAG = "champion.at"
REASON_TAG = "champion.reason"
HOW_TAG = "champion.how"  # promote | rollback
PREVIOUS_TAG = "champion.previous"  # the champion a promotion replaced ("" when there was none)
ROLLED_BACK_FROM_TAG = "champion.rolled_back_from"
GATE_PREVIOUS_TAG = "gate.champion_version"
HISTORY_HEADING = "## Champion history"


@dataclass(frozen=True)
class ChampionMove:
    """What moved: the model, the version now @champion, the one before (None if there was none)."""

    model_name: str
    version: str
    previous: str | None
    how: str
    by: str
    at: str
    reason: str

    def line(self) -> str:
        before = f"v{self.previous}" if self.previous else "no champion"
        return f"{self.at} {self.how} by {self.by}: v{self.version} replaces {before} as @champion — {self.reason}"


def who() -> str:
    """The person (account) and machine that moved the alias."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def promote(
    client: MlflowClient, name: str, version: str, *, reason: str, lock: LockSettings | None = None
) -> ChampionMove:
    """Put ``version`` on ``@champion`` whatever the gate said; refuse a version that is missing or already there."""
    reason = _reason(reason)
    versions = _versions(client, name)
    if version not in versions:
        raise ConfigError(
            f"model {name!r} has no version {version}; its versions are {_listed(versions)}: "
            f"pass one of them, e.g. ./wd promote {name} {versions[-1]} --reason ..."
        )
    with promotion_lock(client, name, lock) as held:
        champion = current_champion(client, name)
        if champion == version:
            raise ConfigError(f"version {version} of {name!r} is already @champion: nothing to promote")
        move = ChampionMove(name, version, champion, "promote", who(), now(), reason)
        _record(client, move)
        client.set_model_version_tag(name, version, PREVIOUS_TAG, champion or "")
        held.ensure_held()
        _move_alias(client, name, version)
    return move


def rollback(client: MlflowClient, name: str, *, reason: str = "", lock: LockSettings | None = None) -> ChampionMove:
    """Put the champion recorded before the current one back on ``@champion``."""
    versions = _versions(client, name)
    with promotion_lock(client, name, lock) as held:
        champion = current_champion(client, name)
        if champion is None:
            raise ConfigError(f"model {name!r} has no @champion to roll back from: promote one with ./wd promote")
        tags = client.get_model_version(name, champion).tags
        previous = tags.get(PREVIOUS_TAG) if PREVIOUS_TAG in tags else tags.get(GATE_PREVIOUS_TAG)
        if not previous or previous == "None":
            raise ConfigError(
                f"@champion v{champion} of {name!r} records no champion before it: "
                f"choose one with ./wd promote {name} VERSION --reason ..."
            )
        if previous not in versions:
            raise ConfigError(
                f"the champion before v{champion} of {name!r}, v{previous}, no longer exists: "
                f"choose one of {_listed(versions)} with ./wd promote {name} VERSION --reason ..."
            )
        move = ChampionMove(name, previous, champion, "rollback", who(), now(), reason.strip() or "rollback")
        _record(client, move)
        client.set_model_version_tag(name, previous, ROLLED_BACK_FROM_TAG, champion)
        held.ensure_held()
        _move_alias(client, name, previous)
    return move


def _reason(reason: str) -> str:
    if not reason.strip():
        raise ConfigError("--reason is empty: say why the gate is overridden, e.g. --reason 'new columns reviewed'")
    return reason.strip()


def _versions(client: MlflowClient, name: str) -> list[str]:
    """The model's version numbers, ascending; refuses a model that is not registered."""
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise ConfigError(
            f"no registered model named {name!r} in the registry: check the name (a run's summary prints it)"
        ) from None
    found = client.search_model_versions(f"name = '{name}'")
    return sorted((str(version.version) for version in found), key=int)


def _listed(versions: list[str]) -> str:
    return ", ".join(versions) if versions else "none"


def _record(client: MlflowClient, move: ChampionMove) -> None:
    """The move as tags of the new champion and a line of its description's history."""
    for tag, value in ((BY_TAG, move.by), (AT_TAG, move.at), (REASON_TAG, move.reason), (HOW_TAG, move.how)):
        client.set_model_version_tag(move.model_name, move.version, tag, value)
    description = client.get_model_version(move.model_name, move.version).description or ""
    client.update_model_version(move.model_name, move.version, description=with_history(description, move.line()))


def with_history(description: str, line: str, limit: int = MAX_DESCRIPTION) -> str:
    """``description`` with ``line`` added to its history section; the card is cut to make room."""
    marker = f"{HISTORY_HEADING}\n"
    head, found, history = description.partition(marker)
    lines = [*history.strip().splitlines(), f"- {line}"]
    block = marker + "\n".join(lines) + "\n"
    while len(block) > limit // 2 and len(lines) > 1:  # the oldest moves give way first
        lines.pop(0)
        block = marker + "\n".join(lines) + "\n"
    card = (version_description((head if found else description).rstrip(), limit - len(block) - 2) or "").rstrip()
    return f"{card}\n\n{block}" if card else block


def _move_alias(client: MlflowClient, name: str, version: str) -> None:
    client.set_registered_model_alias(name, CHAMPION, version)
    try:
        if str(client.get_model_version_by_alias(name, CHALLENGER).version) == version:
            client.delete_registered_model_alias(name, CHALLENGER)  # one version is not both
    except Exception:  # no challenger alias: nothing to clear
        pass
