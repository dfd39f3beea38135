"""``wd-pipeline``: the command line.

Flags, a config file and the defaults all become one :class:`PipelineConfig`; the run
itself is the Prefect flow, so a CLI run shows up in the Prefect UI like any other.
Prefect, MLflow and TensorFlow are imported only once a command needs them, which keeps
``--help`` instant. Errors a user can fix print one line (exit 2 for settings, 1 for the
run); the full trace goes to the log file, or to the terminal with ``--verbose``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wd_pipeline.config import (
    PROJECT_ROOT,
    PipelineConfig,
    ScoreSettings,
    check_work_dir,
    default_work_dir,
    load_config_file,
    make_config,
    make_settings,
    parse_grid,
)
from wd_pipeline.errors import ConfigError, PipelineError, first_line
from wd_pipeline.flags import Flag, add_flags, model_flags, parse_flags
from wd_pipeline.ops import stack_commands

if TYPE_CHECKING:
    from flows.summary import PipelineSummary
    from wd_pipeline.serving.scoring import ScoreResult, ScoreSettings

EXIT_RUN_FAILED = 1
EXIT_BAD_SETTINGS = 2
LOG_FILE = "wd-pipeline.log"
UI_HOST = "127.0.0.1"
UI_PORT = 5000


def run_flags() -> list[Flag]:
    return model_flags(PipelineConfig, parsers={"grid": parse_grid})


def score_flags() -> list[Flag]:
    return model_flags(ScoreSettings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wd-pipeline",
        description="Weight-decay (L2) study as a Prefect + MLflow pipeline.",
        epilog="Tracking and orchestration follow MLFLOW_TRACKING_URI and PREFECT_API_URL when set.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="run the whole pipeline: ingest, train the λ grid, evaluate, register")
    run.add_argument("--config", metavar="FILE", help="TOML or YAML file with the same settings as the flags")
    add_flags(run, PipelineConfig, run_flags())
    run.add_argument("--verbose", "-v", action="store_true", help="show full tracebacks and library warnings")
    score = commands.add_parser("score", help="score a CSV or Parquet file with the registered @champion model")
    add_flags(score, ScoreSettings, score_flags())
    score.add_argument("--verbose", "-v", action="store_true", help="show full tracebacks and library warnings")
    stack_commands.add_commands(commands)
    ui = commands.add_parser(
        "ui",
        help="open the MLflow UI on the store MLFLOW_TRACKING_URI names (else ./mlflow.db) and print its URL",
    )
    ui.add_argument("--host", default=UI_HOST, help=f"address the UI listens on (default: {UI_HOST})")
    ui.add_argument("--port", type=int, default=UI_PORT, help=f"port the UI listens on (default: {UI_PORT})")
    return parser


def config_from_args(args: argparse.Namespace) -> PipelineConfig:
    """Defaults < config file < flags."""
    settings: dict[str, Any] = load_config_file(args.config) if args.config else {}
    settings.update(parse_flags(args, run_flags()))
    return make_config(**settings)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "ui":
        if not 1 <= args.port <= 65_535:
            print(
                f"error: --port {args.port} is not a port: give one from 1 to 65535, e.g. --port 5000", file=sys.stderr
            )
            return EXIT_BAD_SETTINGS
        return open_ui(args.host, args.port)
    if args.command not in ("run", "score"):
        try:
            stack_settings = stack_commands.settings_from_args(args)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_BAD_SETTINGS
        try:
            return stack_commands.run_command(args, stack_settings)
        except PipelineError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_RUN_FAILED
    try:
        if args.command == "score":
            settings: Any = make_settings(ScoreSettings, **parse_flags(args, score_flags()))
            work_dir = default_work_dir()
        else:
            settings = config_from_args(args)
            work_dir = settings.work_dir
        check_work_dir(work_dir)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    log_path = _configure_logging(Path(work_dir), verbose=args.verbose)
    try:
        summary = _score(settings) if args.command == "score" else _run(settings)
    except PipelineError as exc:
        return _report_failure(args.command, str(exc), log_path)
    except Exception as exc:  # not the user's doing: still one line here, the trace in the log
        refusal = prefect_refusal(exc)
        if refusal is not None:
            return _report_failure(args.command, refusal, log_path)
        if args.verbose:
            raise
        return _report_failure(args.command, f"unexpected {type(exc).__name__}: {first_line(exc)}", log_path)
    print(format_score_summary(summary) if args.command == "score" else format_summary(summary))
    return 0


def prefect_refusal(exc: BaseException) -> str | None:
    """One line for a Prefect server that turned the client away for lack of credentials, else None."""
    import httpx

    if not isinstance(exc, httpx.HTTPStatusError) or exc.response.status_code not in (401, 403):
        return None
    url = os.environ.get("PREFECT_API_URL") or str(exc.request.url)
    return (
        f"the Prefect server at {url} refused the request (HTTP {exc.response.status_code}): "
        "set PREFECT_API_AUTH_STRING to the user:password it expects"
    )


def _report_failure(command: str, message: str, log_path: Path) -> int:
    logging.getLogger("wd_pipeline").error("%s failed: %s", command, message, exc_info=True)
    print(f"\nerror: {message}", file=sys.stderr)
    print(f"(full log: {log_path})", file=sys.stderr)
    return EXIT_RUN_FAILED


def _run(config: PipelineConfig) -> PipelineSummary:
    from flows.pipeline import weight_decay_pipeline

    return weight_decay_pipeline(**config.model_dump())


def _score(settings: ScoreSettings) -> ScoreResult:
    from flows.score import score

    return score(**settings.model_dump())


def ui_argv(tracking_uri: str, host: str, port: int) -> list[str]:
    """The ``mlflow ui`` command for a local store: the ``mlflow`` of this environment."""
    beside = Path(sys.executable).with_name("mlflow")
    mlflow = str(beside) if beside.exists() else "mlflow"
    return [mlflow, "ui", "--backend-store-uri", tracking_uri, "--host", host, "--port", str(port)]


def open_ui(host: str, port: int) -> int:
    """Serve the MLflow UI on the store a run here would use, in place of this process.

    A tracking server already serves its own UI: then only its address is printed.
    """
    from wd_pipeline.tracking.runs import is_local_store, tracking_uri

    uri = tracking_uri()
    if not is_local_store(uri):
        print(f"MLflow UI   {uri}  (the tracking server MLFLOW_TRACKING_URI names serves it)")
        return 0
    print(f"MLflow UI   http://{host}:{port}  on {uri}  (Ctrl-C stops it)", flush=True)
    command = ui_argv(uri, host, port)
    os.execvp(command[0], command)
    return 0  # not reached: exec replaces the process


def ui_command(tracking_uri: str) -> str:
    """A command that opens the MLflow UI on ``tracking_uri``'s store, pasted in any folder."""
    script = PROJECT_ROOT / "wd"
    launcher = f"{shlex.quote(str(script))} ui" if script.is_file() else "wd-pipeline ui"
    if tracking_uri.startswith("sqlite:///"):
        store = Path(tracking_uri.removeprefix("sqlite:///")).resolve()
        if store.name == "mlflow.db":  # the name ``ui`` looks for in the working directory
            return f"cd {shlex.quote(str(store.parent))} && {launcher}"
    return f"MLFLOW_TRACKING_URI={shlex.quote(tracking_uri)} {launcher}"


def format_score_summary(result: ScoreResult) -> str:
    gaps = [
        f"{name} " + ", ".join(f"{share:.1%} {kind}" for kind, share in shares.items() if share)
        for name, shares in result.inputs.items()
        if any(shares.values())
    ]
    lines = [
        "",
        f"scored        {result.rows} rows with {result.model_uri} (positive rate {result.positive_rate:.4f})",
        f"inputs        {'; '.join(gaps) if gaps else 'no missing values, no unseen categories'}",
    ]
    if result.metrics:
        metrics = ", ".join(f"{name} {value:.4f}" for name, value in result.metrics.items())
        lines.append(f"labelled rows {metrics}")
    lines += [f"predictions   {result.output}", f"MLflow run    {result.run_id}"]
    return "\n".join(lines)


def format_summary(summary: PipelineSummary) -> str:
    """What a person needs at the end: λ, test metrics, registry decision, where to look."""
    selection, decision = summary.evaluation.selection, summary.registry
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in summary.evaluation.test_metrics.items())
    served = summary.run_url.startswith("http")
    run = summary.run_url if served else f"experiment {summary.experiment_id}, run {summary.parent_run_id}"
    lines = [
        "",
        f"chosen        {selection.label}  (rule {selection.rule} on validation {selection.metric})",
        f"test metrics  {metrics}",
        f"registry      {decision.model_name} v{decision.version} → @{decision.alias}: {decision.reason}",
        f"MLflow run    {run}",
    ]
    if not served:
        lines.append(f"MLflow UI     {ui_command(summary.tracking_uri)}")
    return "\n".join([*lines, f"model         {decision.model_uri}"])


class _HideTracebacks(logging.Filter):
    """Console only: keep the message, drop exception traces and library warnings."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.exc_info is None and record.name != "py.warnings"


def _configure_logging(work_dir: Path, *, verbose: bool) -> Path:
    """Prefect's console output stays; traces and warnings go to a log file unless verbose."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Prefect's ephemeral API gives up after 20 s; a busy 2-core machine needs longer.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    from wd_pipeline.tracking.runs import bound_http_requests

    bound_http_requests()  # before MLflow is imported: a dead server fails in seconds, not minutes
    from prefect.logging.configuration import ensure_logging_setup

    ensure_logging_setup()  # before our handler: Prefect skips its console if root has one
    work_dir.mkdir(parents=True, exist_ok=True)
    log_path = (work_dir / LOG_FILE).resolve()
    handler = logging.FileHandler(log_path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    if not verbose:
        for console in root.handlers:
            console.addFilter(_HideTracebacks())
        logging.captureWarnings(True)
        warnings.simplefilter("default")
        import mlflow  # noqa: F401 - configures its loggers on import; quieten them after

        for noisy in ("mlflow", "tensorflow", "absl", "urllib3"):  # urllib3: one line per HTTP retry
            logging.getLogger(noisy).setLevel(logging.ERROR)
    root.addHandler(handler)
    logging.getLogger("wd_pipeline").setLevel(logging.DEBUG)
    return log_path


if __name__ == "__main__":
    raise SystemExit(main())
