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
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wd_pipeline import logs, preflight, progress, storage
from wd_pipeline.config import (
    PipelineConfig,
    ScoreSettings,
    check_work_dir,
    default_work_dir,
    load_config_file,
    make_config,
    make_settings,
    parse_grid,
)
from wd_pipeline.errors import ConfigError, DataError, PipelineError, first_line
from wd_pipeline.flags import Flag, add_flags, model_flags, parse_flags
from wd_pipeline.ops import local_api, stack_commands
from wd_pipeline.tracking import finished_runs

if TYPE_CHECKING:
    from flows.summary import PipelineSummary
    from wd_pipeline.serving.scoring import ScoreResult, ScoreSettings

EXIT_RUN_FAILED = 1
EXIT_BAD_SETTINGS = 2
LOG_FILE = logs.LOG_FILE
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
    deploy = commands.choices["deploy"]
    deploy.add_argument("--config", metavar="FILE", help="TOML or YAML file of run settings for the nightly deployment")
    add_flags(deploy, PipelineConfig, run_flags())
    ui = commands.add_parser(
        "ui",
        help="open the MLflow UI on the store MLFLOW_TRACKING_URI names (else ./mlflow.db) and print its URL",
    )
    promote = commands.add_parser(
        "promote", help="put VERSION of model NAME on @champion, overriding the gate, under the promotion lock"
    )
    promote.add_argument("name", metavar="NAME", help="registered model name, e.g. wd-classifier")
    promote.add_argument("version", metavar="VERSION", help="version number to promote, e.g. 3")
    promote.add_argument("--reason", required=True, help="why the gate is overridden (recorded on the version)")
    rollback = commands.add_parser(
        "rollback", help="put the champion before the current one back on @champion, under the promotion lock"
    )
    rollback.add_argument("name", metavar="NAME", help="registered model name, e.g. wd-classifier")
    rollback.add_argument("--reason", default="", help="why (recorded on the version)")
    add_local_api_command(commands)
    gc = commands.add_parser(
        "gc", help="remove trained units, splits and run artifacts older than AGE that no alias or newer run needs"
    )
    gc.add_argument("--older-than", required=True, metavar="AGE", help="age cut-off, e.g. 30d (units s, m, h, d, w)")
    gc.add_argument("--dry-run", action="store_true", help="only list what would be removed, with sizes")
    gc.add_argument("--work-dir", default=None, help="work folder (path or URL; default: the runs' own)")
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
    if args.command in ("promote", "rollback"):
        return move_champion(args)
    if args.command == "local-api":
        return local_api_command(args)
    if args.command == "deploy":
        return deploy_command(args)
    if args.command == "gc":
        return gc_command(args)
    if args.command not in ("run", "score"):
        return stack_command(args)
    try:
        if args.command == "score":
            settings: Any = make_settings(ScoreSettings, **parse_flags(args, score_flags()))
            work_dir = default_work_dir()
        else:
            settings = config_from_args(args)
            work_dir = settings.work_dir
        log_folder = check_work_dir(work_dir)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    if args.command == "run":
        try:
            check = preflight.check_data(settings)
        except DataError as exc:  # before Prefect starts: the flow would refuse the same data, only later
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_RUN_FAILED
        print(f"data          {check.source}: {check.rows} rows, {check.features} features", flush=True)
    tensorflow = args.command != "run" or not may_return_a_finished_run(settings)
    log_path, api = _configure_logging(log_folder, verbose=args.verbose, tensorflow=tensorflow)
    try:
        with _prefect_api(api):
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
    finally:
        storage.keep_log(log_path, work_dir)
    if args.command == "score":
        print(format_score_summary(summary))
    else:
        print("", format_grid(summary), format_summary(summary), sep="\n")
    return 0


def may_return_a_finished_run(config: PipelineConfig) -> bool:
    """Whether a run with these settings finished here before: the flow may then return its result
    without training, so TensorFlow is left for the flow to import if it trains after all."""
    try:
        return finished_runs.may_have_record(config)
    except Exception:  # the flow looks again, and says what is wrong with the work folder
        return False


def stack_command(args: argparse.Namespace) -> int:
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


def nightly_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """The run settings given to ``deploy`` (file, then flags), checked as a run's, as flow parameters."""
    given: dict[str, Any] = load_config_file(args.config) if args.config else {}
    given.update(parse_flags(args, run_flags()))
    if not given:
        return {}
    config = make_config(**given).model_dump(mode="json")
    return {name: config[name] for name in given}


def deploy_command(args: argparse.Namespace) -> int:
    """``deploy``: the yaml's deployments, the nightly one with the run settings given here."""
    from wd_pipeline.ops.deploy import PREFECT_FILE, with_nightly_parameters

    try:
        parameters = nightly_parameters(args)
        if not parameters:
            return stack_command(args)
        with tempfile.TemporaryDirectory() as folder:
            args.prefect_file = with_nightly_parameters(parameters, Path(folder), args.prefect_file or PREFECT_FILE)
            print("nightly parameters  " + ", ".join(f"{key}={value!r}" for key, value in parameters.items()))
            return stack_command(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_SETTINGS


def gc_command(args: argparse.Namespace) -> int:
    """``gc``: list (``--dry-run``) or remove what no protected alias and no newer run needs."""
    import datetime as dt

    from wd_pipeline.ops import retention

    try:
        cutoff = dt.datetime.now(dt.UTC) - retention.parse_age(args.older_than)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    from wd_pipeline.tracking import runs

    try:
        client = runs.get_client()
        plan = retention.make_plan(client, args.work_dir or default_work_dir(), cutoff)
        done = plan.remove if args.dry_run else retention.apply(client, plan)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_RUN_FAILED
    verb = "would remove" if args.dry_run else "removed"
    for item in done:
        print(f"{verb:<12}  {item.line()}")
    size = retention.human_size(sum(item.size for item in done))
    outcome = "to remove" if args.dry_run else "removed"
    print(f"{len(done)} item(s), {size} {outcome}; kept what {plan.kept_runs} run(s) need (aliases, newer runs)")
    return 0


def move_champion(args: argparse.Namespace) -> int:
    """``promote`` / ``rollback``: one line saying what moved, or why nothing did."""
    if args.command == "promote" and not args.version.isdigit():
        print(f"error: VERSION {args.version!r} is not a version number: give one like 3", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    from wd_pipeline.tracking.runs import bound_http_requests

    bound_http_requests()  # before MLflow is imported: a dead server fails in seconds, not minutes
    from wd_pipeline.tracking import promotion, runs

    try:
        client = runs.get_client()
        if args.command == "promote":
            move = promotion.promote(client, args.name, args.version, reason=args.reason)
        else:
            move = promotion.rollback(client, args.name, reason=args.reason)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_SETTINGS
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_RUN_FAILED
    before = f"v{move.previous}" if move.previous else "none"
    print(f"@champion     {move.model_name} v{move.version} (was {before}): {move.how} by {move.by}, {move.reason}")
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
    if result.drift is not None:
        lines.append(f"drift         {result.drift.summary()}")
    if result.metrics:
        metrics = ", ".join(f"{name} {value:.4f}" for name, value in result.metrics.items())
        lines.append(f"labelled rows {metrics}")
    lines += [f"predictions   {result.output}", f"MLflow run    {result.run_id}"]
    return "\n".join(lines)


GRID_COLUMNS = (
    ("val_accuracy", "val accuracy", "{:.4f}"),
    ("weight_norm", "‖w‖", "{:.3f}"),
    ("stopped_epoch", "epochs", "{:.0f}"),
)


def format_grid(summary: PipelineSummary) -> str:
    """The grid's cross-validated results, one row per (mode, λ), the chosen one marked."""
    from wd_pipeline.config import format_lambda

    selection, rows = summary.evaluation.selection, summary.evaluation.grid
    metric = f"val_{selection.metric}"
    extra = [column for column in GRID_COLUMNS if all(column[0] in row for row in rows)]
    header = ["mode", "λ", f"val {selection.metric}", *(title for _, title, _ in extra), ""]
    table = [header]
    for row in rows:
        value = f"{row[metric]:.4f}" + (f" ± {row[metric + '_se']:.4f}" if metric + "_se" in row else "")
        chosen = (row["mode"], row["lambda"]) == (selection.mode, selection.lam)
        cells = [row["mode"], format_lambda(row["lambda"]), value, *(form.format(row[key]) for key, _, form in extra)]
        table.append([*cells, "← chosen" if chosen else ""])
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() for line in table
    )


def format_summary(summary: PipelineSummary) -> str:
    """What a person needs at the end: λ, test metrics, registry decision, where to look."""
    selection, decision = summary.evaluation.selection, summary.registry
    metrics = ", ".join(f"{k} {v:.4f}" for k, v in summary.evaluation.test_metrics.items())
    served = summary.run_url.startswith("http")
    run = summary.run_url if served else f"experiment {summary.experiment_id}, run {summary.parent_run_id}"
    reused = (
        [f"reused        the result of the finished flow run {summary.reused_from} (same data and settings)"]
        if summary.reused_from
        else []
    )
    lines = [
        "",
        *reused,
        f"chosen        {selection.label}  (rule {selection.rule} on validation {selection.metric})",
        f"test metrics  {metrics}",
        *([f"worst slice   {summary.evaluation.slices.worst_text()}"] if summary.evaluation.slices else []),
        f"registry      {decision.model_name} v{decision.version} → @{decision.alias}: {decision.reason}"
        + (f" ({finished_runs.DECIDED_THEN})" if summary.reused_from else ""),
        f"MLflow run    {run}",
    ]
    if not served:
        from wd_pipeline.tracking.runs import ui_command

        lines.append(f"MLflow UI     {ui_command(summary.tracking_uri)}")
    return "\n".join([*lines, f"model         {decision.model_uri}"])


def _configure_logging(
    work_dir: Path, *, verbose: bool, tensorflow: bool = True
) -> tuple[Path, local_api.Starting | None]:
    """The story to the terminal, everything to the log file (see :mod:`wd_pipeline.logs`).

    Also sets the background Prefect API starting (when the run is to use it), so that its
    start overlaps TensorFlow's import.
    """
    logs.quiet_environment(verbose=verbose)
    from wd_pipeline.tracking.runs import bound_http_requests

    bound_http_requests()  # before MLflow is imported: a dead server fails in seconds, not minutes
    from prefect.logging.configuration import ensure_logging_setup
    from prefect.settings import PREFECT_API_URL

    # Any PREFECT_API_URL (variable, profile, prefect.toml) means a server the user chose.
    api = None if PREFECT_API_URL.value() else local_api.ensure_in_background()
    ensure_logging_setup()  # before our handler: Prefect skips its console if root has one
    log_path = logs.configure(work_dir, verbose=verbose)
    if not verbose:
        if tensorflow:
            logs.import_tensorflow(log_path)  # its C++ banners go to the log file, not the terminal
        progress.show_on_terminal(logs.TERMINAL, sys.stderr)
    return log_path, api


@contextmanager
def _prefect_api(starting: local_api.Starting | None) -> Iterator[None]:
    """Point Prefect (and processes started from here, e.g. Dask workers) at the background API, if any."""
    if starting is None:
        yield
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    api = starting.result()
    print(f"Prefect UI    {api.ui_url}  (background API; `wd-pipeline local-api stop` stops it)", flush=True)
    os.environ["PREFECT_API_URL"] = api.api_url
    try:
        with temporary_settings(updates={PREFECT_API_URL: api.api_url}):
            yield
    finally:
        os.environ.pop("PREFECT_API_URL", None)


def add_local_api_command(commands: argparse._SubParsersAction) -> None:
    local = commands.add_parser(
        "local-api",
        help="the background Prefect API (and UI) that runs without PREFECT_API_URL share: start, status, stop",
    )
    actions = local.add_subparsers(dest="local_api_command", required=True, metavar="ACTION")
    actions.add_parser("start", help="start it (or find it running) and print the Prefect UI's URL")
    actions.add_parser("status", help="show whether it runs and where")
    actions.add_parser("stop", help="stop it; the next run starts it again")


def local_api_command(args: argparse.Namespace) -> int:
    """``local-api start|status|stop`` for the ``PREFECT_HOME`` of this environment."""
    home = local_api.prefect_home()
    # The server settings a run sets for itself: with others, the next run would not reuse this API.
    logs.quiet_environment(verbose=False)
    if args.local_api_command == "start":
        try:
            api = local_api.ensure(home)
        except PipelineError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_RUN_FAILED
        print(f"Prefect UI    {api.ui_url}  (API {api.api_url}, pid {api.pid}, home {home})")
        if os.environ.get("PREFECT_API_URL"):
            print(f"note          runs here use PREFECT_API_URL={os.environ['PREFECT_API_URL']}, not this API")
        return 0
    if args.local_api_command == "status":
        api, up = local_api.status(home)
        if api is None:
            print(f"local API     none recorded in {home}")
        else:
            print(f"local API     {'running' if up else 'not running'}: {api.ui_url} (pid {api.pid}, home {home})")
        return 0 if up else 1
    stopped = local_api.stop(home)
    print(f"local API     {'stopped ' + stopped.ui_url if stopped else 'none was running'} (home {home})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
