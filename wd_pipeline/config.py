"""One typed description of a pipeline run.

The same field types serve three masters: :class:`PipelineConfig` (the library and the CLI),
the Prefect flow's signature (so the UI renders a form and rejects bad values with the
field's own message) and the MLflow parent run's params. Constraints therefore live in the
``Annotated`` aliases below and nowhere else.
"""

from __future__ import annotations

import math
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from wd_pipeline.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = "data/breast_cancer.csv"
DEFAULT_LABEL = "diagnosis"
DEFAULT_POSITIVE_CLASS = "malignant"
DEFAULT_EXPERIMENT = "weight-decay-pipeline"
DEFAULT_MODEL_NAME = "wd-classifier"
# {0} ∪ half-decades from 1e-5 to 1: wide enough that both under- and over-regularised
# models appear on the validation curve of the bundled dataset.
DEFAULT_GRID: tuple[float, ...] = (
    0.0,
    1e-5,
    3e-5,
    1e-4,
    3e-4,
    1e-3,
    3e-3,
    1e-2,
    3e-2,
    1e-1,
    3e-1,
    1.0,
)

Lambda = Annotated[float, Field(ge=0.0, le=1e3, allow_inf_nan=False)]
Grid = Annotated[list[Lambda], Field(min_length=1, max_length=256)]
Epochs = Annotated[int, Field(ge=1, le=100_000)]
BatchSize = Annotated[int, Field(ge=1, le=1_000_000)]
LearningRate = Annotated[float, Field(gt=0.0, le=10.0, allow_inf_nan=False)]
Seed = Annotated[int, Field(ge=0, le=2**31 - 1)]
Fraction = Annotated[float, Field(gt=0.0, lt=0.5, allow_inf_nan=False)]
HiddenUnits = Annotated[list[Annotated[int, Field(ge=1, le=4096)]], Field(min_length=1, max_length=8)]
Name = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[\w.\- ]+$")]
ColumnName = Annotated[str, Field(min_length=1, max_length=500)]
Parallelism = Annotated[int, Field(ge=1, le=64)]
SelectionMetric = Literal["log_loss", "roc_auc", "accuracy", "f1", "brier"]
Mode = Literal["l2", "decoupled"]
Modes = Annotated[list[Mode], Field(min_length=1, max_length=2)]
Rule = Literal["one-se", "best"]
Folds = Annotated[int, Field(ge=1, le=20)]
Patience = Annotated[int, Field(ge=0, le=10_000)]
ChunkSize = Annotated[int, Field(ge=0, le=256)]
# A running Dask scheduler, as Dask writes it: ``tcp://10.0.0.5:8786`` (the scheme may be left out).
DaskAddress = Annotated[str, Field(max_length=500, pattern=r"^(\w+://)?[^\s/]+$")]
DaskWorkers = Annotated[int, Field(ge=0, le=64)]

# Whether a larger value of a metric is better; used by selection and by the gate.
HIGHER_IS_BETTER: dict[str, bool] = {
    "accuracy": True,
    "roc_auc": True,
    "f1": True,
    "precision": True,
    "recall": True,
    "log_loss": False,
    "brier": False,
}

Probability = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]
Threshold = Annotated[float, Field(gt=0.0, lt=1.0, allow_inf_nan=False)]
GateMargin = Annotated[float, Field(ge=0.0, le=1e3, allow_inf_nan=False)]
MaxLogLoss = Annotated[float, Field(gt=0.0, le=1e3, allow_inf_nan=False)]
BootstrapSamples = Annotated[int, Field(ge=100, le=100_000)]


class PipelineConfig(BaseModel):
    """Everything that decides what a pipeline run computes and where it is recorded."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: str = Field(DEFAULT_DATA, min_length=1, description="CSV or Parquet: local path or pyarrow URI")
    label: ColumnName = DEFAULT_LABEL
    positive_class: str | None = Field(
        DEFAULT_POSITIVE_CLASS,
        description="Label value counted as positive when the label holds two strings",
    )
    features: list[ColumnName] | None = Field(None, description="Feature columns; all other columns when empty")
    grid: Grid = Field(default_factory=lambda: list(DEFAULT_GRID), description="λ values to train")
    epochs: Epochs = 100
    batch_size: BatchSize = 32
    learning_rate: LearningRate = 1e-3
    hidden_units: HiddenUnits = Field(default_factory=lambda: [10, 10])
    seed: Seed = 42
    val_fraction: Fraction = 0.2
    test_fraction: Fraction = 0.2
    min_rows_per_class: Annotated[int, Field(ge=2, le=1_000_000)] = 10
    folds: Folds = Field(5, description="Stratified CV folds over train + validation; 1 = the plain validation split")
    rule: Rule = Field("one-se", description="best mean, or the largest λ within one standard error of it")
    modes: Modes = Field(default_factory=lambda: ["l2"], description="l2 penalty, decoupled (AdamW) decay, or both")
    patience: Patience = Field(20, description="early-stopping patience on validation cross-entropy; 0 = off")
    chunk_size: ChunkSize = Field(
        0, description="λ values trained together per task; 0 = the whole grid, 1 = one task per λ"
    )
    dask_address: DaskAddress | None = Field(
        None, description="Train on this running Dask scheduler (tcp://host:8786) instead of local threads"
    )
    dask_workers: DaskWorkers = Field(
        0, description="Train on a local Dask cluster of this many single-threaded processes; 0 = no Dask"
    )
    selection_metric: SelectionMetric = "log_loss"
    gate_metric: SelectionMetric = "log_loss"
    experiment: Name = DEFAULT_EXPERIMENT
    model_name: Name = DEFAULT_MODEL_NAME
    max_parallel: Parallelism = 2
    gate_margin: GateMargin = Field(
        0.0, description="Improvement over the champion the lower 95 % bootstrap bound must exceed"
    )
    min_test_roc_auc: Probability = Field(0.6, description="Floor: a model below this test ROC AUC is never champion")
    max_test_log_loss: MaxLogLoss | None = Field(
        None, description="Ceiling: a model above this test log loss is never champion (none when empty)"
    )
    bootstrap_samples: BootstrapSamples = Field(
        1000, description="Resamples of the test split for confidence intervals"
    )
    threshold: Threshold = Field(0.5, description="Probability from which a row is labelled positive")
    work_dir: str = Field(
        default_factory=lambda: os.environ.get("WD_PIPELINE_WORK_DIR", ".wd-pipeline"),
        min_length=1,
        description="Splits and trained grid points, keyed by content (env WD_PIPELINE_WORK_DIR)",
    )

    @field_validator("grid")
    @classmethod
    def _sorted_unique(cls, grid: list[float]) -> list[float]:
        return sorted(set(grid))

    @field_validator("modes")
    @classmethod
    def _unique_modes(cls, modes: list[str]) -> list[str]:
        return list(dict.fromkeys(modes))

    @field_validator("positive_class")
    @classmethod
    def _empty_means_none(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("dask_address", mode="before")
    @classmethod
    def _blank_address_means_none(cls, value: Any) -> Any:
        # Before the pattern check: a form or config file leaves an unused address as "".
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _splits_leave_training_data(self) -> PipelineConfig:
        if self.val_fraction + self.test_fraction >= 0.8:
            raise ValueError("val_fraction + test_fraction must stay below 0.8 so training keeps most rows")
        return self

    @model_validator(mode="after")
    def _one_dask_cluster(self) -> PipelineConfig:
        # Both would leave it unclear where the training runs; refuse rather than guess.
        if self.dask_address and self.dask_workers:
            raise ValueError(
                "dask_address and dask_workers are both set: give dask_address to use a running "
                "Dask scheduler, or dask_workers to start a local cluster, not both"
            )
        return self

    def params(self) -> dict[str, str]:
        """Flat string params for MLflow (its params are strings of ≤ 6000 chars)."""
        flat: dict[str, str] = {}
        for key, value in self.model_dump().items():
            if isinstance(value, list):
                value = ",".join(_format_number(v) if isinstance(v, float) else str(v) for v in value)
            flat[key] = "" if value is None else str(value)
        return flat

    def training_key(self) -> dict[str, Any]:
        """Settings that change a trained grid point (not where results are recorded)."""
        return self.model_dump(
            include={"epochs", "batch_size", "learning_rate", "hidden_units", "seed", "folds", "patience"}
        )


def _format_number(value: float) -> str:
    return "0" if value == 0 else f"{value:g}"


def format_lambda(lam: float) -> str:
    """How λ appears in run names and plots: ``0`` or ``1e-03``."""
    return "0" if lam == 0 else f"{lam:.0e}" if math.log10(lam).is_integer() else f"{lam:.1e}"


def parse_grid(text: str) -> list[float]:
    """Parse ``0,1e-4,1e-2`` as typed on a command line."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise ConfigError("--grid is empty: give comma-separated λ values, e.g. --grid 0,1e-4,1e-2")
    try:
        return [float(item) for item in items]
    except ValueError as exc:
        raise ConfigError(f"--grid must hold numbers separated by commas (e.g. 0,1e-4,1e-2): {exc}") from None


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read settings from TOML or YAML; a ``[pipeline]`` table is optional."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}. Pass --config with an existing TOML or YAML file")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".toml":
            raw = tomllib.loads(text)
        elif path.suffix.lower() in {".yaml", ".yml"}:
            import yaml

            raw = yaml.safe_load(text) or {}
        else:
            raise ConfigError(f"config file {path} must end in .toml, .yaml or .yml")
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise ConfigError(f"config file {path} is not valid: {exc}") from None
    except Exception as exc:  # yaml.YAMLError without importing yaml at module load
        if type(exc).__module__.startswith("yaml"):
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        raise
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a table of settings")
    return raw.get("pipeline", raw)


WORK_DIR_FIX = "pass --work-dir (or set WD_PIPELINE_WORK_DIR) to a folder you can write"


def check_work_dir(path: str | Path) -> Path:
    """Create the work folder if needed and prove it writable, or raise a :class:`ConfigError`.

    Checked up front because a read-only or mistyped work folder would otherwise surface as
    an ``OSError`` traceback from deep inside ingest, after the tracking run was opened.
    """
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"work folder {path} is not writable ({reason}): {WORK_DIR_FIX}") from None
    return folder


def make_config(**settings: Any) -> PipelineConfig:
    """Build a config, turning pydantic's report into one readable :class:`ConfigError`."""
    try:
        return PipelineConfig(**settings)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    """``grid.0: Input should be greater than or equal to 0`` — one line per problem."""
    lines = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "config"
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {message}")
    return "invalid settings: " + "; ".join(lines)
