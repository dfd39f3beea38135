"""Fail fast: the command refuses bad data before Prefect starts, with the message the flow would give."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from wd_pipeline import cli, preflight
from wd_pipeline.config import make_config
from wd_pipeline.errors import DataError

# The data cases of the bad-input matrix the flow refuses; all but these need no split to be found.
NEEDS_THE_SPLIT = {"folds larger than a class", "more folds than groups", "positives in one group"}


def matrix_data_cases() -> dict:
    from tests.flows.test_bad_input_matrix import DATA_CASES

    return DATA_CASES


@pytest.mark.parametrize("case", [name for name in matrix_data_cases() if name not in NEEDS_THE_SPLIT])
def test_the_check_gives_the_flows_message_for_every_bad_data_case(case: str, tmp_path: Path) -> None:
    from tests.flows.test_bad_input_matrix import RUN

    build, settings = matrix_data_cases()[case]
    path, expected = build(tmp_path)
    with pytest.raises(DataError) as caught:
        preflight.check_data(make_config(**{**RUN, "data": path, **settings}))
    message = str(caught.value)
    if case in {"not CSV or Parquet", "fewer rows than needed", "outside the data roots"}:
        assert message.startswith(expected), message
    else:
        assert message == expected


def test_good_data_passes_and_is_described(tiny_frame, tmp_path: Path) -> None:
    path = tmp_path / "tiny.csv"
    tiny_frame.to_csv(path, index=False)
    check = preflight.check_data(make_config(data=str(path), label="y"))
    assert (check.source, check.rows, check.features) == (str(path), 60, 3)


def test_the_cli_stops_before_the_flow_on_bad_data(capsys, workspace, monkeypatch) -> None:
    def flow_started(config):
        raise AssertionError("the flow started")

    monkeypatch.setattr(cli, "_run", flow_started)
    assert cli.main(["run", "--label", "diagnosys"]) == cli.EXIT_RUN_FAILED
    err = capsys.readouterr().err
    assert err.startswith("error: label column 'diagnosys' not found;") and "Did you mean 'diagnosis'?" in err
    assert len(err.strip().splitlines()) == 1
    assert not (workspace / "work" / cli.LOG_FILE).exists()


def test_the_cli_names_the_data_before_the_flow_starts(capsys, workspace, monkeypatch) -> None:
    def flow_started(config):
        raise RuntimeError("flow reached")

    monkeypatch.setattr(cli, "_run", flow_started)
    cli.main(["run", "--grid", "0"])
    assert "breast_cancer.csv: 569 rows, 30 features" in capsys.readouterr().out


PROBE = (
    "import sys\n"
    "from wd_pipeline.cli import main\n"
    "code = main(sys.argv[1:])\n"
    "print('imported:', sorted(m for m in ('prefect', 'mlflow', 'tensorflow') if m in sys.modules))\n"
    "sys.exit(code)\n"
)


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["--label", "diagnosys"], "error: label column 'diagnosys' not found;"),
        (["--data", "nowhere.csv"], "error: data file not found: nowhere.csv."),
    ],
)
def test_a_bad_label_or_missing_file_never_imports_prefect(argv: list[str], error: str, workspace: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, "run", *argv], capture_output=True, text=True, cwd=workspace, timeout=120
    )
    assert done.returncode == cli.EXIT_RUN_FAILED
    assert done.stderr.startswith(error) and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "imported: []"
