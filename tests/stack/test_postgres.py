"""The local stack on PostgreSQL: Prefect on asyncpg, MLflow on psycopg2, one server for both.

The shared ``production_stack`` (tests/stack/conftest.py), started through the real command
(`wd-pipeline stack up --prefect-database-url … --mlflow-backend-uri …`, its artifacts and
work folder in S3) against Debian's PostgreSQL, set up with compose's own init script
(``tests/helpers/postgres.py``). The checks of ``test_outages.py`` (a deployment run through a
20 s MLflow outage) and ``test_promotion_race_server.py`` (the registry race) run again on
this stack, and what the servers' APIs report (what their UIs show) is read back from the two
databases with SQL. One PostgreSQL server and one stack serve this module and the other
modules on the production stores."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from tests.helpers.local_stack import ADHOC, LocalStack
from tests.helpers.postgres import Postgres
from tests.stack import test_outages as outages
from tests.stack import test_promotion_race_server as race
from wd_pipeline import processes
from wd_pipeline.ops import stack
from wd_pipeline.tracking import runs

pytestmark = [pytest.mark.slow, pytest.mark.stack]


@pytest.fixture(scope="module")
def outage_run(production_stack: LocalStack) -> tuple[Any, float]:
    """The deployment run of ``test_outages``: the MLflow server (on PostgreSQL) away for 20 s mid-grid."""
    return outages.run_through_mlflow_outage(production_stack)


def read_deployment(name: str) -> Any:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_deployment_by_name(name)


def command_lines(state_dir: Path) -> list[str]:
    """The command line of every process the stack started, and of what those started."""
    pids = []
    for record in stack.StackState.load(state_dir).services:
        pids += [record.pid, *processes.descendants(record.pid)]
    lines = []
    for pid in pids:
        try:
            lines.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
        except OSError:  # ended since
            continue
    return lines


def test_both_servers_keep_their_state_in_postgresql_only(production_stack: LocalStack, postgres: Postgres) -> None:
    assert [(h.name, h.healthy) for h in stack.status(production_stack.state_dir)] == [
        (stack.PREFECT_SERVER, True),
        (stack.MLFLOW_SERVER, True),
        (stack.PREFECT_WORKER, True),
    ]
    for database in ("prefect", "mlflow"):  # both schemas migrated by their server
        assert len(postgres.query(database, "SELECT version_num FROM alembic_version")) == 1, database
    assert sorted(production_stack.state_dir.rglob("*.db")) == []  # no SQLite fallback anywhere
    assert postgres.query("prefect", "SELECT name FROM work_pool") == [(stack.DEFAULT_WORK_POOL,)]


def test_the_database_password_is_in_no_command_line_and_not_in_the_state_file(
    production_stack: LocalStack, postgres: Postgres
) -> None:
    lines = command_lines(production_stack.state_dir)
    assert any("mlflow" in line for line in lines) and any("prefect" in line for line in lines)
    assert [line for line in lines if postgres.password in line] == []
    assert postgres.password not in (production_stack.state_dir / stack.STATE_FILE).read_text()


def test_a_deployment_run_completes_through_an_mlflow_outage(
    production_stack: LocalStack, outage_run: tuple[Any, float]
) -> None:
    final, down = outage_run
    assert final.deployment_id == read_deployment(ADHOC).id
    outages.check_survived_mlflow_outage(production_stack, final, down)


def test_creating_the_lock_is_atomic_through_the_tracking_server(production_stack: LocalStack, tmp_path: Path) -> None:
    race.test_creating_the_lock_is_atomic_through_the_tracking_server(production_stack.mlflow_url, tmp_path)


def test_two_runs_at_once_keep_both_versions_and_the_better_one_is_champion(
    production_stack: LocalStack, tmp_path: Path
) -> None:
    race.two_runs_at_once_keep_both_versions_and_the_better_one_is_champion(production_stack.mlflow_url, tmp_path)


# ---------------------------------------------------------------- what the UIs show, in the tables


def mlflow_as_served(client: MlflowClient) -> dict[str, set[tuple[str, ...]]]:
    """Experiments, runs, model versions and aliases as the MLflow server's REST API reports them."""
    experiments = client.search_experiments()
    found = client.search_runs([e.experiment_id for e in experiments], max_results=5000)
    models = client.search_registered_models(max_results=1000)
    return {
        "experiments": {(e.experiment_id, e.name) for e in experiments},
        "runs": {(r.info.run_id, r.info.run_name, r.info.status) for r in found},
        "versions": {(v.name, str(v.version), v.run_id) for v in client.search_model_versions(max_results=5000)},
        "aliases": {(m.name, alias, str(version)) for m in models for alias, version in m.aliases.items()},
    }


def mlflow_as_stored(postgres: Postgres) -> dict[str, set[tuple[str, ...]]]:
    """The same, read with SQL from MLflow's tables."""

    def rows(sql: str) -> set[tuple[str, ...]]:
        return {tuple(str(value) for value in row) for row in postgres.query("mlflow", sql)}

    return {
        "experiments": rows("SELECT experiment_id, name FROM experiments WHERE lifecycle_stage = 'active'"),
        "runs": rows("SELECT run_uuid, name, status FROM runs WHERE lifecycle_stage = 'active'"),
        "versions": rows("SELECT name, version, run_id FROM model_versions WHERE current_stage != 'Deleted_Internal'"),
        "aliases": rows("SELECT name, alias, version FROM registered_model_aliases"),
    }


def test_postgresql_holds_what_the_servers_show(
    outage_run: tuple[Any, float], production_stack: LocalStack, postgres: Postgres
) -> None:
    """Everything on both servers (the runs of this module and of the others on the stack so far) equals
    the rows in their databases."""
    from prefect.client.orchestration import get_client

    client = MlflowClient(tracking_uri=production_stack.mlflow_url, registry_uri=production_stack.mlflow_url)
    served, stored = mlflow_as_served(client), mlflow_as_stored(postgres)
    for kind in served:
        assert served[kind] == stored[kind], kind

    with get_client(sync_client=True) as prefect:
        flow_runs = {(str(r.id), r.name, r.state.type.value) for r in prefect.read_flow_runs(limit=200)}
        deployments = {d.name for d in prefect.read_deployments()}
    stored_runs = postgres.query("prefect", "SELECT id, name, state_type FROM flow_run")
    assert flow_runs == {(str(id_), name, state) for id_, name, state in stored_runs}
    assert deployments == {name for (name,) in postgres.query("prefect", "SELECT name FROM deployment")}

    # The deployment run, row by row: COMPLETED in Prefect's table, linked from its MLflow
    # parent run, whose registered version carries the aliases the registry shows.
    final, _ = outage_run
    assert (str(final.id), final.name, "COMPLETED") in flow_runs
    (parent,) = postgres.query(
        "mlflow",
        "SELECT r.run_uuid, r.status FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
        "JOIN experiments e ON e.experiment_id = r.experiment_id "
        "WHERE e.name = %s AND t.key = %s AND t.value = %s "
        "AND NOT EXISTS (SELECT 1 FROM tags p WHERE p.run_uuid = r.run_uuid AND p.key = %s)",
        (outages.MLFLOW_OUTAGE, runs.PREFECT_RUN_TAG, str(final.id), runs.PARENT_RUN_TAG),
    )
    assert parent[1] == "FINISHED"
    ((version,),) = postgres.query(
        "mlflow",
        "SELECT version FROM model_versions WHERE name = %s AND run_id = %s",
        (outages.MLFLOW_OUTAGE, parent[0]),
    )
    aliases = postgres.query(
        "mlflow",
        "SELECT alias FROM registered_model_aliases WHERE name = %s AND version = %s",
        (outages.MLFLOW_OUTAGE, version),
    )
    assert aliases and {a for (a,) in aliases} == set(client.get_model_version(outages.MLFLOW_OUTAGE, version).aliases)
