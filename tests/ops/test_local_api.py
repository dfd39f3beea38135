"""The background Prefect API: started once, reused, replaced when dead, stopped by the verb or when idle."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.templates import seed_prefect_home
from wd_pipeline import processes
from wd_pipeline.cli import main
from wd_pipeline.ops import local_api

CLI = [sys.executable, "-m", "wd_pipeline.cli"]


# An API started in either home is stopped after the test by ``tests/conftest.py`` (it is under tmp_path).
@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A Prefect home holding a migrated, empty database: an API starts there without migrating."""
    return seed_prefect_home(tmp_path / "prefect")


@pytest.fixture
def new_home(tmp_path: Path) -> Path:
    """A Prefect home that does not exist yet, as on a machine's first run: the API creates its database."""
    return tmp_path / "new-prefect"


def env_for(home: Path) -> dict[str, str]:
    env = {**os.environ, "PREFECT_HOME": str(home)}
    env.pop("PREFECT_API_URL", None)
    return env


def test_a_second_caller_reuses_the_running_api(home: Path) -> None:
    first = local_api.ensure(home)
    assert local_api.healthy(first)
    second = local_api.ensure(home)
    assert (second.pid, second.port) == (first.pid, first.port)
    assert local_api.status(home) == (first, True)


def test_a_dead_api_is_noticed_and_replaced(home: Path) -> None:
    dead = local_api.ensure(home)
    os.killpg(os.getpgid(dead.pid), signal.SIGKILL)
    deadline = time.monotonic() + 10
    while processes.alive(dead.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert local_api.status(home) == (dead, False)

    fresh = local_api.ensure(home)
    assert fresh.pid != dead.pid and local_api.healthy(fresh)


def test_a_record_left_by_another_process_is_not_trusted(home: Path) -> None:
    """A pid that now names another process (here: this test) is stale, not a running API."""
    ticks = processes.start_ticks(os.getpid())
    stale = local_api.LocalApi(os.getpid(), (ticks or 0) + 1, 9, str(home), local_api.settings_key())
    (home / local_api.STATE_FILE).write_text(__import__("json").dumps(stale.__dict__))

    api = local_api.ensure(home)
    assert api.pid != os.getpid() and local_api.healthy(api)
    assert processes.alive(os.getpid())  # the stale record's pid was not signalled


def test_two_runs_starting_at_once_share_one_api(home: Path) -> None:
    code = "from wd_pipeline.ops import local_api; print(local_api.ensure().pid)"
    starters = [
        subprocess.Popen([sys.executable, "-c", code], env=env_for(home), stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    pids = {starter.communicate(timeout=300)[0].strip() for starter in starters}
    assert len(pids) == 1
    assert local_api.read(home).pid == int(pids.pop())


def test_the_cli_verbs_start_report_and_stop_it(new_home: Path) -> None:
    started = subprocess.run([*CLI, "local-api", "start"], env=env_for(new_home), capture_output=True, text=True)
    assert started.returncode == 0, started.stderr
    api = local_api.read(new_home)
    assert api is not None and f"Prefect UI    {api.ui_url}" in started.stdout

    status = subprocess.run([*CLI, "local-api", "status"], env=env_for(new_home), capture_output=True, text=True)
    assert status.returncode == 0 and "running: " + api.ui_url in status.stdout

    stopped = subprocess.run([*CLI, "local-api", "stop"], env=env_for(new_home), capture_output=True, text=True)
    assert stopped.returncode == 0 and "stopped " + api.ui_url in stopped.stdout
    assert not processes.alive(api.pid) and not local_api.healthy(api)
    assert local_api.read(new_home) is None

    again = subprocess.run([*CLI, "local-api", "status"], env=env_for(new_home), capture_output=True, text=True)
    assert again.returncode == 1 and "none recorded" in again.stdout


def test_an_api_nobody_uses_stops_itself_and_one_in_use_does_not(tmp_path: Path) -> None:
    home = seed_prefect_home(tmp_path / "prefect")
    users = home / local_api.USERS_FOLDER
    users.mkdir()
    (users / processes.identity()).touch()  # this test uses it while it runs
    command = [sys.executable, "-m", "wd_pipeline.ops.local_api", "--home", str(home), "--port", "0"]
    supervisor = subprocess.Popen([*command, "--idle-seconds", "1"], env=env_for(home), start_new_session=True)
    try:
        time.sleep(4)
        assert supervisor.poll() is None
        (users / processes.identity()).unlink()
        assert supervisor.wait(timeout=60) == 0
    finally:
        if supervisor.poll() is None:
            os.killpg(supervisor.pid, signal.SIGKILL)


def test_a_run_with_prefect_api_url_set_leaves_the_background_api_alone(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server named by the ordinary setting (here as a profile would set it) is the run's, always."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    import wd_pipeline.cli as cli

    home = workspace / "prefect"
    monkeypatch.setenv("PREFECT_HOME", str(home))
    seen: list[str | None] = []
    monkeypatch.setattr(cli, "_run", lambda config: seen.append(PREFECT_API_URL.value()) or 1 / 0)
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        main(["run", "--grid", "0"])
    assert seen == ["http://127.0.0.1:9/api"]
    assert not home.exists() or local_api.read(home) is None


def test_the_start_verb_starts_the_api_a_run_would_use(monkeypatch, tmp_path: Path) -> None:
    """A run sets server settings for itself (:func:`wd_pipeline.logs.quiet_environment`); started
    without them, the API would be replaced by the first run instead of reused."""
    from types import SimpleNamespace

    from wd_pipeline import logs

    for name in [name for name in os.environ if name.startswith(local_api.SERVER_SETTING_PREFIXES)]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    started = []
    fake = SimpleNamespace(ui_url="http://127.0.0.1:1", api_url="http://127.0.0.1:1/api", pid=1)
    monkeypatch.setattr(local_api, "ensure", lambda home: started.append(local_api.settings_key()) or fake)
    assert main(["local-api", "start"]) == 0
    logs.quiet_environment(verbose=False)  # what a run does before it looks for the API
    assert started == [local_api.settings_key()]
