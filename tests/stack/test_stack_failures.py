"""A stack that cannot start says why and leaves nothing running."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.helpers.postgres import Postgres
from wd_pipeline import processes
from wd_pipeline.cli import EXIT_RUN_FAILED, main
from wd_pipeline.errors import ServiceStartError
from wd_pipeline.ops import stack


@pytest.mark.slow
@pytest.mark.stack
def test_a_server_that_exits_on_start_is_reported_and_the_rest_stopped(tmp_path: Path) -> None:
    settings = stack.StackSettings(
        state_dir=tmp_path,
        prefect_port=stack.free_port(),
        mlflow_port=stack.free_port(),
        mlflow_backend_uri="nosuchdb://nowhere",
        timeout=180,
    )
    started: list[int] = []
    original = stack._start

    def recording_start(*args, **kwargs):
        record = original(*args, **kwargs)
        started.append(record.pid)
        return record

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stack, "_start", recording_start)
        with pytest.raises(ServiceStartError, match="mlflow-server exited during start-up") as failed:
            stack.up(settings)
    assert "mlflow-server.log" in str(failed.value)
    assert len(started) == 2 and not any(processes.alive(pid) for pid in started)
    assert not (tmp_path / stack.STATE_FILE).exists()


# ---------------------------------------------------------------- a wrong database: one line, nothing started

PREFECT = "--prefect-database-url"
MLFLOW = "--mlflow-backend-uri"
CHECK_CREDENTIALS = "check the user and password in"
CREATE_IT = "create it (as infra/postgres/create-databases.sh does) or correct its name in"


def hidden(url: str, password: str) -> str:
    return url.replace(f":{password}@", ":***@")


def port_of(url: str) -> int:
    return make_url(url).port


# Per case: the flag, the URL it is given (built on the test server), the line `stack up` prints after "error: ".
DATABASE_CASES: dict[str, tuple[str, Callable[[Postgres], str], Callable[[Postgres, str], str]]] = {
    "prefect wrong password": (
        PREFECT,
        lambda pg: pg.prefect_url(password="wrong"),
        lambda pg, url: (
            f"the Prefect server cannot use its database {hidden(url, 'wrong')}: "
            f'password authentication failed for user "{pg.user}"; {CHECK_CREDENTIALS} {PREFECT}'
        ),
    ),
    "mlflow wrong password": (
        MLFLOW,
        lambda pg: pg.mlflow_url(password="wrong"),
        lambda pg, url: (
            f"the MLflow server cannot use its database {hidden(url, 'wrong')}: "
            f'password authentication failed for user "{pg.user}"; {CHECK_CREDENTIALS} {MLFLOW}'
        ),
    ),
    "mlflow no password": (
        MLFLOW,
        lambda pg: pg.mlflow_url().replace(f":{pg.password}@", "@"),
        lambda pg, url: (
            f"the MLflow server cannot use its database {url}: "
            f"fe_sendauth: no password supplied; {CHECK_CREDENTIALS} {MLFLOW}"
        ),
    ),
    "prefect no such database": (
        PREFECT,
        lambda pg: pg.url("prefekt", "asyncpg"),
        lambda pg, url: (
            f"the Prefect server cannot use its database {hidden(url, pg.password)}: "
            f'database "prefekt" does not exist; {CREATE_IT} {PREFECT}'
        ),
    ),
    "mlflow no such database": (
        MLFLOW,
        lambda pg: pg.url("mlflw", "psycopg2"),
        lambda pg, url: (
            f"the MLflow server cannot use its database {hidden(url, pg.password)}: "
            f'database "mlflw" does not exist; {CREATE_IT} {MLFLOW}'
        ),
    ),
    "prefect nothing at that port": (
        PREFECT,
        lambda pg: pg.prefect_url().replace(f":{pg.port}/", f":{stack.free_port()}/"),
        lambda pg, url: (
            f"the Prefect server cannot use its database {hidden(url, pg.password)}: connection refused; "
            f"check that PostgreSQL runs at {pg.host}:{port_of(url)} and that {PREFECT} names its host and port"
        ),
    ),
    "mlflow nothing at that port": (
        MLFLOW,
        lambda pg: pg.mlflow_url().replace(f":{pg.port}/", f":{stack.free_port()}/"),
        lambda pg, url: (
            f"the MLflow server cannot use its database {hidden(url, pg.password)}: connection refused; "
            f"check that PostgreSQL runs at {pg.host}:{port_of(url)} and that {MLFLOW} names its host and port"
        ),
    ),
    "prefect synchronous driver": (
        PREFECT,
        lambda pg: pg.url("prefect", "psycopg2"),
        lambda pg, url: (
            "the Prefect server takes a postgresql+asyncpg:// (or sqlite+aiosqlite://) database URL, "
            f"not postgresql+psycopg2://: correct {PREFECT}"
        ),
    ),
    "mlflow asynchronous driver": (
        MLFLOW,
        lambda pg: pg.url("mlflow", "asyncpg"),
        lambda pg, url: (
            "the MLflow server needs a synchronous database driver, not postgresql+asyncpg://: "
            f"write e.g. postgresql+psycopg2:// in {MLFLOW}"
        ),
    ),
    "mlflow psycopg 3 implied": (
        MLFLOW,
        lambda pg: pg.mlflow_url().replace("postgresql+psycopg2://", "postgresql://"),
        lambda pg, url: (
            f"the MLflow server cannot use its database {hidden(url, pg.password)}: "
            "its driver is not installed (No module named 'psycopg'); write postgresql+psycopg2:// (psycopg2 is installed)"
        ),
    ),
}


@pytest.mark.stack
@pytest.mark.parametrize("case", DATABASE_CASES)
def test_a_wrong_database_is_one_line_and_starts_nothing(
    case: str, postgres: Postgres, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flag, build_url, expected = DATABASE_CASES[case]
    url = build_url(postgres)
    started: list[str] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stack, "_start", lambda *args: started.append(args[2]))
        argv = ["stack", "up", "--state-dir", str(tmp_path), "--prefect-port", str(stack.free_port())]
        code = main([*argv, "--mlflow-port", str(stack.free_port()), flag, url])
    err = capsys.readouterr().err
    assert (code, err) == (EXIT_RUN_FAILED, f"error: {expected(postgres, url)}\n")
    assert postgres.password not in err
    assert started == [] and not (tmp_path / stack.STATE_FILE).exists()
