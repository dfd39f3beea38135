"""``wd-pipeline stack up|status|down|env`` and ``wd-pipeline deploy``.

Kept apart from the ``run`` command so the CLI module stays about runs; nothing here
imports Prefect, MLflow or TensorFlow.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from wd_pipeline.ops import stack


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register ``stack`` and ``deploy`` on the top-level sub-command parser."""
    group = commands.add_parser("stack", help="local Prefect server, MLflow server and worker (no Docker)")
    actions = group.add_subparsers(dest="stack_command", required=True, metavar="ACTION")
    up = actions.add_parser("up", help="start the servers and the worker, wait until healthy, print the exports")
    up.add_argument(
        "--prefect-port", type=int, default=stack.DEFAULT_PREFECT_PORT, help="Prefect server port (default %(default)s)"
    )
    up.add_argument(
        "--mlflow-port", type=int, default=stack.DEFAULT_MLFLOW_PORT, help="MLflow server port (default %(default)s)"
    )
    up.add_argument(
        "--mlflow-backend-uri",
        metavar="URI",
        help="MLflow backend store, e.g. postgresql+psycopg2://… (default: SQLite in the state dir)",
    )
    up.add_argument(
        "--prefect-database-url",
        metavar="URL",
        help="Prefect database, e.g. postgresql+asyncpg://… (default: SQLite in the state dir)",
    )
    up.add_argument(
        "--work-pool", default=stack.DEFAULT_WORK_POOL, help="process work pool the worker polls (default %(default)s)"
    )
    up.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds each service may take to become healthy (default %(default)s)",
    )
    parsers = [up] + [
        actions.add_parser(action, help=text)
        for action, text in (
            ("status", "show whether each recorded process runs and is healthy"),
            ("down", "stop every recorded process (and what it spawned)"),
            ("env", 'print the export lines, for eval "$(wd-pipeline stack env)"'),
        )
    ]
    deploy = commands.add_parser(
        "deploy", help="apply infra/prefect.yaml to the Prefect server (PREFECT_API_URL or the local stack)"
    )
    deploy.add_argument("--prefect-file", type=Path, default=None, help="deployment file (default infra/prefect.yaml)")
    deploy.add_argument("--name", action="append", dest="names", help="only this deployment (repeatable; default all)")
    for parser in (*parsers, deploy):
        parser.add_argument(
            "--state-dir",
            type=Path,
            default=Path(stack.DEFAULT_STATE_DIR),
            help="folder holding the stack's state, logs and data (default %(default)s)",
        )


def run_command(args: argparse.Namespace) -> int:
    """Execute a ``stack`` or ``deploy`` command; errors propagate as :class:`PipelineError`."""
    if args.command == "deploy":
        from wd_pipeline.ops.deploy import PREFECT_FILE, deploy

        print(deploy(args.state_dir, args.prefect_file or PREFECT_FILE, args.names).rstrip())
        return 0
    return {"up": _up, "status": _status, "down": _down, "env": _env}[args.stack_command](args)


def _up(args: argparse.Namespace) -> int:
    settings = stack.StackSettings(
        state_dir=args.state_dir,
        prefect_port=args.prefect_port,
        mlflow_port=args.mlflow_port,
        mlflow_backend_uri=args.mlflow_backend_uri,
        prefect_database_url=args.prefect_database_url,
        work_pool=args.work_pool,
        timeout=args.timeout,
    )
    state = stack.up(settings, echo=print)
    ui = state.prefect_api_url.removesuffix("/api")
    print(
        f"\nPrefect UI  {ui}\nMLflow UI   {state.mlflow_url}\nstate       {settings.state_dir.resolve()}/ (logs/ for each service)\n"
    )
    print("Point clients at the stack:")
    print(_export_lines(state.exports()))
    return 0


def _status(args: argparse.Namespace) -> int:
    report = stack.status(args.state_dir)
    for service in report:
        condition = "healthy" if service.healthy else ("running, NOT healthy" if service.running else "NOT running")
        print(f"{service.name:<15} pid {service.pid:<8} {condition:<21} {service.url}")
    return 0 if report and all(s.healthy for s in report) else 1


def _down(args: argparse.Namespace) -> int:
    for record in stack.down(args.state_dir):
        print(f"stopped {record.name} (pid {record.pid})")
    return 0


def _env(args: argparse.Namespace) -> int:
    print(_export_lines(stack.load_exports(args.state_dir)))
    return 0


def _export_lines(exports: dict[str, str]) -> str:
    return "\n".join(f"export {key}={shlex.quote(value)}" for key, value in exports.items())
