"""How long a flow or task may run before Prefect stops it, so that no run hangs forever.

A nightly run holds its deployment's only concurrency slot: a hung training call (a stuck
Dask worker, a deadlocked thread) would otherwise keep every later night waiting. The
bounds are generous on purpose: they exist to end a hang, never to cut short a slow run
that is still working.

- A training task (a chunk of λ values, or the refit) may take
  :data:`TRAINING_FLOOR_SECONDS` plus :data:`SECONDS_PER_ROW_EPOCH` for each row of the
  table, each epoch and each λ value it trains: a bound on the work it can do, with room for
  a slow, shared machine.
- The pipeline flow as a whole, whatever its settings, stops after
  :data:`PIPELINE_CEILING_SECONDS`, well within the day between two nightly runs; the score
  flow after :data:`SCORE_CEILING_SECONDS`. A flow's own timeout is fixed when it is
  declared, before its parameters are known, hence a ceiling rather than a derived bound.
  An operator sets another pipeline ceiling for a deployment's runs through the environment
  of the process that runs them (:data:`PIPELINE_CEILING_ENV`, e.g. as a job variable:
  ``prefect deployment run … --job-variable env='{"WD_PIPELINE_FLOW_TIMEOUT_SECONDS": "3600"}'``).

A timed-out run ends in Prefect's ``TimedOut`` state (a failure), which the deployment's
automation reports (see :mod:`wd_pipeline.ops.deploy`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

from wd_pipeline.config import PipelineConfig
from wd_pipeline.data import splits
from wd_pipeline.errors import ConfigError

PIPELINE_CEILING_ENV = "WD_PIPELINE_FLOW_TIMEOUT_SECONDS"
DEFAULT_PIPELINE_CEILING_SECONDS = 12 * 3600
SCORE_CEILING_SECONDS = 2 * 3600
TRAINING_FLOOR_SECONDS = 600.0
SECONDS_PER_ROW_EPOCH = 2e-4


def pipeline_ceiling(environ: Mapping[str, str] = os.environ) -> float:
    """Seconds the pipeline flow may run: :data:`PIPELINE_CEILING_ENV` when set, else the default."""
    text = environ.get(PIPELINE_CEILING_ENV, "").strip()
    if not text:
        return DEFAULT_PIPELINE_CEILING_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigError(
            f"{PIPELINE_CEILING_ENV}={text!r} is not a number of seconds: give a positive number, e.g. 3600, "
            f"or unset it for the default of {DEFAULT_PIPELINE_CEILING_SECONDS} s"
        )
    return seconds


PIPELINE_CEILING_SECONDS = pipeline_ceiling()


def training_seconds(config: PipelineConfig, rows: int, values: int, epochs: int | None = None) -> float:
    """The most a task training ``values`` λ values over ``rows`` rows may take."""
    return TRAINING_FLOOR_SECONDS + SECONDS_PER_ROW_EPOCH * (epochs or config.epochs) * rows * max(values, 1)


def table_rows(split_folder: str) -> int:
    """All rows of the table the splits came from: more than any split trains on."""
    return int(splits.read_manifest(split_folder)["rows"])
