"""The local stack a stack test runs against, and the deployments and tiny settings they share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from wd_pipeline.ops import stack

ADHOC = "weight-decay-pipeline/adhoc"
NIGHTLY = "weight-decay-pipeline/nightly"
TINY = {"grid": [0.0, 0.01], "epochs": 3}  # every run here: 2 λ, 3 epochs


@dataclass(frozen=True)
class LocalStack:
    state_dir: Path
    prefect_api_url: str
    mlflow_url: str
    env: dict[str, str]  # the caller's environment pointed at the stack (for subprocesses)
    settings: stack.StackSettings | None = None  # what it was started with (to restart one service)

    @property
    def prefect_ui(self) -> str:
        return self.prefect_api_url.removesuffix("/api")
