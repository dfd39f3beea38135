"""The command line: instant help, one-line errors with the right exit code."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from wd_pipeline.cli import EXIT_BAD_SETTINGS, build_parser, config_from_args, main
from wd_pipeline.config import PipelineConfig, ScoreSettings
from wd_pipeline.ops import stack_commands
from wd_pipeline.ops.stack import StackSettings


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
        (["--epochs", "many"], "error: --epochs 'many' is not valid: give a whole number, e.g. --epochs 100\n"),
        (
            ["--hidden-units", "10,wide"],
            "error: --hidden-units '10,wide' is not valid: give whole numbers separated by commas, "
            "e.g. --hidden-units 10,10\n",
        ),
        (["--max-test-log-loss", "low"], "error: --max-test-log-loss 'low' is not valid: give a number\n"),
        (["--min-rows-per-class", "1"], "min_rows_per_class: Input should be greater than or equal to 2"),
        (["--rule", "median"], "rule: Input should be 'one-se' or 'best'"),
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
        (["--threshold", "high"], "error: --threshold 'high' is not valid: give a number\n"),
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


# Every flag the CLI had before its flags were generated from the models.
RUN_FLAG_NAMES = [
    "--data", "--label", "--positive-class", "--features", "--grid", "--epochs", "--batch-size", "--learning-rate",
    "--hidden-units", "--seed", "--folds", "--rule", "--modes", "--patience", "--chunk-size", "--dask-address",
    "--dask-workers", "--selection-metric", "--gate-metric", "--experiment", "--model-name", "--max-parallel",
    "--gate-margin", "--min-test-roc-auc", "--max-test-log-loss", "--bootstrap-samples", "--threshold", "--work-dir",
]  # fmt: skip


def options(command: list[str]) -> dict[str, argparse.Action]:
    parser = build_parser()
    for name in command:
        parser = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction)).choices[
            name
        ]
    return {flag: action for action in parser._actions for flag in action.option_strings}


@pytest.mark.parametrize(
    ("command", "model", "extra"),
    [
        (["run"], PipelineConfig, {"--config", "--verbose", "-v", "--help", "-h"}),
        (["score"], ScoreSettings, {"--verbose", "-v", "--help", "-h"}),
        (["stack", "up"], StackSettings, {"--help", "-h"}),
    ],
)
def test_one_flag_per_field_with_its_description(command: list[str], model, extra: set[str]) -> None:
    flags = options(command)
    fields = {name for name in model.model_fields if name != "auth"}  # auth comes from the environment
    assert set(flags) - extra == {"--" + name.replace("_", "-") for name in fields}
    for name in fields:
        action = flags["--" + name.replace("_", "-")]
        field = model.model_fields[name]
        assert action.dest == name and action.required == field.is_required()
        assert action.help.startswith(field.description.replace("%", "%%")), name
        if field.get_default(call_default_factory=True) is not None and not field.is_required():
            assert "(default: " in action.help, name


def test_the_old_flags_remain() -> None:
    assert set(RUN_FLAG_NAMES) <= set(options(["run"]))


def test_help_shows_defaults_choices_and_lists() -> None:
    flags = options(["run"])
    assert flags["--epochs"].help == "training epochs per grid point (default: 100)"
    assert flags["--hidden-units"].metavar == "HIDDEN_UNITS,..." and flags["--hidden-units"].help.endswith("10,10)")
    assert flags["--rule"].metavar == "{one-se,best}"
    assert flags["--modes"].metavar == "{l2,decoupled,dropout},..."
    assert flags["--gate-margin"].help.endswith("lower 95 %% bootstrap bound must exceed (default: 0)")
    assert "(default" not in flags["--max-test-log-loss"].help
    assert options(["stack", "up"])["--prefect-port"].help == "Prefect server port (default: 4200)"


def test_help_text_renders(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # as wrapped for any terminal width
    assert "--min-rows-per-class MIN_ROWS_PER_CLASS" in out and "lower 95 % bootstrap" in out


def test_every_setting_can_be_given_as_a_flag(tmp_path) -> None:
    argv = ["run", "--data", "other.csv", "--features", "a, b", "--grid", "0,1e-2", "--hidden-units", "4,2"]
    argv += ["--modes", "l2,decoupled", "--rule", "best", "--val-fraction", "0.1", "--test-fraction", "0.3"]
    argv += ["--min-rows-per-class", "20", "--selection-metric", "roc_auc", "--work-dir", str(tmp_path)]
    config = config_from_args(build_parser().parse_args(argv))
    assert (config.features, config.grid, config.hidden_units) == (["a", "b"], [0.0, 0.01], [4, 2])
    assert (config.modes, config.rule, config.val_fraction, config.test_fraction) == (
        ["l2", "decoupled"],
        "best",
        0.1,
        0.3,
    )
    assert (config.min_rows_per_class, config.selection_metric, config.work_dir) == (20, "roc_auc", str(tmp_path))


def test_an_empty_value_unsets_an_optional_setting(tmp_path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('max_test_log_loss = 0.5\nfeatures = ["a"]\ndask_address = "tcp://10.0.0.5:8786"\n')
    args = ["run", "--config", str(path), "--max-test-log-loss", "", "--features", "", "--dask-address", ""]
    config = config_from_args(build_parser().parse_args(args))
    assert (config.max_test_log_loss, config.features, config.dask_address) == (None, None, None)


def test_stack_up_flags_build_the_stack_settings() -> None:
    args = build_parser().parse_args(["stack", "up", "--prefect-port", "4300", "--timeout", "30", "--state-dir", "s"])
    settings = stack_commands.settings_from_args(args)
    assert (settings.prefect_port, settings.timeout, settings.state_dir) == (4300, 30.0, Path("s"))
    assert (settings.mlflow_port, settings.work_pool, settings.auth) == (5000, "wd-process", None)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["stack", "up", "--prefect-port", "http"], "error: --prefect-port 'http' is not valid: give a whole number, e.g. --prefect-port 4200\n"),
        (["stack", "up", "--mlflow-port", "70000"], "error: invalid settings: mlflow_port: Input should be less than or equal to 65535\n"),
    ],
)  # fmt: skip
def test_bad_stack_flags_exit_2_with_one_line(argv: list[str], message: str, capsys) -> None:
    assert main(argv) == EXIT_BAD_SETTINGS
    assert capsys.readouterr().err == message


def test_ui_serves_the_store_of_the_working_folder(capsys, monkeypatch, tmp_path) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    started: list[list[str]] = []
    monkeypatch.setattr("os.execvp", lambda program, argv: started.append(argv))
    assert main(["ui", "--port", "5055"]) == 0
    assert started[0][1:] == [
        "ui",
        "--backend-store-uri",
        f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}",
        "--host",
        "127.0.0.1",
        "--port",
        "5055",
    ]
    assert Path(started[0][0]).name == "mlflow"
    assert capsys.readouterr().out.startswith("MLflow UI   http://127.0.0.1:5055  on sqlite:///")


def test_ui_follows_mlflow_tracking_uri(capsys, monkeypatch, tmp_path) -> None:
    started: list[list[str]] = []
    monkeypatch.setattr("os.execvp", lambda program, argv: started.append(argv))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/runs.db")
    assert main(["ui"]) == 0
    assert started[0][2:4] == ["--backend-store-uri", f"sqlite:///{tmp_path}/runs.db"] and started[0][-1] == "5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert main(["ui"]) == 0 and len(started) == 1  # a server has its own UI: nothing is started
    assert "http://mlflow.example:5000" in capsys.readouterr().out.splitlines()[-1]


def test_ui_refuses_a_port_out_of_range(capsys) -> None:
    assert main(["ui", "--port", "70000"]) == EXIT_BAD_SETTINGS
    assert capsys.readouterr().err == "error: --port 70000 is not a port: give one from 1 to 65535, e.g. --port 5000\n"


@pytest.mark.parametrize(
    ("argv", "forwarded"),
    [
        (["ui", "--help"], "ui --help"),
        (["score", "--data", "x.csv"], "score --data x.csv"),
        (["stack", "up"], "stack up"),
        (["stack", "status"], "stack status"),
        (["deploy"], "deploy"),
        (["promote", "m", "3", "--reason", "x"], "promote m 3 --reason x"),
        (["rollback", "m"], "rollback m"),
        (["gc", "--older-than", "30d"], "gc --older-than 30d"),
        (["local-api", "status"], "local-api status"),
        ([], "run"),
    ],
)
def test_the_wd_script_has_one_verb_per_command(argv: list[str], forwarded: str, tmp_path) -> None:
    """The real script, beside a stand-in environment (a synced one, so nothing is installed)."""
    root = tmp_path / "checkout"
    (root / ".venv" / "bin").mkdir(parents=True)
    script = root / "wd"
    script.write_bytes((Path(__file__).parents[1] / "wd").read_bytes())
    (root / "uv.lock").write_text("")
    (root / "pyproject.toml").write_text("")
    stand_in = root / ".venv" / "bin" / "wd-pipeline"
    stand_in.write_text('#!/usr/bin/env bash\necho "$*"\n')
    stand_in.chmod(0o755)
    stamp = root / ".venv" / ".wd-synced"
    stamp.write_text("")
    later = (root / "uv.lock").stat().st_mtime + 60
    os.utime(stamp, (later, later))  # synced after the lock file changed: the script installs nothing
    done = subprocess.run(["bash", str(script), *argv], capture_output=True, text=True, timeout=30, check=True)
    assert done.stdout.strip() == forwarded
