"""Every setting of every command, declared once.

Each setting is one ``Annotated`` alias below: its type, its constraints, its help text (a
pydantic description) and, for a pipeline run, what it changes. The settings models
(:class:`PipelineConfig`, :class:`ScoreSettings`) are built from these aliases, and the
Prefect flows annotate their parameters with the very same aliases, so the UI form shows the
help text and refuses a bad value with the model's own message;
``tests/flows/test_flow_parameters.py`` keeps each flow's signature equal to its model. The
command-line flags are generated from the models (:mod:`wd_pipeline.flags`), config files
are read into them, and a run's MLflow params are its model's fields.
"""

from __future__ import annotations

import enum
import math
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from wd_pipeline.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = "data/breast_cancer.csv"
DEFAULT_LABEL = "diagnosis"
# The bundled data's positive class: a default of that file only, never of another table.
DEFAULT_POSITIVE_CLASS = "malignant"
DEFAULT_EXPERIMENT = "weight-decay-pipeline"
DEFAULT_MODEL_NAME = "wd-classifier"
# The decision threshold of a model that stores none.
DEFAULT_THRESHOLD = 0.5
WORK_DIR_ENV = "WD_PIPELINE_WORK_DIR"
DEFAULT_WORK_DIR = ".wd-pipeline"
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


class Changes(enum.Flag):
    """What a pipeline setting changes beyond what the resume keys hold anyway.

    A split folder is keyed by the data's content hash plus the settings marked ``SPLITS``;
    a trained unit by its split folder, mode, λ and fold plus the settings marked
    ``TRAINING``. Settings marked ``NOTHING`` may differ between runs that share splits and
    units. A finished run's record is keyed by the data's content hash plus every setting
    except those marked ``EXECUTION``, which say only where or how the work runs, never what
    it produces or records. Every :class:`PipelineConfig` field carries exactly one mark
    (checked when this module loads): an unmarked setting could otherwise let a rerun reuse
    stale work.
    """

    NOTHING = 0
    SPLITS = enum.auto()
    TRAINING = enum.auto()
    EXECUTION = enum.auto()


def described(text: str, title: str | None = None, **constraints: Any) -> Any:
    """A setting's help text, its title in a form, and its constraints, as the ``Field`` of its alias.

    Text and title go in twice on purpose: as the field's own (the models' schema, the CLI's
    help) and as JSON-schema keys. Prefect gives each flow parameter a ``Field`` whose own
    title (the parameter's name) and description (None without a docstring) override the
    alias's, while ``json_schema_extra`` is merged, so only the second copy reaches the
    Prefect form.
    """
    extra = {"description": text} if title is None else {"title": title, "description": text}
    return Field(description=text, title=title, json_schema_extra=extra, **constraints)


# Value types several settings share.
Lambda = Annotated[float, Field(ge=0.0, le=1e3, allow_inf_nan=False)]
Fraction = Annotated[float, Field(gt=0.0, lt=0.5, allow_inf_nan=False)]
Name = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[\w.\- ]+$")]
ColumnName = Annotated[str, Field(min_length=1, max_length=500)]
Metric = Literal["log_loss", "roc_auc", "average_precision", "accuracy", "f1", "brier"]
Mode = Literal["l2", "decoupled", "dropout"]
DropoutRate = Annotated[float, Field(ge=0.0, lt=1.0, allow_inf_nan=False)]
Probability = Annotated[float, Field(gt=0.0, lt=1.0, allow_inf_nan=False)]
# The dropout rates a grid holds by default: none, light, usual and heavy.
DEFAULT_DROPOUT_GRID: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.5)
Port = Annotated[int, Field(ge=1, le=65_535)]

# The pipeline's settings. The form shows them in PipelineConfig's field order, the flow signature's.
DataSource = Annotated[
    str,
    described(title="Data", text="CSV or Parquet file: local path or pyarrow URI", min_length=1),
    Changes.EXECUTION,  # every key holds the file's content, not its name
]
Label = Annotated[ColumnName, described(title="Label", text="binary target column"), Changes.SPLITS]
PositiveClass = Annotated[
    str | None,
    described(
        title="Positive class",
        text="label value counted as positive when the label holds two strings; "
        f"empty = {DEFAULT_POSITIVE_CLASS!r} for the bundled data, none for any other table",
    ),
    Changes.SPLITS,
]
Features = Annotated[
    list[ColumnName] | None,
    described(title="Features", text="feature columns; all columns but the label when empty"),
    Changes.SPLITS,
]
Categorical = Annotated[
    list[ColumnName] | None,
    described(
        title="Categorical columns",
        text="columns taken as categories whatever their type, e.g. integer codes such as a zip code",
    ),
    Changes.SPLITS,
]
Exclude = Annotated[
    list[ColumnName] | None,
    described(title="Excluded columns", text="columns left out of the model, e.g. IDs and timestamps"),
    Changes.SPLITS,
]
SliceBy = Annotated[
    list[ColumnName] | None,
    described(
        title="Slice by",
        text="columns whose values (categories; training-quantile bins of numbers) split the test metrics into slices; "
        "kept in the stored splits and never used as features",
    ),
    Changes.SPLITS,
]
GroupColumn = Annotated[
    ColumnName | None,
    described(
        title="Group column",
        text="column naming the group of each row (a patient, a customer): a group never spans two splits or folds, "
        "and the column is never a feature",
    ),
    Changes.SPLITS,
]
NaValues = Annotated[
    list[Annotated[str, Field(min_length=1, max_length=200)]] | None,
    described(
        title="Missing-value markers",
        text="cell values that mean missing, besides empty cells and pyarrow's defaults (NA, null, NaN, N/A …)",
    ),
    Changes.SPLITS,
]
MaxCategories = Annotated[
    int,
    described(
        title="Max categories per column",
        text="most distinct values a categorical column may hold, or the data is refused",
        ge=2,
        le=1_000_000,
    ),
    Changes.SPLITS,
]
Grid = Annotated[
    list[Lambda],
    described(title="λ grid", text="λ values to train", min_length=1, max_length=256),
    Changes.NOTHING,  # each unit's key holds its own λ
]
DropoutGrid = Annotated[
    list[DropoutRate],
    described(
        title="Dropout grid", text="dropout rates the dropout mode trains, each in [0, 1)", min_length=1, max_length=64
    ),
    Changes.NOTHING,  # each unit's key holds its own rate
]
Epochs = Annotated[
    int, described(title="Epochs", text="training epochs per grid point", ge=1, le=100_000), Changes.TRAINING
]
BatchSize = Annotated[int, described(title="Batch size", text="mini-batch size", ge=1, le=1_000_000), Changes.TRAINING]
LearningRate = Annotated[
    float,
    described(title="Learning rate", text="Adam learning rate", gt=0.0, le=10.0, allow_inf_nan=False),
    Changes.TRAINING,
]
HiddenUnits = Annotated[
    list[Annotated[int, Field(ge=1, le=4096)]],
    described(title="Hidden units", text="hidden layer sizes, input side first", min_length=1, max_length=8),
    Changes.TRAINING,
]
OneHotMax = Annotated[
    int,
    described(
        title="One-hot limit",
        text="a categorical column with at most this many slots (categories, plus one for unseen values) is one-hot "
        "encoded; a larger one gets a trained, penalised embedding",
        ge=2,
        le=10_000,
    ),
    Changes.TRAINING,
]
ClassWeight = Annotated[
    Literal["none", "balanced"],
    described(
        title="Class weight", text="weight of each class in the loss: none, or balanced by inverse class frequency"
    ),
    Changes.TRAINING,
]
Seed = Annotated[
    int,
    described(title="Seed", text="seed of the split, the initialisation and the shuffling", ge=0, le=2**31 - 1),
    Changes.SPLITS | Changes.TRAINING,
]
ValFraction = Annotated[
    Fraction, described(title="Validation fraction", text="share of the rows held out for validation"), Changes.SPLITS
]
TestFraction = Annotated[
    Fraction, described(title="Test fraction", text="share of the rows held out for the test"), Changes.SPLITS
]
MinRowsPerClass = Annotated[
    int,
    described(
        title="Min rows per class", text="rows each class needs at least, or the data is refused", ge=2, le=1_000_000
    ),
    Changes.NOTHING,  # a check on the data: it refuses, it never reshapes the splits
]
Folds = Annotated[
    int,
    described(
        title="Cross-validation folds",
        text="stratified cross-validation folds over train + validation; 1 = the plain validation split",
        ge=1,
        le=20,
    ),
    Changes.TRAINING,
]
Rule = Annotated[
    Literal["one-se", "best"],
    described(
        title="Selection rule",
        text="how λ is chosen: the best mean, or one-se: the largest λ within one standard error of it",
    ),
    Changes.NOTHING,
]
Modes = Annotated[
    list[Mode],
    described(
        title="Regularisation modes",
        text="regularisation modes compared: l2 penalty and decoupled (AdamW) decay over --grid, dropout over "
        "--dropout-grid",
        min_length=1,
        max_length=3,
    ),
    Changes.NOTHING,  # each unit's key holds its own mode
]
Patience = Annotated[
    int,
    described(
        title="Early-stopping patience",
        text="early-stopping patience in epochs, on validation cross-entropy; 0 = off",
        ge=0,
        le=10_000,
    ),
    Changes.TRAINING,
]
ChunkSize = Annotated[
    int,
    described(
        title="λ values per task",
        text="λ values trained together per task; 0 = the whole grid, 1 = one task per λ",
        ge=0,
        le=256,
    ),
    Changes.EXECUTION,
]
DaskAddress = Annotated[
    # A running Dask scheduler, as Dask writes it: ``tcp://10.0.0.5:8786`` (the scheme may be left out).
    Annotated[str, Field(max_length=500, pattern=r"^(\w+://)?[^\s/]+$")] | None,
    described(
        title="Dask scheduler",
        text="train on this running Dask scheduler, e.g. tcp://10.0.0.5:8786, not in local threads (needs a Prefect server)",
    ),
    Changes.EXECUTION,
]
DaskWorkers = Annotated[
    int,
    described(
        title="Local Dask workers",
        text="train on a local Dask cluster of this many single-threaded processes; 0 = no Dask (needs a Prefect server)",
        ge=0,
        le=64,
    ),
    Changes.EXECUTION,
]
SelectionMetric = Annotated[
    Metric, described(title="Selection metric", text="validation metric that chooses λ"), Changes.NOTHING
]
GateMetric = Annotated[
    Metric, described(title="Gate metric", text="test metric the champion gate compares"), Changes.NOTHING
]
Experiment = Annotated[
    Name, described(title="MLflow experiment", text="MLflow experiment the run is recorded in"), Changes.NOTHING
]
ModelName = Annotated[
    Name,
    described(title="Registered model", text="registered model the chosen network becomes a new version of"),
    Changes.NOTHING,
]
MaxParallel = Annotated[
    int, described(title="Parallel tasks", text="training tasks run at once", ge=1, le=64), Changes.EXECUTION
]
GateMargin = Annotated[
    float,
    described(
        title="Gate margin",
        text="improvement over the champion that the lower 95 % bootstrap bound must exceed",
        ge=0.0,
        le=1e3,
        allow_inf_nan=False,
    ),
    Changes.NOTHING,
]
MinTestRocAuc = Annotated[
    float,
    described(
        title="Min test ROC AUC",
        text="floor: a model below this test ROC AUC is never champion",
        ge=0.0,
        le=1.0,
        allow_inf_nan=False,
    ),
    Changes.NOTHING,
]
MaxTestLogLoss = Annotated[
    Annotated[float, Field(gt=0.0, le=1e3, allow_inf_nan=False)] | None,
    described(
        title="Max test log loss", text="ceiling: a model above this test log loss is never champion; none when empty"
    ),
    Changes.NOTHING,
]
MinSliceRows = Annotated[
    int,
    described(
        title="Min slice rows",
        text="slices with fewer test rows are marked as too small, and the slice gate ignores them",
        ge=1,
        le=10**9,
    ),
    Changes.NOTHING,
]
MinSliceRocAuc = Annotated[
    Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)] | None,
    described(
        title="Min slice ROC AUC",
        text="floor: a model with a slice (of at least --min-slice-rows) below this test ROC AUC is never champion",
    ),
    Changes.NOTHING,
]
DriftWarn = Annotated[
    float,
    described(
        title="Drift warning (PSI)",
        text="population stability index from which a column counts as drifted",
        gt=0.0,
        le=100.0,
        allow_inf_nan=False,
    ),
    Changes.NOTHING,
]
DriftAlert = Annotated[
    float,
    described(
        title="Drift alert (PSI)",
        text="population stability index from which a new version stays challenger (reason drift) for a human to decide",
        gt=0.0,
        le=100.0,
        allow_inf_nan=False,
    ),
    Changes.NOTHING,
]
ImportanceRepeats = Annotated[
    int,
    described(
        title="Importance repeats",
        text="shuffles of each raw column for its permutation importance on the test split; 0 = none",
        ge=0,
        le=1000,
    ),
    Changes.NOTHING,
]
BootstrapSamples = Annotated[
    int,
    described(
        title="Bootstrap samples",
        text="bootstrap resamples of the test split for confidence intervals",
        ge=100,
        le=100_000,
    ),
    Changes.NOTHING,
]
Threshold = Annotated[
    Probability | Literal["auto"],
    described(
        title="Decision threshold",
        text="probability from which a row is labelled positive, or auto: chosen on the out-of-fold validation "
        "predictions by --threshold-metric",
    ),
    Changes.NOTHING,  # units record their metrics at 0.5, whatever the run's threshold
]
ThresholdMetric = Annotated[
    Literal["f1", "accuracy", "balanced_accuracy", "youden"],
    described(title="Threshold metric", text="what --threshold auto maximises (youden: sensitivity + specificity - 1)"),
    Changes.NOTHING,
]
Reuse = Annotated[
    Literal["finished", "never"],
    described(
        title="Reuse a finished run",
        text="finished: a run with the same data and settings as a finished run (still in MLflow, its model version "
        "still registered) returns that run's result instead of repeating it; never: evaluate, log and register "
        "afresh (trained grid points are resumed either way)",
    ),
    Changes.EXECUTION,
]
WORK_DIR_HELP = f"folder or s3://bucket/prefix for the splits and trained grid points, keyed by content; when not given, {WORK_DIR_ENV} or else {DEFAULT_WORK_DIR}"
WorkDir = Annotated[str, described(title="Work folder", text=WORK_DIR_HELP, min_length=1), Changes.EXECUTION]
# The flow leaves an empty work folder to the config, so that the environment of the process
# that runs the flow decides it, not the one that deployed it.
WorkDirOrDefault = Annotated[WorkDir | None, described(title="Work folder", text=WORK_DIR_HELP)]

# The score command's own settings (it shares the experiment and the threshold with a run).
ScoreData = Annotated[
    str,
    described(
        title="Data to score",
        text="CSV or Parquet file, or a folder of them, to score: local path or pyarrow URI",
        min_length=1,
    ),
]
ScoreOutput = Annotated[
    str,
    described(title="Output file", text="Parquet file for the input features plus probability and label", min_length=1),
]
ScoredModel = Annotated[
    Name, described(title="Registered model", text="registered model whose @champion scores the file")
]
ScoreThreshold = Annotated[
    Probability | None,
    described(
        title="Decision threshold",
        text="probability from which a row is labelled positive; empty = the champion's own threshold",
    ),
]

# Whether a larger value of a metric is better; used by selection and by the gate.
HIGHER_IS_BETTER: dict[str, bool] = {
    "accuracy": True,
    "roc_auc": True,
    "average_precision": True,
    "f1": True,
    "precision": True,
    "recall": True,
    "log_loss": False,
    "brier": False,
}


def is_bundled_data(data: Any, label: Any) -> bool:
    """Whether ``data`` and ``label`` name the bundled file and its label column.

    A relative path is looked up as :func:`wd_pipeline.data.sources.locate` does: in the
    working directory first, then under the project root.
    """
    if not isinstance(data, str) or label != DEFAULT_LABEL or "://" in data:
        return False
    try:
        path = Path(data).expanduser()
        if not path.is_absolute() and not path.exists():
            path = PROJECT_ROOT / path
        return path.resolve() == (PROJECT_ROOT / DEFAULT_DATA).resolve()
    except (OSError, RuntimeError, ValueError):  # not a path this machine can resolve: not the bundled file
        return False


def check_drift_thresholds(warn: float, alert: float) -> None:
    if warn >= alert:
        raise ValueError(
            f"drift_warn ({warn:g}) must be below drift_alert ({alert:g}): a warning comes before an alert"
        )


def default_work_dir() -> str:
    return os.environ.get(WORK_DIR_ENV, DEFAULT_WORK_DIR)


class PipelineConfig(BaseModel):
    """Everything that decides what a pipeline run computes and where it is recorded.

    The fields come in the order a user decides them, which is the order of the flow's form and
    of ``--help``: the data and its splits, the model and its training, the grid and how cross-
    validation chooses from it, what is recorded and what the gate demands, and where and how
    the work runs. The resume keys are sorted by name, so this order never changes them.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: DataSource = DEFAULT_DATA
    label: Label = DEFAULT_LABEL
    positive_class: PositiveClass = None
    features: Features = None
    categorical: Categorical = None
    exclude: Exclude = None
    group_column: GroupColumn = None
    slice_by: SliceBy = None
    na_values: NaValues = None
    max_categories: MaxCategories = 1000
    min_rows_per_class: MinRowsPerClass = 10
    val_fraction: ValFraction = 0.2
    test_fraction: TestFraction = 0.2
    hidden_units: HiddenUnits = [10, 10]
    one_hot_max: OneHotMax = 64
    class_weight: ClassWeight = "none"
    epochs: Epochs = 100
    batch_size: BatchSize = 32
    learning_rate: LearningRate = 1e-3
    patience: Patience = 20
    seed: Seed = 42
    modes: Modes = ["l2"]
    grid: Grid = list(DEFAULT_GRID)
    dropout_grid: DropoutGrid = list(DEFAULT_DROPOUT_GRID)
    folds: Folds = 5
    rule: Rule = "one-se"
    selection_metric: SelectionMetric = "log_loss"
    threshold: Threshold = DEFAULT_THRESHOLD
    threshold_metric: ThresholdMetric = "f1"
    experiment: Experiment = DEFAULT_EXPERIMENT
    model_name: ModelName = DEFAULT_MODEL_NAME
    gate_metric: GateMetric = "log_loss"
    gate_margin: GateMargin = 0.0
    bootstrap_samples: BootstrapSamples = 1000
    min_test_roc_auc: MinTestRocAuc = 0.6
    max_test_log_loss: MaxTestLogLoss = None
    min_slice_rows: MinSliceRows = 30
    min_slice_roc_auc: MinSliceRocAuc = None
    drift_warn: DriftWarn = 0.1
    drift_alert: DriftAlert = 0.25
    importance_repeats: ImportanceRepeats = 5
    max_parallel: MaxParallel = 2
    chunk_size: ChunkSize = 0
    dask_address: DaskAddress = None
    dask_workers: DaskWorkers = 0
    reuse: Reuse = "finished"
    work_dir: WorkDir = Field(default_factory=default_work_dir)

    @field_validator("grid", "dropout_grid")
    @classmethod
    def _sorted_unique(cls, grid: list[float]) -> list[float]:
        return sorted(set(grid))

    @field_validator("threshold", mode="wrap")
    @classmethod
    def _threshold_in_one_message(cls, value: Any, handler: Any) -> Any:
        # The union's own report names both branches ("constrained-float", "literal['auto']").
        try:
            return handler(value)
        except ValidationError:
            raise ValueError(f"{value!r} is neither a probability strictly between 0 and 1 nor auto") from None

    @field_validator("slice_by")
    @classmethod
    def _unique_slices(cls, columns: list[str] | None) -> list[str] | None:
        return list(dict.fromkeys(columns)) if columns else None

    @field_validator("modes")
    @classmethod
    def _unique_modes(cls, modes: list[str]) -> list[str]:
        return list(dict.fromkeys(modes))

    @model_validator(mode="before")
    @classmethod
    def _bundled_positive_class(cls, values: Any) -> Any:
        # Here, not as the field's default, so that every way in (flags, config file, flow
        # form, API) gets it, and only with the bundled data: another table's 0/1 label
        # would refuse it.
        if not isinstance(values, dict) or values.get("positive_class"):
            return values
        if is_bundled_data(values.get("data", DEFAULT_DATA), values.get("label", DEFAULT_LABEL)):
            return {**values, "positive_class": DEFAULT_POSITIVE_CLASS}
        return values

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
    def _label_is_only_the_label(self) -> PipelineConfig:
        if self.group_column == self.label:
            raise ValueError(f"group_column {self.label!r} is the label: name the column that holds each row's group")
        if self.label in (self.slice_by or []):
            raise ValueError(f"slice_by names the label {self.label!r}: slice by a column other than the label")
        return self

    @model_validator(mode="after")
    def _drift_thresholds_in_order(self) -> PipelineConfig:
        check_drift_thresholds(self.drift_warn, self.drift_alert)
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

    def settings_that_change(self, part: Changes) -> dict[str, Any]:
        """This run's values of the settings marked ``part``: what its resume key must hold.

        A setting at its value in :data:`KEYED_ONLY_WHEN_SET` is left out, so work folders
        written before it existed keep their keys.
        """
        values = self.model_dump(include={name for name, changes in SETTING_CHANGES.items() if part in changes})
        return {
            name: value
            for name, value in values.items()
            if name not in KEYED_ONLY_WHEN_SET or value != KEYED_ONLY_WHEN_SET[name]
        }

    def training_key(self) -> dict[str, Any]:
        """Settings that change a trained grid point (not where results are recorded)."""
        return self.settings_that_change(Changes.TRAINING)

    def result_key(self) -> dict[str, Any]:
        """Every setting that changes what a run produces or records: all but those marked ``EXECUTION``."""
        return self.model_dump(
            mode="json", exclude={name for name, changes in SETTING_CHANGES.items() if changes is Changes.EXECUTION}
        )


def changes_of(model: type[BaseModel]) -> dict[str, Changes]:
    """What each field of ``model`` changes, or a TypeError naming a field that does not say."""
    found: dict[str, Changes] = {}
    for name, field in model.model_fields.items():
        marks = [mark for mark in field.metadata if isinstance(mark, Changes)]
        if len(marks) != 1 or (Changes.EXECUTION in marks[0] and marks[0] is not Changes.EXECUTION):
            raise TypeError(
                f"{model.__name__}.{name} must declare once what it changes (Changes.SPLITS, Changes.TRAINING "
                "and/or Changes.NOTHING, or Changes.EXECUTION alone, in its Annotated type) so that the resume "
                "keys know whether it matters"
            )
        found[name] = marks[0]
    return found


SETTING_CHANGES = changes_of(PipelineConfig)
# Settings added after work folders existed, with the value that computes what those folders
# hold: at that value they stay out of the resume keys.
KEYED_ONLY_WHEN_SET: dict[str, Any] = {"slice_by": None, "group_column": None, "class_weight": "none"}


class ScoreSettings(BaseModel):
    """What one scoring run reads, with which model, and where it writes."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    data: ScoreData
    output: ScoreOutput
    model_name: ScoredModel = DEFAULT_MODEL_NAME
    experiment: Experiment = DEFAULT_EXPERIMENT
    threshold: ScoreThreshold = None
    drift_warn: DriftWarn = 0.1
    drift_alert: DriftAlert = 0.25

    @model_validator(mode="after")
    def _drift_thresholds_in_order(self) -> ScoreSettings:
        check_drift_thresholds(self.drift_warn, self.drift_alert)
        return self


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
            raw = _load_yaml(text)
        else:
            raise ConfigError(f"config file {path} must end in .toml, .yaml or .yml")
    except (tomllib.TOMLDecodeError, ValueError) as exc:
        raise ConfigError(f"config file {path} is not valid: {exc}") from None
    except Exception as exc:  # yaml.YAMLError, named without importing yaml for every command
        if type(exc).__module__.startswith("yaml"):
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        raise
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path} must hold a table of settings")
    return raw.get("pipeline", raw)


def _load_yaml(text: str) -> Any:
    import yaml  # only when a YAML file is given: it would add to every command's start-up

    return yaml.safe_load(text) or {}


WORK_DIR_FIX = "pass --work-dir (or set WD_PIPELINE_WORK_DIR) to a folder you can write"


def check_work_dir(path: str | Path) -> Path:
    """Create the work folder if needed and prove it writable, or raise a :class:`ConfigError`.

    Returns the local folder for the run's log file: the work folder itself, or for an
    ``s3://`` one this machine's copy of it (the log is uploaded when the command ends).

    Checked up front because a read-only or mistyped work folder would otherwise surface as
    an ``OSError`` traceback from deep inside ingest, after the tracking run was opened.
    """
    from wd_pipeline import storage

    if storage.is_remote(path):
        storage.check_writable(str(path))
        return Path(storage.cache_path(str(path)))
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


Settings = TypeVar("Settings", bound=BaseModel)


def make_settings(model: type[Settings], **settings: Any) -> Settings:
    """Build a settings model, turning pydantic's report into one readable :class:`ConfigError`."""
    try:
        return model(**settings)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc)) from None


def make_config(**settings: Any) -> PipelineConfig:
    return make_settings(PipelineConfig, **settings)


def describe_validation_error(exc: ValidationError) -> str:
    """``grid.0: Input should be greater than or equal to 0`` — one line per problem."""
    lines = []
    for error in exc.errors():
        where = ".".join(str(part) for part in error["loc"]) or "config"
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {message}")
    return "invalid settings: " + "; ".join(lines)
