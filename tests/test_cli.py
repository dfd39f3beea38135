"""The command line: instant help, one-line errors with the right exit code."""

from __future__ import annotations

import subprocess
import sys

import pytest

from wd_pipeline.cli import EXIT_BAD_SETTINGS, build_parser, config_from_args, main


def test_help_does_not_import_tensorflow_prefect_or_mlflow() -> None:
    code = (
        "import sys\n"
        "from wd_pipeline.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('tensorflow', 'keras', 'prefect', 'mlflow') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--grid", ""], "--grid is empty"),
        (["--grid=-1e-3,0"], "grid.0: Input should be greater than or equal to 0"),
        (["--grid", "nan"], "grid.0: Input should be a finite number"),
        (["--epochs", "0"], "epochs: Input should be greater than or equal to 1"),
        (["--epochs", "many"], "--epochs 'many' is not valid"),
        (["--batch-size", "0"], "batch_size: Input should be greater than or equal to 1"),
        (["--config", "missing.toml"], "config file not found: missing.toml"),
        (["--dask-workers", "2", "--dask-address", "tcp://10.0.0.5:8786"], "are both set"),
    ],
)
def test_bad_flags_exit_2_with_one_line(argv: list[str], message: str, capsys, workspace) -> None:
    assert main(["run", *argv]) == EXIT_BAD_SETTINGS
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_flags_override_config_file(tmp_path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("epochs: 3\nbatch_size: 8\ngrid: [0, 0.1]\n")
    args = build_parser().parse_args(["run", "--config", str(path), "--epochs", "5"])
    config = config_from_args(args)
    assert (config.epochs, config.batch_size, config.grid) == (5, 8, [0, 0.1])


def test_new_data_source_drops_bundled_positive_class(tmp_path) -> None:
    args = build_parser().parse_args(["run", "--data", "other.csv", "--label", "y"])
    assert config_from_args(args).positive_class is None
    args = build_parser().parse_args(["run", "--data", "other.csv", "--positive-class", "yes"])
    assert config_from_args(args).positive_class == "yes"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--threshold", "1.5"], "threshold: Input should be less than 1"),
        (["--threshold", "high"], "--threshold 'high' is not valid"),
        (["--model-name", "bad/name"], "model_name: String should match pattern"),
    ],
)
def test_bad_score_flags_exit_2_with_one_line(argv: list[str], message: str, capsys, workspace) -> None:
    assert main(["score", "--data", "new.csv", "--output", "out.parquet", *argv]) == EXIT_BAD_SETTINGS
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_score_needs_data_and_output(capsys) -> None:
    with pytest.raises(SystemExit) as caught:
        build_parser().parse_args(["score", "--data", "new.csv"])
    assert caught.value.code == 2
    assert "--output" in capsys.readouterr().err


def test_gate_flags_reach_the_config() -> None:
    args = build_parser().parse_args(
        [
            "run",
            "--gate-margin",
            "0.01",
            "--min-test-roc-auc",
            "0.7",
            "--max-test-log-loss",
            "0.5",
            "--bootstrap-samples",
            "500",
            "--threshold",
            "0.4",
        ]
    )
    config = config_from_args(args)
    assert (config.gate_margin, config.min_test_roc_auc, config.max_test_log_loss) == (0.01, 0.7, 0.5)
    assert (config.bootstrap_samples, config.threshold) == (500, 0.4)


def test_unexpected_failure_is_one_line_and_logged(capsys, workspace, monkeypatch) -> None:
    """A bug or an outage we did not foresee still reads as one line; the trace is in the log."""
    import wd_pipeline.cli as cli

    def explode(config):
        raise RuntimeError("ephemeral API did not start\nsecond line")

    monkeypatch.setattr(cli, "_run", explode)
    assert main(["run", "--grid", "0"]) == 1
    err = capsys.readouterr().err
    assert "error: unexpected RuntimeError: ephemeral API did not start" in err
    assert "Traceback" not in err and "second line" not in err
    assert "Traceback" in (workspace / "work" / "wd-pipeline.log").read_text()
