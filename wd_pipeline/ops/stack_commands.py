"""``wd-pipeline stack up|status|down|env`` and ``wd-pipeline deploy``.

Kept apart from the ``run`` command so the CLI module stays about runs; nothing here
imports Prefect, MLflow or TensorFlow.
"""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from wd_pipeline.config import make_settings
from wd_pipeline.flags import Flag, add_flags, model_flags, parse_flags
from wd_pipeline.ops import stack


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register ``stack`` and ``deploy`` on the top-level sub-command parser."""
    group = commands.add_parser("stack", help="local Prefect server, MLflow server and worker (no Docker)")
    actions = group.add_subparsers(dest="stack_command", required=True, metavar="ACTION")
    up = actions.add_parser("up", help="start the servers and the worker, wait until healthy, print the exports")
    add_flags(up, stack.StackSettings, up_flags())
    others = [
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
    deploy.add_argument(
        "--name",
        action="append",
        dest="names",
        help="only this deployment, as flow-name/deployment-name (repeatable; default all)",
    )
    for parser in (*others, deploy):
        add_flags(parser, stack.StackSettings, state_dir_flags())


def up_flags() -> list[Flag]:
    return model_flags(stack.StackSettings, exclude={"auth"})  # credentials come from the environment


def state_dir_flags() -> list[Flag]:
    """The one setting the other commands share with ``up``: where the stack's state is."""
    return model_flags(stack.StackSettings, only={"state_dir"})


def settings_from_args(args: argparse.Namespace) -> stack.StackSettings:
    """The settings a ``stack`` or ``deploy`` command was given; a bad value is a ConfigError."""
    flags = up_flags() if getattr(args, "stack_command", None) == "up" else state_dir_flags()
    return make_settings(stack.StackSettings, **parse_flags(args, flags))


def run_command(args: argparse.Namespace, settings: stack.StackSettings) -> int:
    """Execute a ``stack`` or ``deploy`` command; errors propagate as :class:`PipelineError`."""
    if args.command == "deploy":
        from wd_pipeline.ops.deploy import PREFECT_FILE, deploy

        print(deploy(settings.state_dir, args.prefect_file or PREFECT_FILE, args.names).rstrip())
        return 0
    return {"up": _up, "status": _status, "down": _down, "env": _env}[args.stack_command](settings)


def _up(settings: stack.StackSettings) -> int:
    state = stack.up(settings, echo=print)
    ui = state.prefect_api_url.removesuffix("/api")
    print(
        f"\nPrefect UI  {ui}\nMLflow UI   {state.mlflow_url}\nstate       {settings.state_dir.resolve()}/ (logs/ for each service)\n"
    )
    print("Point clients at the stack:")
    print(_export_lines(state.exports()))
    return 0


def _status(settings: stack.StackSettings) -> int:
    report = stack.status(settings.state_dir)
    for service in report:
        condition = "healthy" if service.healthy else ("running, NOT healthy" if service.running else "NOT running")
        print(f"{service.name:<15} pid {service.pid:<8} {condition:<21} {service.url}")
    return 0 if report and all(s.healthy for s in report) else 1


def _down(settings: stack.StackSettings) -> int:
    for record in stack.down(settings.state_dir):
        print(f"stopped {record.name} (pid {record.pid})")
    return 0


def _env(settings: stack.StackSettings) -> int:
    print(_export_lines(stack.load_exports(settings.state_dir)))
    return 0


def _export_lines(exports: dict[str, str]) -> str:
    return "\n".join(f"export {key}={shlex.quote(value)}" for key, value in exports.items())
