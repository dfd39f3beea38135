"""Shared fixtures: an isolated working folder and MLflow store per test, one Prefect API per session."""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from tests.helpers.background_apis import stop_background_apis
from tests.helpers.stores import isolated_store
from tests.helpers.templates import seed_prefect_home

# The S3 store's fixtures (s3_server, s3_env, s3_work_dir), for any test that asks for them.
pytest_plugins = ["tests.helpers.s3"]

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
BUNDLED = PROJECT_ROOT / "data" / "breast_cancer.csv"

# Modules that share one of the stacks of tests/stack/conftest.py, by group: one test process runs a
# group together, so its stack starts once. A module using one but not listed still works, on a
# stack started again in its own process.
SHARED_STACK_GROUPS = {
    # ``local_stack``: SQLite, artifacts and work folder in the state dir.
    "shared local_stack": frozenset(
        {
            "tests/stack/test_dask.py",
            "tests/stack/test_deployment_runs.py",
            "tests/stack/test_promotion_race_server.py",
            "tests/stack/test_stack.py",
        }
    ),
    # ``production_stack``: both servers on PostgreSQL, artifacts and work folder in S3.
    "shared production stack": frozenset(
        {"tests/stack/test_dask_cluster.py", "tests/stack/test_postgres.py", "tests/stack/test_s3.py"}
    ),
}
GROUP_OF_MODULE = {module: group for group, modules in SHARED_STACK_GROUPS.items() for module in modules}


def run_group(nodeid: str) -> str:
    """The unit one test process runs whole: the test's module, or the group of modules sharing a stack.

    Keeping a module whole keeps its module fixtures (a trained pipeline, a stack) set up once.
    """
    module = nodeid.split("::", 1)[0]
    return GROUP_OF_MODULE.get(module, module)


# Rough seconds, from the markers: a unit's first slow test pays for its module's shared
# pipeline runs or servers, the tests after it mostly assert on them.
FIRST_COST = {"stack": 120.0, "slow": 60.0}
NEXT_COST = {"stack": 10.0, "slow": 2.0}
FAST_COST = 0.5


def kind(item: pytest.Item) -> str:
    """``stack`` for a test that starts servers and runs pipelines on them, ``slow``, or ``fast``."""
    if item.get_closest_marker("stack") and item.get_closest_marker("slow"):
        return "stack"
    return "slow" if item.get_closest_marker("slow") or item.get_closest_marker("stack") else "fast"


def estimated_seconds(items: list[pytest.Item]) -> float:
    """A unit's cost, good enough to hand out the long units first."""
    seconds, seen = 0.0, set()
    for item in items:
        cost = kind(item)
        if cost == "fast":
            seconds += FAST_COST
        else:
            seconds += NEXT_COST[cost] if cost in seen else FIRST_COST[cost]
            seen.add(cost)
    return seconds


# Fixtures that start servers: a test using one is marked ``stack`` (and ``slow`` where it runs
# pipelines or a Prefect API), so `-m "not stack"` and `-m "not slow"` never start them.
STACK_FIXTURES = frozenset(
    {"local_stack", "own_stack", "shared_stack_settings", "production_stack", "production_stack_settings", "postgres"}
)
SLOW_FIXTURES = frozenset({"local_stack", "own_stack", "production_stack", "prefect_api"})


def mark_server_tests(items: list[pytest.Item]) -> None:
    """Complete the markers from the fixtures a test uses, before ``-m`` selects."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & STACK_FIXTURES and item.get_closest_marker("stack") is None:
            item.add_marker(pytest.mark.stack)
        if fixtures & SLOW_FIXTURES and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)


def longest_units_first(items: list[pytest.Item]) -> None:
    """Each unit (``run_group``) in one piece, the units by their estimated cost, longest first.

    The suite's wall time is the busier process's: handed out last, a long unit leaves one process
    running it alone at the end. Every test process orders the same collection the same way, as
    xdist requires; the scheduler below keeps this order.
    """
    units: defaultdict[str, list[pytest.Item]] = defaultdict(list)
    for item in items:
        units[run_group(item.nodeid)].append(item)
    cost = {name: estimated_seconds(members) for name, members in units.items()}
    first = {name: position for position, name in enumerate(units)}
    items.sort(key=lambda item: (-cost[run_group(item.nodeid)], first[run_group(item.nodeid)]))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    mark_server_tests(items)
    if hasattr(config, "workerinput"):  # a pytest-xdist test process
        longest_units_first(items)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """For ``--dist loadscope``: units are ``run_group``s, handed out in collection order, one at a time.

    A test process gets its next unit when it is on the last test of the current one (it needs to
    know the next test before it runs that one), so a long unit waiting in the queue goes to
    whichever process frees up first instead of being queued behind another.
    """
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return run_group(nodeid)

        def _reschedule(self, node: Any) -> None:
            if node.shutting_down:
                return
            if not self.workqueue:
                node.shutdown()
            elif self._pending_of(self.assigned_work[node]) <= 1:
                self._assign_work_unit(node)

    return GroupScheduling(config, log)


@pytest.fixture(scope="session", autouse=True)
def allow_pytest_data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Tests write their data files under pytest's temporary folders: allow those as data roots.

    Only the session's own base folder is added, so the confinement tests still see every
    other path refused; subprocesses (the real CLI, stack workers) inherit the variable.
    """
    patch = pytest.MonkeyPatch()
    basetemp = str(tmp_path_factory.getbasetemp())
    existing = os.environ.get("WD_PIPELINE_DATA_ROOTS")
    patch.setenv("WD_PIPELINE_DATA_ROOTS", os.pathsep.join(filter(None, [existing, basetemp])))
    yield
    patch.undo()


@pytest.fixture(scope="session", autouse=True)
def session_prefect_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Prefect's home for the session, so a run without PREFECT_API_URL starts its background
    API here and never in the user's; every background API started under the session's
    folders (tests give subprocesses homes of their own) is stopped at its end."""
    home = seed_prefect_home(tmp_path_factory.mktemp("prefect-home"))
    patch = pytest.MonkeyPatch()
    patch.setenv("PREFECT_HOME", str(home))
    yield home
    stop_background_apis(tmp_path_factory.getbasetemp())
    patch.undo()


@pytest.fixture(autouse=True)
def no_background_api_outlives_its_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test's own folder holds no running background API after it (module folders: see their fixtures)."""
    folder = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    if folder is not None:
        stop_background_apis(folder)


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[Path]:
    """A fresh working directory holding its own MLflow SQLite store and work folder."""
    with isolated_store(tmp_path) as folder:
        yield folder


@pytest.fixture(scope="module")
def module_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Like ``workspace``, but kept for a whole module (creating a SQLite store costs seconds):
    tests keep apart by model and experiment names."""
    with isolated_store(tmp_path_factory.mktemp("store")) as folder:
        yield folder


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """A temporary Prefect API with its own database, shared by the flow tests."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield
        drain_prefect_workers(DRAIN_SECONDS)


DRAIN_SECONDS = 30.0


def drain_prefect_workers(seconds: float) -> None:
    """Let Prefect's log and event workers send what they hold, for at most ``seconds``.

    The harness drains them on exit without a bound; a worker left holding events for an API
    that has gone away (a test's own background API, stopped) then waits for ever and the test
    process never ends. A drained worker is stopped, so the harness finds nothing left to wait on.
    """
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=seconds)
    EventsWorker.drain_all(timeout=seconds)


@pytest.fixture
def bundled() -> pd.DataFrame:
    return pd.read_csv(BUNDLED)


@pytest.fixture
def tiny_frame() -> pd.DataFrame:
    """60 rows, 3 numeric features, a 0/1 label that depends on them: fast to train."""

    rng = np.random.default_rng(0)
    features = rng.normal(size=(60, 3))
    label = (features @ np.array([1.5, -1.0, 0.5]) + rng.normal(scale=0.3, size=60) > 0).astype(int)
    return pd.DataFrame(features, columns=["a", "b", "c"]).assign(y=label)
