"""The regularization report: the figures and the model card that justify the chosen λ.

Figures are built on :class:`matplotlib.figure.Figure` directly, never through pyplot, so
they hold no global state and several can be drawn at once from Prefect worker threads.
The test-split figures use scikit-learn's display classes: those import pyplot, but given
an ``ax`` they draw on it alone and never create or register a figure there.

The grid figures read the cross-validated grid table: one row per (``mode``, ``lambda``)
with ``train_<m>``, ``val_<m>``, ``val_<m>_std``, ``val_<m>_se`` for each metric ``m``,
``weight_norm`` and ``stopped_epoch``. A table without ``mode`` is one ``l2`` grid and one
without ``val_<m>_se`` has no error bars, so a single train/validation split draws too.

Dropout rows (mode ``dropout``, the ``lambda`` column holding the rate) are drawn on their
own figures over a linear axis of rates: a rate and a λ share no scale.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from wd_pipeline.config import HIGHER_IS_BETTER
from wd_pipeline.ml.modes import DROPOUT, format_value, is_dropout, point_label, value_symbol

CARD_ARTIFACT = "model_card.md"

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from wd_pipeline.data.drift import DriftReport
    from wd_pipeline.ml.bootstrap import Interval
    from wd_pipeline.ml.importance import Importance
    from wd_pipeline.ml.slices import SliceReport
    from wd_pipeline.provenance import Provenance

DEFAULT_MODE = "l2"
MODE_COLORS = {"l2": "C0", "decoupled": "C1", "dropout": "C2"}
MODE_NAMES = {
    "l2": "L2 penalty in the loss",
    "decoupled": "decoupled weight decay (AdamW)",
    "dropout": "dropout after each hidden layer, no weight penalty",
}
LAMBDA_MEANING = {
    "l2": "J = L + λ/2 · Σw² over the hidden kernels",
    "decoupled": "decay applied by the optimizer at each step, not part of the loss",
    "dropout": "each hidden unit's output is zeroed with probability p while training, never when predicting",
}
RULES = {
    "best": "the best cross-validated {metric}",
    "one-se": "the largest λ (for dropout, the largest rate) whose cross-validated {metric} is within one standard "
    "error of the best (one-SE rule)",
}
# Where report_artifacts puts the dropout figures when weight-decay modes ran too.
DROPOUT_SUFFIX = "_dropout"
CARD_METRICS = ("roc_auc", "average_precision", "log_loss", "accuracy")


def _lambda_axis(ax: Axes, lambdas: np.ndarray) -> None:
    """Log axis that still shows λ = 0: linear in the first decade below the smallest λ > 0."""
    positive = lambdas[lambdas > 0]
    linthresh = float(positive.min()) if positive.size else 1e-5
    ax.set_xscale("symlog", linthresh=linthresh)
    ax.set_xlim(-0.3 * linthresh, float(lambdas.max()) * 1.5 if positive.size else linthresh)
    ax.set_xlabel("λ (weight decay, symlog scale)")
    ax.grid(True, which="major", alpha=0.3)


def _rate_axis(ax: Axes, rates: np.ndarray) -> None:
    """Linear axis of dropout rates from 0."""
    ax.set_xlim(-0.03, max(float(rates.max()), 0.1) + 0.05)
    ax.set_xlabel("dropout rate p")
    ax.grid(True, which="major", alpha=0.3)


def _dropout_only(table: pd.DataFrame) -> bool:
    return "mode" in table.columns and len(table) > 0 and bool((table["mode"] == DROPOUT).all())


def _value_axis(ax: Axes, table: pd.DataFrame) -> None:
    """The x axis of a grid figure: dropout rates for a dropout table, λ otherwise."""
    values = table["lambda"].to_numpy(float)
    if _dropout_only(table):
        _rate_axis(ax, values)
    else:
        _lambda_axis(ax, values)


def _symbol(table: pd.DataFrame) -> str:
    return value_symbol(DROPOUT) if _dropout_only(table) else "λ"


def split_by_axis(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The grid cut by x axis: ``""`` for the weight-decay modes (λ), ``_dropout`` for the rates; empty parts left out."""
    if "mode" not in table.columns:
        return {"": table}
    dropout = table["mode"] == DROPOUT
    parts = {"": table[~dropout], DROPOUT_SUFFIX: table[dropout]}
    parts = {suffix: rows for suffix, rows in parts.items() if len(rows)}
    return parts if len(parts) > 1 else {"": table}


def _by_mode(table: pd.DataFrame) -> Iterator[tuple[str, pd.DataFrame]]:
    """Each mode's rows sorted by λ; a table without ``mode`` is one L2 grid."""
    if "mode" not in table.columns:
        table = table.assign(mode=DEFAULT_MODE)
    for mode, rows in table.groupby("mode", sort=True):
        yield str(mode), rows.sort_values("lambda")


def _color(mode: str) -> str:
    return MODE_COLORS.get(mode, "C2")


def _standard_error(rows: pd.DataFrame, metric: str) -> np.ndarray:
    column = f"val_{metric}_se"
    return rows[column].to_numpy(float) if column in rows.columns else np.zeros(len(rows))


def _mark_chosen(ax: Axes, chosen_lambda: float, chosen_mode: str | None, table: pd.DataFrame) -> None:
    """A dotted line at the chosen value, on the figure whose axis holds the chosen mode."""
    if chosen_mode is not None and "mode" in table.columns and chosen_mode not in set(table["mode"]):
        return
    mode = f"{chosen_mode} " if chosen_mode else ""
    symbol = value_symbol(chosen_mode) if chosen_mode else "λ"
    value = format_value(chosen_mode or DEFAULT_MODE, chosen_lambda)
    ax.axvline(chosen_lambda, color="grey", linestyle=":", label=f"chosen: {mode}{symbol} = {value}")


def _chosen_rows(rows: pd.DataFrame, mode: str, chosen_lambda: float, chosen_mode: str | None) -> pd.DataFrame:
    if chosen_mode is not None and mode != chosen_mode:
        return rows.iloc[0:0]
    return rows[np.isclose(rows["lambda"].to_numpy(float), chosen_lambda, rtol=1e-12, atol=0)]


def _title(metric: str) -> str:
    return metric.replace("_", " ")


def validation_curve_figure(
    table: pd.DataFrame,
    metric: str,
    chosen_lambda: float,
    chosen_mode: str | None = None,
    extra_metrics: Sequence[str] = ("accuracy",),
) -> Figure:
    """Train and cross-validated ``metric`` against λ (or the dropout rate), ±1 standard error, one line per mode."""
    from matplotlib.figure import Figure

    names = list(dict.fromkeys([metric, *extra_metrics]))
    figure = Figure(figsize=(5.5 * len(names), 4.2), layout="constrained")
    for ax, name in zip(np.atleast_1d(figure.subplots(1, len(names))), names, strict=True):
        for mode, rows in _by_mode(table):
            x = rows["lambda"].to_numpy(float)
            ax.errorbar(
                x,
                rows[f"val_{name}"],
                yerr=_standard_error(rows, name),
                fmt="o-",
                color=_color(mode),
                capsize=3,
                label=f"{mode} validation (±1 SE)",
            )
            ax.plot(x, rows[f"train_{name}"], "s--", color=_color(mode), alpha=0.6, label=f"{mode} train")
            chosen = _chosen_rows(rows, mode, chosen_lambda, chosen_mode)
            ax.plot(chosen["lambda"], chosen[f"val_{name}"], "*", color="black", markersize=14, zorder=5)
        _mark_chosen(ax, chosen_lambda, chosen_mode, table)
        ax.set_ylabel(_title(name))
        ax.set_title(f"{_title(name)} vs {_symbol(table)}")
        _value_axis(ax, table)
        ax.legend(fontsize="small")
    return figure


def weight_norm_figure(table: pd.DataFrame, chosen_lambda: float, chosen_mode: str | None = None) -> Figure:
    """‖w‖₂ of the kernels against λ: the direct effect of weight decay, per mode."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5, 4.2), layout="constrained")
    ax = figure.subplots()
    for mode, rows in _by_mode(table):
        ax.plot(rows["lambda"], rows["weight_norm"], "o-", color=_color(mode), label=f"{mode} all kernels")
        if "penalized_weight_norm" in rows.columns:
            ax.plot(
                rows["lambda"],
                rows["penalized_weight_norm"],
                "s--",
                color=_color(mode),
                alpha=0.6,
                label=f"{mode} penalised kernels",
            )
    _mark_chosen(ax, chosen_lambda, chosen_mode, table)
    ax.set_ylabel("‖w‖₂")
    ax.set_title(f"weight norm vs {_symbol(table)}")
    _value_axis(ax, table)
    ax.legend(fontsize="small")
    return figure


def generalization_gap(table: pd.DataFrame, metric: str) -> pd.Series:
    """Train minus validation performance: positive and growing means more overfitting.

    For a loss (lower is better) that is validation − train; for a score, train − validation.
    """
    difference = table[f"train_{metric}"] - table[f"val_{metric}"]
    return difference if HIGHER_IS_BETTER[metric] else -difference


def generalization_gap_figure(
    table: pd.DataFrame, metric: str, chosen_lambda: float, chosen_mode: str | None = None
) -> Figure:
    """How much better the model does on its training folds than on held-out ones, per mode."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5, 4.2), layout="constrained")
    ax = figure.subplots()
    for mode, rows in _by_mode(table):
        ax.plot(rows["lambda"], generalization_gap(rows, metric), "o-", color=_color(mode), label=mode)
    ax.axhline(0.0, color="black", linewidth=0.8)
    _mark_chosen(ax, chosen_lambda, chosen_mode, table)
    ax.set_ylabel(f"{_title(metric)} gap (> 0: overfitting)")
    ax.set_title(f"generalization gap ({_title(metric)}) vs {_symbol(table)}")
    _value_axis(ax, table)
    ax.legend(fontsize="small")
    return figure


def learning_curves_figure(
    curves: Sequence[tuple[str, Mapping[str, Sequence[float]]]], keys: Sequence[str] = ("loss", "val_loss")
) -> Figure:
    """Per-epoch ``keys`` of every grid point, one panel per key, one line per grid point."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(5.5 * len(keys), 4.5), layout="constrained")
    axes = np.atleast_1d(figure.subplots(1, len(keys), sharey=True))
    colors = colormaps["viridis"](np.linspace(0, 0.9, max(len(curves), 1)))
    for ax, key in zip(axes, keys, strict=True):
        for color, (label, history) in zip(colors, curves, strict=False):
            series = history.get(key, [])
            ax.plot(np.arange(1, len(series) + 1), series, color=color, label=label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(key)
        # Keras adds the L2 penalty to loss/val_loss; decoupled weight decay adds nothing.
        ax.set_title(f"{key} per epoch (l2 mode: with penalty)" if "loss" in key else f"{key} per epoch")
        ax.grid(True, alpha=0.3)
    axes[-1].legend(fontsize="x-small", ncol=2 if len(curves) > 12 else 1)
    return figure


def roc_figure(y_true: np.ndarray, probability: np.ndarray) -> Figure:
    """ROC curve of the registered model on the test split."""
    from matplotlib.figure import Figure
    from sklearn.metrics import RocCurveDisplay

    figure = Figure(figsize=(4.8, 4.5), layout="constrained")
    ax = figure.subplots()
    display = RocCurveDisplay.from_predictions(
        y_true,
        probability,
        ax=ax,
        plot_chance_level=True,
        chance_level_kw={"label": "chance", "color": "grey", "linestyle": "--"},
    )
    display.line_.set_label(f"model (AUC = {display.roc_auc:.3f})")  # sklearn's legend rounds to 2 digits
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC curve (test split)")
    ax.legend(loc="lower right")
    return figure


def precision_recall_figure(y_true: np.ndarray, probability: np.ndarray, threshold: float = 0.5) -> Figure:
    """Precision against recall on the test split, with the positive rate as the no-skill baseline.

    With a rare positive class the ROC curve looks good while most rows called positive are
    wrong; this curve shows it. The point is where the model's decision threshold labels.
    """
    from matplotlib.figure import Figure
    from sklearn.metrics import PrecisionRecallDisplay, precision_score, recall_score

    y = np.asarray(y_true).astype(int)
    figure = Figure(figsize=(4.8, 4.5), layout="constrained")
    ax = figure.subplots()
    display = PrecisionRecallDisplay.from_predictions(
        y,
        probability,
        ax=ax,
        plot_chance_level=True,
        chance_level_kw={"label": f"positive rate ({y.mean():.3f})", "color": "grey", "linestyle": "--"},
    )
    display.line_.set_label(f"model (AP = {display.average_precision:.3f})")
    predicted = (np.asarray(probability) >= threshold).astype(int)
    ax.plot(
        recall_score(y, predicted, zero_division=0),
        precision_score(y, predicted, zero_division=0),
        "o",
        color="C3",
        label=f"threshold {threshold:g}",
    )
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("precision-recall curve (test split)")
    ax.legend(loc="lower left")
    return figure


def confusion_matrix_figure(y_true: np.ndarray, probability: np.ndarray, threshold: float = 0.5) -> Figure:
    """Counts of right and wrong labels at ``threshold`` on the test split."""
    from matplotlib.figure import Figure
    from sklearn.metrics import ConfusionMatrixDisplay

    predicted = (np.asarray(probability) >= threshold).astype(int)
    figure = Figure(figsize=(4.5, 4.0), layout="constrained")
    ax = figure.subplots()
    ConfusionMatrixDisplay.from_predictions(
        np.asarray(y_true).astype(int), predicted, labels=[0, 1], cmap="Blues", values_format="d", ax=ax
    )
    ax.set_xlabel("predicted label")
    ax.set_ylabel("true label")
    ax.set_title(f"confusion matrix (threshold {threshold:g})")
    return figure


def calibration_figure(y_true: np.ndarray, probability: np.ndarray, n_bins: int = 10) -> Figure:
    """Observed positive rate against predicted probability: do the probabilities mean what they say?"""
    from matplotlib.figure import Figure
    from sklearn.calibration import CalibrationDisplay

    figure = Figure(figsize=(4.8, 4.5), layout="constrained")
    ax = figure.subplots()
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    CalibrationDisplay.from_predictions(
        y_true, probability, n_bins=n_bins, strategy="quantile", name="model", ax=ax, ref_line=False, marker="o"
    )
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("fraction of positives")
    ax.set_title(f"calibration (test split, {n_bins} quantile bins)")
    ax.set_aspect("equal")
    ax.legend(loc="upper left")
    return figure


def diagnostic_figures(y_true: np.ndarray, probability: np.ndarray, threshold: float = 0.5) -> dict[str, Figure]:
    """The registered model's test-split figures, keyed by a file name for the run's ``plots/``."""
    return {
        "roc_curve.png": roc_figure(y_true, probability),
        "precision_recall.png": precision_recall_figure(y_true, probability, threshold),
        "confusion_matrix.png": confusion_matrix_figure(y_true, probability, threshold),
        "calibration.png": calibration_figure(y_true, probability),
    }


def slices_figure(report: SliceReport, floor: float | None = None) -> Figure:
    """ROC AUC of every slice with its interval; small slices hollow and grey, one-class slices named n/a."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 1.2 + 0.32 * max(len(report.slices), 1)), layout="constrained")
    ax = figure.subplots()
    worst = report.worst
    positions = np.arange(len(report.slices))[::-1]
    labels = []
    for y, s in zip(positions, report.slices, strict=True):
        labels.append(f"{s.name} ({s.rows})" + ("  small" if s.small else ""))
        if s.roc_auc is None:
            ax.text(0.5, y, "n/a: one class", va="center", ha="center", fontsize="x-small", color="grey")
            continue
        color = "grey" if s.small else ("C3" if s is worst else "C0")
        low, high = s.roc_auc.low, s.roc_auc.high
        error = [[s.roc_auc.estimate - low], [high - s.roc_auc.estimate]] if math.isfinite(low) else None
        ax.errorbar(
            s.roc_auc.estimate,
            y,
            xerr=error,
            fmt="o",
            color=color,
            markerfacecolor="white" if s.small else color,
            capsize=3,
        )
    if floor is not None:
        ax.axvline(floor, color="C3", linestyle="--", linewidth=1, label=f"floor {floor:g}")
        ax.legend(loc="lower left", fontsize="x-small")
    ax.set_yticks(positions, labels, fontsize="small")
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel(
        f"test ROC AUC, {report.level:.0%} bootstrap interval\n"
        f"(rows in brackets; red: worst; hollow grey: small, < {report.min_rows} rows)"
    )
    ax.set_title("ROC AUC per slice")
    ax.grid(True, axis="x", alpha=0.3)
    return figure


def importance_figure(importance: Importance) -> Figure:
    """Drop in test ROC AUC when each raw column is shuffled, most important on top."""
    from matplotlib.figure import Figure

    columns = importance.columns
    figure = Figure(figsize=(6.4, 1.2 + 0.3 * max(len(columns), 1)), layout="constrained")
    ax = figure.subplots()
    positions = np.arange(len(columns))[::-1]
    estimates = np.array([c.roc_auc_drop.estimate for c in columns])
    lows = np.array([c.roc_auc_drop.low for c in columns])
    highs = np.array([c.roc_auc_drop.high for c in columns])
    defined = np.isfinite(lows)
    error = np.vstack([np.where(defined, estimates - lows, 0.0), np.where(defined, highs - estimates, 0.0)])
    ax.barh(positions, estimates, xerr=error, color="C0", capsize=3)
    ax.axvline(0.0, color="grey", linewidth=0.8)
    ax.set_yticks(positions, [c.column for c in columns], fontsize="small")
    ax.set_xlabel(
        f"drop in test ROC AUC when shuffled ({importance.repeats} shuffles, {importance.level:.0%} interval)"
    )
    ax.set_title("Which columns matter (permutation importance)")
    ax.grid(True, axis="x", alpha=0.3)
    return figure


def cv_table_markdown(
    table: pd.DataFrame,
    metrics: Sequence[str],
    chosen_lambda: float | None = None,
    chosen_mode: str | None = None,
    digits: int = 4,
) -> str:
    """The grid as a markdown table: ``mean ± SE`` per validation metric, chosen row marked."""
    value_header = "λ / p" if "mode" in table.columns and (table["mode"] == DROPOUT).any() else "λ"
    header = [
        "mode",
        value_header,
        *(f"val {_title(m)} (± SE)" for m in metrics),
        "train " + _title(metrics[0]),
        "‖w‖₂",
    ]
    has_stop = "stopped_epoch" in table.columns
    if has_stop:
        header.append("stopped epoch")
    header.append("chosen")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for mode, rows in _by_mode(table):
        chosen = set(_chosen_rows(rows, mode, chosen_lambda, chosen_mode).index) if chosen_lambda is not None else set()
        for index, row in rows.iterrows():
            cells = [mode, format_value(mode, float(row["lambda"]))]
            for metric in metrics:
                se = row.get(f"val_{metric}_se", 0.0)
                cells.append(f"{row[f'val_{metric}']:.{digits}f} ± {se:.{digits}f}")
            cells += [f"{row[f'train_{metrics[0]}']:.{digits}f}", f"{row['weight_norm']:.3f}"]
            if has_stop:
                cells.append(str(int(row["stopped_epoch"])) if pd.notna(row["stopped_epoch"]) else "")
            cells.append("✔" if index in chosen else "")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def model_card(
    *,
    model_name: str,
    data_source: str,
    data_sha256: str,
    config: Mapping[str, Any],
    chosen_mode: str,
    chosen_lambda: float,
    metric: str,
    rule: str,
    table: pd.DataFrame,
    test_intervals: Mapping[str, Interval],
    version: str | None = None,
    threshold: float = 0.5,
    threshold_reason: str = "",
    inputs: Sequence[Mapping[str, Any]] = (),
    code: Provenance | None = None,
    slices: SliceReport | None = None,
    importance: Importance | None = None,
    per_mode: Mapping[str, float] | None = None,
) -> str:
    """A markdown card a reviewer reads before trusting the model: data, code, inputs, choice, evidence, settings."""
    if rule not in RULES:
        raise ValueError(f"unknown selection rule {rule!r}; expected one of {sorted(RULES)}")
    level = next(iter(test_intervals.values())).level if test_intervals else 0.95
    resamples = next(iter(test_intervals.values())).resamples if test_intervals else 0
    title = f"{model_name} v{version}" if version else model_name
    card_metrics = list(dict.fromkeys([metric, *CARD_METRICS]))
    lines = [
        f"# Model card: {title}",
        "",
        "## Data",
        "",
        f"- **Source**: `{data_source}`",
        f"- **sha256**: `{data_sha256}`",
        "",
        *_code_section(code),
        "## Choice of weight decay",
        "",
        f"- **Mode**: {chosen_mode} ({MODE_NAMES.get(chosen_mode, chosen_mode)})",
        _chosen_value_line(chosen_mode, chosen_lambda),
        f"- **Rule**: `{rule}` — {RULES[rule].format(metric=_title(metric))}",
        "",
        cv_table_markdown(table, card_metrics, chosen_lambda, chosen_mode),
        "",
        *_threshold_section(threshold, threshold_reason),
        f"## Test metrics ({level:.0%} bootstrap confidence intervals, {resamples} resamples, threshold {threshold:g})",
        "",
        "| metric | value | CI |",
        "|---|---|---|",
        *(
            f"| {_title(name)} | {interval.estimate:.4f} | [{interval.low:.4f}, {interval.high:.4f}] |"
            for name, interval in test_intervals.items()
        ),
        "",
        *modes_section(table, metric, chosen_mode, per_mode or {}),
        *slices_section(slices),
        *importance_section(importance),
        *_inputs_section(inputs),
        "## Configuration",
        "",
        "| setting | value |",
        "|---|---|",
        *(f"| {key} | `{_setting(value)}` |" for key, value in config.items()),
    ]
    return "\n".join(lines) + "\n"


def _chosen_value_line(mode: str, value: float) -> str:
    name = "Dropout rate p" if is_dropout(mode) else "λ"
    return f"- **{name}**: {format_value(mode, value)} ({LAMBDA_MEANING.get(mode, 'weight decay')})"


def modes_section(
    table: pd.DataFrame, metric: str, winner: str, per_mode: Mapping[str, float], digits: int = 4
) -> list[str]:
    """When several modes ran: each mode's validation curve, its chosen value and weight norm, and the winner.

    The curve is the cross-validated ``metric`` (± SE) at every value of the mode's grid, in
    numbers here and drawn in the run's ``plots/validation_curve*.png``.
    """
    if "mode" not in table.columns or table["mode"].nunique() < 2:
        return []
    lines = [
        "## Regularisation modes compared",
        "",
        f"Each mode's value was chosen by the rule inside the mode; the winner holds the best cross-validated "
        f"{_title(metric)}. Figures: `plots/validation_curve.png` (λ)"
        + (f", `plots/validation_curve{DROPOUT_SUFFIX}.png` (dropout rate)" if len(split_by_axis(table)) > 1 else "")
        + ".",
        "",
        f"| mode | chosen | val {_title(metric)} (± SE) at chosen | ‖w‖₂ at chosen | winner |",
        "|---|---|---|---|---|",
    ]
    curves = []
    for mode, rows in _by_mode(table):
        chosen_value = per_mode.get(mode)
        chosen = _chosen_rows(rows, mode, chosen_value, None) if chosen_value is not None else rows.iloc[0:0]
        if len(chosen):
            row = chosen.iloc[0]
            score = f"{row[f'val_{metric}']:.{digits}f} ± {row.get(f'val_{metric}_se', 0.0):.{digits}f}"
            lines.append(
                f"| {mode} | {point_label(mode, chosen_value)} | {score} | {row['weight_norm']:.3f} | "
                f"{'**winner**' if mode == winner else ''} |"
            )
        points = ", ".join(
            f"{format_value(mode, float(value))} → {score:.{digits}f}"
            for value, score in zip(rows["lambda"], rows[f"val_{metric}"], strict=True)
        )
        curves.append(f"- **{mode}** ({value_symbol(mode)} → val {_title(metric)}): {points}")
    return [*lines, "", "Validation curves:", "", *curves, ""]


DIRTY_MEANING = {
    "true": "with uncommitted changes to tracked files",
    "false": "no uncommitted changes to tracked files",
}


def _threshold_section(threshold: float, reason: str) -> list[str]:
    """The probability from which the model labels a row positive, and where it came from."""
    return [
        "## Decision threshold",
        "",
        f"- **Threshold**: {reason or f'{threshold:g}'}",
        "- Labels, and the test metrics that need one (accuracy, precision, recall, F1), use it; `score` and "
        "the served model label with it unless `--threshold` is given.",
        "",
    ]


def _code_section(code: Provenance | None) -> list[str]:
    """The commit, the state of the tree, the lock file and the package versions that trained the model."""
    if code is None:
        return []
    packages = ", ".join(f"{name} {version}" for name, version in code.packages.items()) or "unknown"
    # Near the top: a version's description is the card cut to fit the registry, and what made
    # the model must survive the cut.
    return [
        "## Code",
        "",
        f"- **Git commit**: `{code.commit}` ({DIRTY_MEANING.get(code.dirty, 'uncommitted changes unknown')})",
        f"- **uv.lock sha256**: `{code.lock_sha256}`",
        f"- **Packages**: {packages}",
        "",
    ]


def _inputs_section(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The model's raw inputs and what its preprocessing learnt on the refit's training rows."""
    if not rows:
        return []
    return [
        "## Inputs (preprocessing inside the model, adapted on the refit's training rows)",
        "",
        markdown_table(rows),
        "",
    ]


DRIFT_ROWS = 10  # columns the card lists; the run's drift/drift.md has them all


def with_drift_section(card: str, drift: DriftReport) -> str:
    """The card with a section on drift against the champion's training data right after data and code: it can
    decide the registry's verdict, and a card cut to fit the registry loses its last sections first."""
    rows = drift.rows()[:DRIFT_ROWS]
    more = len(drift.columns) - len(rows)
    lines = [
        "## Drift against the champion's training data",
        "",
        f"{drift.summary()}. Population stability index of this run's training split against {drift.reference}'s; "
        f"warn from {drift.warn:g}, alert from {drift.alert:g}.",
        "",
        markdown_table(rows) if rows else "_(no column in common)_",
        "",
    ]
    if more > 0:
        lines += [f"_{more} more column(s) in the run's `drift/drift.md`._", ""]
    marker = "## Choice of weight decay"
    at = card.find(f"\n{marker}\n")
    if at < 0:
        return card.rstrip("\n") + "\n\n" + "\n".join(lines)
    return card[: at + 1] + "\n".join(lines) + card[at + 1 :]


def _with_interval(interval: Interval | None, digits: int = 3) -> str:
    if interval is None:
        return "n/a"
    if not math.isfinite(interval.low):
        return f"{interval.estimate:.{digits}f}"
    return f"{interval.estimate:.{digits}f} [{interval.low:.{digits}f}, {interval.high:.{digits}f}]"


def slices_section(report: SliceReport | None) -> list[str]:
    """Test metrics per slice of the columns named by ``--slice-by``, the worst slice first in words."""
    if report is None:
        return []
    worst = report.worst
    named = (
        f"**Worst slice**: `{worst.name}`, ROC AUC {_with_interval(worst.roc_auc)} on {worst.rows} rows"
        if worst
        else f"**Worst slice**: none: no slice of at least {report.min_rows} rows holds both classes"
    )
    rows = [
        {
            "column": s.column,
            "slice": s.value,
            "rows": s.rows,
            "positives": s.positives,
            "ROC AUC": _with_interval(s.roc_auc),
            "log loss": _with_interval(s.log_loss),
            "accuracy": _with_interval(s.accuracy),
            "note": ", ".join(
                note
                for note, applies in (("worst", s is worst), (f"small (< {report.min_rows} rows)", s.small))
                if applies
            ),
        }
        for s in report.slices
    ]
    return [
        f"## Slices (test split, {report.level:.0%} bootstrap intervals, {report.resamples} resamples, "
        f"threshold {report.threshold:g})",
        "",
        f"Numeric columns are cut at quartiles of the training split. {named}. A small slice is shown "
        "but too noisy to act on, and never named worst; n/a: the slice holds one class only.",
        "",
        markdown_table(rows) if rows else "_no test rows_",
        "",
    ]


def importance_section(importance: Importance | None) -> list[str]:
    """Permutation importance of each raw column: what the model loses when the column is shuffled."""
    if importance is None:
        return []
    rows = [
        {
            "rank": rank,
            "column": c.column,
            "ROC AUC drop": _with_interval(c.roc_auc_drop, 4),
            "log loss rise": _with_interval(c.log_loss_rise, 4),
        }
        for rank, c in enumerate(importance.columns, start=1)
    ]
    return [
        f"## Which columns matter (permutation importance on the test split, {importance.repeats} shuffles per "
        f"column, {importance.level:.0%} intervals)",
        *(
            [
                "",
                f"Measured on a seeded sample of {importance.rows_measured:,} of the {importance.rows_in_split:,} test rows.",
            ]
            if importance.sampled
            else []
        ),
        "",
        f"Each raw column is shuffled across the test rows and scored through the served model (baseline ROC AUC "
        f"{importance.baseline_roc_auc:.4f}, log loss {importance.baseline_log_loss:.4f}). Near zero: the model "
        "does not rely on the column; correlated columns share their importance.",
        "",
        markdown_table(rows),
        "",
    ]


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows of equal keys as a markdown table (pipes in values escaped)."""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(row[key]).replace("|", "\\|") for key in keys) + " |" for row in rows]
    return "\n".join(lines)


def report_artifacts(
    *,
    table: pd.DataFrame,
    curves: Sequence[tuple[str, Mapping[str, Sequence[float]]]],
    y_test: np.ndarray,
    p_test: np.ndarray,
    metric: str,
    chosen_mode: str,
    chosen_lambda: float,
    card: Mapping[str, Any],
    threshold: float = 0.5,
) -> dict[str, Figure | str]:
    """Every report artifact keyed by its path in the parent run: figures and ``model_card.md``.

    ``card`` holds the remaining :func:`model_card` arguments (model name, data source and
    sha256, config, rule, test intervals), so a flow logs the whole report in one loop.
    """
    artifacts: dict[str, Figure | str] = {}
    for suffix, rows in split_by_axis(table).items():
        artifacts[f"plots/validation_curve{suffix}.png"] = validation_curve_figure(
            rows, metric, chosen_lambda, chosen_mode
        )
        artifacts[f"plots/weight_norm{suffix}.png"] = weight_norm_figure(rows, chosen_lambda, chosen_mode)
        artifacts[f"plots/generalization_gap{suffix}.png"] = generalization_gap_figure(
            rows, metric, chosen_lambda, chosen_mode
        )
    artifacts |= {
        "plots/learning_curves.png": learning_curves_figure(curves),
        **{f"plots/{name}": figure for name, figure in diagnostic_figures(y_test, p_test, threshold).items()},
    }
    artifacts[CARD_ARTIFACT] = model_card(
        table=table, metric=metric, chosen_mode=chosen_mode, chosen_lambda=chosen_lambda, threshold=threshold, **card
    )
    return artifacts


def _setting(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:g}"
    return json.dumps(value, ensure_ascii=False, default=str)
