"""Apply ``infra/prefect.yaml`` to a Prefect server.

The yaml is the single description of the deployments; this only runs Prefect's own
``prefect deploy`` on it from the project root (entrypoints are relative to it) against the
server named by ``PREFECT_API_URL`` or, failing that, the local stack's record. Settings
given to ``wd-pipeline deploy`` (flags or ``--config``, the same as a run's) become the
nightly deployment's parameters in a copy of the yaml, so pointing it at one's own table
needs no edit of the file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from wd_pipeline.config import PROJECT_ROOT
from wd_pipeline.errors import ConfigError, StackError, StackNotRunningError
from wd_pipeline.ops.stack import base_env, load_exports, venv_bin

PREFECT_FILE = PROJECT_ROOT / "infra" / "prefect.yaml"
NIGHTLY = "weight-decay-pipeline/nightly"


def deployment_name(entry: dict[str, Any]) -> str:
    """``flow-name/deployment-name`` of a deployment of the yaml: its name alone is not unique (both
    flows have an ``adhoc``), and ``prefect deploy --name`` with a bare name picks every match.

    The flow part is the entrypoint's function with dashes for underscores, which is how
    ``prefect deploy --name`` matches it and how the flows here are named.
    """
    function = str(entry.get("entrypoint", "")).rsplit(":", 1)[-1]
    return f"{function.replace('_', '-')}/{entry.get('name')}"


def prefect_api_url(state_dir: Path) -> str:
    """``PREFECT_API_URL`` when set, else the URL of the stack recorded in ``state_dir``."""
    url = os.environ.get("PREFECT_API_URL")
    if url:
        return url
    try:
        return load_exports(state_dir)["PREFECT_API_URL"]
    except StackNotRunningError:
        raise StackNotRunningError(
            f"no Prefect server to deploy to: set PREFECT_API_URL or start one with "
            f"`wd-pipeline stack up` (looked for a stack in {state_dir}/)"
        ) from None


def deploy(state_dir: Path, prefect_file: Path = PREFECT_FILE, names: list[str] | None = None) -> str:
    """Create or update the deployments of ``prefect_file`` (``names`` as ``flow-name/deployment-name``, all when
    None); returns Prefect's output."""
    bare = [name for name in names or [] if "/" not in name]
    if bare:
        raise ConfigError(
            f"deployment name {bare[0]!r} is ambiguous: name it as flow-name/deployment-name, e.g. {NIGHTLY!r}"
        )
    api_url = prefect_api_url(state_dir)
    command = [str(venv_bin() / "prefect"), "--no-prompt", "deploy", "--prefect-file", str(prefect_file.resolve())]
    command += [arg for name in names for arg in ("--name", name)] if names else ["--all"]
    result = subprocess.run(
        command,
        cwd=PROJECT_ROOT,
        env=base_env(PREFECT_API_URL=api_url),
        capture_output=True,
        text=True,
        check=False,
    )
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise StackError(
            f"`prefect deploy` of {prefect_file} to {api_url} failed (exit {result.returncode}): {_last_lines(output)}"
            ". Is the server up and its worker's pool created (`wd-pipeline stack status`)?"
        )
    if (names is None or NIGHTLY in names) and NIGHTLY in declared(prefect_file):
        output += install_nightly_alert(api_url)
    return output


def declared(prefect_file: Path) -> set[str]:
    """The ``flow-name/deployment-name`` of every deployment ``prefect_file`` declares."""
    import yaml

    spec = yaml.safe_load(prefect_file.read_text()) or {}
    return {deployment_name(entry) for entry in spec.get("deployments") or []}


def install_nightly_alert(api_url: str) -> str:
    """The automation that reacts to a failed, crashed or timed-out nightly run (see ``flows/alerts.py``).

    In its own process because the library never imports Prefect; it inherits the
    environment, so the webhook URL it reads (``WD_PIPELINE_ALERT_URL``) is the caller's.
    """
    command = [sys.executable, "-m", "flows.alerts"]
    result = subprocess.run(
        command, cwd=PROJECT_ROOT, env=base_env(PREFECT_API_URL=api_url), capture_output=True, text=True, check=False
    )
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise StackError(
            f"the nightly deployment's alert automation could not be created on {api_url} "
            f"(exit {result.returncode}): {_last_lines(output)}"
        )
    return output


def _last_lines(output: str) -> str:
    last = [line for line in output.strip().splitlines() if line.strip()][-5:]
    return " / ".join(line.strip() for line in last)


def with_nightly_parameters(parameters: dict[str, Any], folder: Path, prefect_file: Path = PREFECT_FILE) -> Path:
    """A copy of ``prefect_file`` in ``folder`` whose nightly deployment runs with ``parameters``."""
    import yaml

    spec = yaml.safe_load(prefect_file.read_text())
    nightly = [item for item in spec.get("deployments") or [] if deployment_name(item) == NIGHTLY]
    if not nightly:
        raise ConfigError(f"{prefect_file} has no deployment named {NIGHTLY!r} to give these settings to")
    nightly[0]["parameters"] = {**(nightly[0].get("parameters") or {}), **parameters}
    copy = folder / prefect_file.name
    copy.write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
    return copy
