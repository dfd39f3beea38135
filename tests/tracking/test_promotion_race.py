"""Concurrent registrations on one model name (issue #6): the champion alias never moves to a worse model.

Real SQLite store, real Keras models. The race is forced, not hoped for: each thread's client
is a real ``MlflowClient`` that, after its first champion read, waits at a barrier (so both
runs have read the same champion) and, for the run meant to promote last, until the other
run has finished. Before the promotion lock, the last run promoted on what it had read and
overwrote the better champion.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from tests.helpers.lock_contender import race
from tests.helpers.registry_models import SIGNAL, labelled_frame, log_pyfunc, train_keras
from wd_pipeline import processes
from wd_pipeline.config import make_config
from wd_pipeline.errors import TrackingError
from wd_pipeline.tracking import registry, runs
from wd_pipeline.tracking.promotion_lock import (
    EXPIRES_TAG,
    OWNER_TAG,
    TOKEN_TAG,
    LockSettings,
    lock_name,
    promotion_lock,
    read_holder,
)
from wd_pipeline.tracking.registry import GatePolicy

POLICY = GatePolicy.from_config(make_config(min_test_roc_auc=0.0, bootstrap_samples=200))


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, pd.DataFrame]:
    frame = labelled_frame()
    return frame.iloc[:200].reset_index(drop=True), frame.iloc[200:].reset_index(drop=True)


@pytest.fixture(scope="module")
def logged(module_store: Path, tmp_path_factory, data) -> dict[str, tuple[str, str]]:
    """(model URI, run id) of a trained model ("better") and an untrained one ("worse")."""
    train, _ = data
    folder = tmp_path_factory.mktemp("keras")
    files = {
        "better": train_keras(train, folder / "better"),
        "worse": train_keras(train, folder / "worse", epochs=0),
    }
    return {kind: log_pyfunc(path, train, SIGNAL, experiment="race-test") for kind, path in files.items()}


class PausingClient(MlflowClient):
    """A real client that pauses right after its first champion read, to force an interleaving."""

    def __init__(self, barrier: threading.Barrier, wait_for: threading.Event | None) -> None:
        uri = runs.tracking_uri()
        super().__init__(tracking_uri=uri, registry_uri=uri)
        self.barrier, self.wait_for, self.paused = barrier, wait_for, False

    def get_model_version_by_alias(self, name: str, alias: str):
        try:
            return super().get_model_version_by_alias(name, alias)
        finally:
            if not self.paused:
                self.paused = True
                self.barrier.wait(timeout=120)  # both runs have now read the same champion
                if self.wait_for is not None:
                    assert self.wait_for.wait(timeout=300), "the other run did not finish"


def register(client: MlflowClient, name: str, kind: str, logged, data, **extra) -> registry.RegistryDecision:
    _, test = data
    model_uri, run_id = logged[kind]
    return registry.register(
        client,
        name=name,
        model_uri=model_uri,
        run_id=run_id,
        test_features=test.drop(columns="y"),
        test_label=test["y"].to_numpy(),
        policy=POLICY,
        **extra,
    )


def run_concurrently(name: str, last: str, logged, data) -> dict[str, registry.RegistryDecision]:
    """Both registrations in threads; both read the champion first, then ``last`` promotes after the other."""
    barrier, first_done = threading.Barrier(2), threading.Event()
    results: dict[str, registry.RegistryDecision | BaseException] = {}

    def one(kind: str) -> None:
        client = PausingClient(barrier, first_done if kind == last else None)
        try:
            results[kind] = register(client, name, kind, logged, data)
        except BaseException as exc:
            results[kind] = exc
        finally:
            if kind != last:
                first_done.set()

    threads = [threading.Thread(target=one, args=(kind,)) for kind in ("better", "worse")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    failures = {kind: result for kind, result in results.items() if isinstance(result, BaseException)}
    assert not failures, failures
    return results  # type: ignore[return-value]


def aliases(name: str) -> dict[str, str]:
    return {alias: str(version) for alias, version in runs.get_client().get_registered_model(name).aliases.items()}


@pytest.mark.parametrize("last", ["worse", "better"])
def test_two_concurrent_registrations_end_with_the_better_model_as_champion(
    module_store: Path, logged, data, last: str
) -> None:
    name = f"race-{last}-last"
    decisions = run_concurrently(name, last, logged, data)
    first = "better" if last == "worse" else "worse"
    # The run that promoted last decided against the champion the first one had just set, not the one it read.
    assert decisions[last].champion_version == decisions[first].version
    assert decisions[first].champion_version is None
    if last == "worse":
        assert decisions["worse"].alias == "challenger" and "does not beat champion v1" in decisions["worse"].reason
        assert aliases(name) == {"champion": decisions["better"].version, "challenger": decisions["worse"].version}
    else:
        assert decisions["better"].alias == "champion" and "vs champion v1" in decisions["better"].reason
        assert aliases(name) == {"champion": decisions["better"].version}
    versions = runs.get_client().search_model_versions(f"name = '{name}'")
    assert sorted(str(v.version) for v in versions) == ["1", "2"]  # both kept
    assert read_holder(runs.get_client(), lock_name(name)) is None  # released


def hold_lock(name: str, owner: str, token: str, expires: float) -> None:
    """A lock as another process would have left it."""
    tags = {TOKEN_TAG: token, OWNER_TAG: owner, EXPIRES_TAG: str(expires)}
    runs.get_client().create_registered_model(lock_name(name), tags=tags)


def dead_owner() -> str:
    """``host:pid:start`` of a process that has exited (a bogus start time also covers a recycled pid)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return f"{socket.gethostname()}:{process.pid}:1"


@pytest.mark.parametrize("why", ["owner-process-gone", "expired-on-another-host"])
def test_a_stale_lock_is_broken_and_kept_as_a_tombstone(module_store: Path, logged, data, why: str) -> None:
    name = f"race-stale-{why}"
    if why == "owner-process-gone":  # not expired: only the dead owner makes it stale
        owner, expires = dead_owner(), time.time() + 3600
    else:  # another host's pid cannot be checked here: only the expiry makes it stale
        owner, expires = "another-host.example:4242:99", time.time() - 1
    hold_lock(name, owner, "stale", expires)
    decision = register(runs.get_client(), name, "better", logged, data, lock=LockSettings(timeout=60))
    assert decision.alias == "champion" and decision.lock_wait < 30
    client = runs.get_client()
    assert read_holder(client, lock_name(name)) is None
    tombstone = client.get_registered_model(f"{lock_name(name)}.broken-stale")
    assert tombstone.tags[OWNER_TAG] == owner  # the broken holder stays on record


def test_a_live_holder_makes_registration_fail_after_the_timeout_and_keep_nothing(
    module_store: Path, logged, data
) -> None:
    name = "race-held"
    hold_lock(name, processes.identity(), "alive", time.time() + 3600)
    started = time.monotonic()
    with pytest.raises(TrackingError) as failure:
        register(runs.get_client(), name, "better", logged, data, lock=LockSettings(timeout=2, poll=0.2))
    assert time.monotonic() - started < 60
    assert str(failure.value) == (
        f"promotion lock 'race-held.promotion-lock' is held by {processes.identity()} and was not released "
        "within 2 s (WD_PIPELINE_LOCK_TIMEOUT); if no run is promoting, delete registered model "
        "'race-held.promotion-lock' in the MLflow UI or with "
        "`python -c \"import mlflow; mlflow.MlflowClient().delete_registered_model('race-held.promotion-lock')\"`"
    )
    client = runs.get_client()
    assert client.search_model_versions("name = 'race-held'") == []  # nothing half-registered
    assert read_holder(client, lock_name(name)).token == "alive"  # a live holder's lock is left alone


class FailingAliasClient(MlflowClient):
    """A real client whose alias move fails, recording whether the promotion lock was held at that moment."""

    def __init__(self) -> None:
        uri = runs.tracking_uri()
        super().__init__(tracking_uri=uri, registry_uri=uri)
        self.held_during_failure: bool | None = None

    def set_registered_model_alias(self, name: str, alias: str, version: str) -> None:
        self.held_during_failure = read_holder(self, lock_name(name)) is not None
        raise MlflowException("alias service unavailable")


def test_the_lock_is_released_and_the_version_deleted_when_promotion_fails(module_store: Path, logged, data) -> None:
    name = "race-fails"
    client = FailingAliasClient()
    with pytest.raises(MlflowException, match="alias service unavailable"):
        register(client, name, "better", logged, data, lock=LockSettings(timeout=30))
    assert client.held_during_failure is True
    assert read_holder(client, lock_name(name)) is None
    assert client.search_model_versions(f"name = '{name}'") == []
    after = register(runs.get_client(), name, "better", logged, data, lock=LockSettings(timeout=5))
    assert after.alias == "champion" and after.lock_wait < 5


@pytest.mark.slow  # three fresh interpreters importing MLflow
def test_creating_the_lock_is_atomic_on_a_sqlite_store(module_store: Path) -> None:
    runs.get_client().search_registered_models()  # the store's tables exist before the race
    outcomes = race(runs.tracking_uri(), "atomic.promotion-lock", module_store / "race")
    assert outcomes == ["RESOURCE_ALREADY_EXISTS", "RESOURCE_ALREADY_EXISTS", "created"]


def test_waiters_on_a_stale_lock_break_it_once_and_then_hold_it_one_at_a_time(module_store: Path) -> None:
    """Four threads find a dead owner's lock at once: exactly one rename wins, and no two ever hold it together."""
    name = "race-mutex"
    hold_lock(name, dead_owner(), "dead", time.time() + 3600)
    inside, most, entries, guard = [0], [0], [], threading.Lock()
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def contend() -> None:
        client = MlflowClient(tracking_uri=runs.tracking_uri(), registry_uri=runs.tracking_uri())
        start.wait(timeout=60)
        try:
            with promotion_lock(client, name, LockSettings(timeout=120, poll=0.05)) as held:
                with guard:
                    inside[0] += 1
                    most[0] = max(most[0], inside[0])
                    entries.append(held.token)
                time.sleep(0.3)
                with guard:
                    inside[0] -= 1
        except BaseException as exc:  # collected: the assertion below names it
            errors.append(exc)

    threads = [threading.Thread(target=contend) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert errors == []
    assert (len(set(entries)), most[0]) == (4, 1)
    client = runs.get_client()
    assert read_holder(client, lock_name(name)) is None
    assert [m.name for m in client.search_registered_models(f"name LIKE '{lock_name(name)}%'")] == [
        f"{lock_name(name)}.broken-dead"
    ]


def test_lock_settings_come_from_the_environment_and_a_bad_value_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WD_PIPELINE_LOCK_TIMEOUT", "5")
    assert LockSettings.from_env() == LockSettings(ttl=300.0, timeout=5.0)
    monkeypatch.setenv("WD_PIPELINE_LOCK_TTL", "soon")
    with pytest.raises(TrackingError, match=r"^WD_PIPELINE_LOCK_TTL='soon' is not a number of seconds$"):
        LockSettings.from_env()
