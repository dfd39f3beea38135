"""The regularization report: every figure draws what it promises; the card holds the evidence."""

from __future__ import annotations

import io
import re

import numpy as np
import pandas as pd
import pytest

from wd_pipeline.ml import report
from wd_pipeline.ml.bootstrap import bootstrap_cis
from wd_pipeline.ml.metrics import METRICS
from wd_pipeline.provenance import Provenance

LAMBDAS = [0.0, 1e-4, 1e-3, 1e-2, 1e-1]
SHA = "ab" * 32
PACKAGES = {"tensorflow": "2.21.0", "keras": "3.15.1"}


@pytest.fixture(scope="module")
def grid() -> pd.DataFrame:
    """A cross-validated grid table as the contract describes it: two modes, five λ each."""
    rng = np.random.default_rng(0)
    rows = []
    for mode in ("l2", "decoupled"):
        for i, lam in enumerate(LAMBDAS):
            row = {"mode": mode, "lambda": lam, "weight_norm": 8.0 - i, "stopped_epoch": 40 + i}
            for metric in METRICS:
                val = 0.2 + 0.01 * (i - 2) ** 2 if metric in ("log_loss", "brier") else 0.9 - 0.01 * abs(i - 2)
                train = val - 0.1 + 0.02 * i if metric in ("log_loss", "brier") else min(val + 0.08 - 0.015 * i, 1.0)
                std = float(rng.uniform(0.01, 0.03))
                row |= {
                    f"train_{metric}": train,
                    f"val_{metric}": val,
                    f"val_{metric}_std": std,
                    f"val_{metric}_se": std / np.sqrt(5),
                }
            rows.append(row)
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def test_predictions() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 114)
    return y, np.clip(0.3 * y + 0.7 * rng.random(114), 0, 1)


def renders(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    assert buffer.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"
    return buffer.getvalue()


def test_validation_curve_has_error_bars_one_line_per_mode_and_the_choice(grid: pd.DataFrame) -> None:
    figure = report.validation_curve_figure(grid, "log_loss", 1e-3, "decoupled")
    renders(figure)
    assert len(figure.axes) == 2
    ax = figure.axes[0]
    assert ax.get_xscale() == "symlog" and ax.get_xlim()[0] < 0.0  # λ = 0 is on the axis
    assert ax.get_ylabel() == "log loss" and "λ" in ax.get_xlabel()
    labels = ax.get_legend_handles_labels()[1]
    assert {"l2 validation (±1 SE)", "decoupled validation (±1 SE)", "l2 train", "decoupled train"} <= set(labels)
    assert "chosen: decoupled λ = 1e-03" in labels
    assert len(ax.containers) == 2  # one error-bar container per mode
    error_bars = ax.containers[1].lines[2][0].get_segments()
    se = grid.loc[grid["mode"] == "l2", "val_log_loss_se"].to_numpy()
    assert [s[1][1] - s[0][1] for s in error_bars] == pytest.approx(2 * se)
    star = [line for line in ax.lines if line.get_marker() == "*" and len(line.get_xdata())]
    assert len(star) == 1 and star[0].get_xdata()[0] == 1e-3


def test_a_single_split_table_without_mode_or_se_still_draws() -> None:
    table = pd.DataFrame(
        {
            "lambda": LAMBDAS,
            "train_log_loss": [0.1] * 5,
            "val_log_loss": [0.2] * 5,
            "train_accuracy": [1.0] * 5,
            "val_accuracy": [0.9] * 5,
            "weight_norm": [5.0, 4, 3, 2, 1],
            "penalized_weight_norm": [4.0, 3, 2, 1, 0.5],
        }
    )
    renders(report.validation_curve_figure(table, "log_loss", 1e-2))
    norms = report.weight_norm_figure(table, 1e-2)
    assert {"l2 all kernels", "l2 penalised kernels"} <= set(norms.axes[0].get_legend_handles_labels()[1])


def test_weight_norm_and_gap_one_line_per_mode(grid: pd.DataFrame) -> None:
    for figure in (
        report.weight_norm_figure(grid, 1e-3, "l2"),
        report.generalization_gap_figure(grid, "roc_auc", 1e-3, "l2"),
    ):
        renders(figure)
        (ax,) = figure.axes
        assert ax.get_xscale() == "symlog"
        mode_lines = [
            line
            for line in ax.lines
            if line.get_label() in ("l2", "decoupled", "l2 all kernels", "decoupled all kernels")
        ]
        assert len(mode_lines) == 2
    assert "overfitting" in figure.axes[0].get_ylabel()


@pytest.mark.parametrize("metric", ["log_loss", "roc_auc"])
def test_gap_is_positive_when_train_beats_validation(metric: str) -> None:
    better, worse = (0.1, 0.3) if metric == "log_loss" else (0.99, 0.8)
    table = pd.DataFrame({f"train_{metric}": [better], f"val_{metric}": [worse]})
    assert report.generalization_gap(table, metric).iloc[0] == pytest.approx(abs(better - worse))


def test_learning_curves_show_every_grid_point() -> None:
    curves = [
        (f"{mode} λ={lam}", {"loss": list(np.linspace(1, 0.1 + lam, 20)), "val_loss": list(np.linspace(1, 0.2, 20))})
        for mode in ("l2", "decoupled")
        for lam in (0, 1e-2, 1e-1)
    ]
    figure = report.learning_curves_figure(curves)
    renders(figure)
    assert [ax.get_ylabel() for ax in figure.axes] == ["loss", "val_loss"]
    for ax in figure.axes:
        assert len(ax.lines) == 6 and ax.get_xlabel() == "epoch"
    assert figure.axes[1].get_legend_handles_labels()[1][0] == "l2 λ=0"


def test_test_split_figures(test_predictions) -> None:
    from sklearn.metrics import average_precision_score, confusion_matrix, roc_auc_score

    y, p = test_predictions
    figures = report.diagnostic_figures(y, p, threshold=0.3)
    assert set(figures) == {"roc_curve.png", "precision_recall.png", "confusion_matrix.png", "calibration.png"}
    for figure in figures.values():
        renders(figure)
    roc = figures["roc_curve.png"].axes[0]
    assert (roc.get_xlabel(), roc.get_ylabel()) == ("false positive rate", "true positive rate")
    assert roc.get_legend_handles_labels()[1] == [f"model (AUC = {roc_auc_score(y, p):.3f})", "chance"]
    confusion = figures["confusion_matrix.png"].axes[0]
    counts = [[int(text.get_text()) for text in confusion.texts][i : i + 2] for i in (0, 2)]
    assert counts == confusion_matrix(y, (p >= 0.3).astype(int)).tolist()  # rows: true label, at the threshold
    assert "threshold 0.3" in confusion.get_title()
    assert (confusion.get_xlabel(), confusion.get_ylabel()) == ("predicted label", "true label")
    pr = figures["precision_recall.png"].axes[0]
    assert (pr.get_xlabel(), pr.get_ylabel()) == ("recall", "precision")
    assert pr.get_legend_handles_labels()[1] == [
        f"model (AP = {average_precision_score(y, p):.3f})",
        f"positive rate ({np.mean(y):.3f})",
        "threshold 0.3",
    ]
    chance = pr.lines[1].get_ydata()
    assert np.allclose(chance, np.mean(y))  # the no-skill baseline sits at the positive rate
    point = pr.lines[2]
    called = p >= 0.3
    assert (point.get_xdata()[0], point.get_ydata()[0]) == pytest.approx(
        (called[y == 1].mean(), y[called].mean())  # recall, precision where the threshold labels
    )
    calibration = figures["calibration.png"].axes[0]
    assert calibration.get_ylabel() == "fraction of positives" and len(calibration.lines) == 2
    assert calibration.get_legend_handles_labels()[1] == ["perfectly calibrated", "model"]


def test_test_split_figures_stay_out_of_pyplot(test_predictions) -> None:
    from matplotlib._pylab_helpers import Gcf

    before = len(Gcf.get_all_fig_managers())
    report.diagnostic_figures(*test_predictions)
    assert len(Gcf.get_all_fig_managers()) == before  # nothing registered: no global state, safe in threads


def test_model_card_holds_fingerprint_choice_table_and_intervals(grid: pd.DataFrame, test_predictions) -> None:
    y, p = test_predictions
    intervals = bootstrap_cis(y, p, n_resamples=200)
    card = report.model_card(
        model_name="wd-classifier",
        version="3",
        data_source="data/breast_cancer.csv",
        data_sha256=SHA,
        config={"grid": [0.0, 1e-3], "epochs": 100, "learning_rate": 1e-3, "positive_class": None},
        chosen_mode="decoupled",
        chosen_lambda=1e-3,
        metric="log_loss",
        rule="one-se",
        table=grid,
        test_intervals=intervals,
    )
    assert card.startswith("# Model card: wd-classifier v3")
    assert SHA in card and "data/breast_cancer.csv" in card
    assert "**λ**: 1e-03" in card and "decoupled weight decay (AdamW)" in card and "one-SE rule" in card
    assert (
        f"| roc auc | {intervals['roc_auc'].estimate:.4f} | [{intervals['roc_auc'].low:.4f}, {intervals['roc_auc'].high:.4f}] |"
        in card
    )
    assert "95% bootstrap confidence intervals, 200 resamples" in card
    chosen_rows = [line for line in card.splitlines() if line.endswith("| ✔ |")]
    assert len(chosen_rows) == 1 and chosen_rows[0].startswith("| decoupled | 1e-03 |")
    assert "| epochs | `100` |" in card and "| positive_class | `null` |" in card
    assert re.search(r"\| 0\.\d{4} ± 0\.\d{4} \|", card)  # readable rounding, mean ± SE
    assert "- **Threshold**: 0.5\n" in card  # no reason given: the number alone


def test_model_card_says_how_the_threshold_was_chosen(grid: pd.DataFrame) -> None:
    reason = "0.231, chosen by --threshold auto: maximum f1 (0.8000) on 455 out-of-fold validation predictions"
    card = report.model_card(
        model_name="m",
        data_source="s",
        data_sha256=SHA,
        config={},
        chosen_mode="l2",
        chosen_lambda=0.0,
        metric="log_loss",
        rule="best",
        table=grid,
        test_intervals={},
        threshold=0.231,
        threshold_reason=reason,
    )
    section = card[card.index("## Decision threshold") : card.index("## Test metrics")]
    assert f"- **Threshold**: {reason}" in section
    assert "threshold 0.231)" in card  # the test metrics are at it


def test_model_card_names_the_code_that_made_the_model(grid: pd.DataFrame) -> None:
    settings = {
        "model_name": "m",
        "data_source": "s",
        "data_sha256": SHA,
        "config": {},
        "chosen_mode": "l2",
        "chosen_lambda": 0.0,
        "metric": "log_loss",
        "rule": "best",
        "table": grid,
        "test_intervals": {},
    }
    code = Provenance(commit="c0ffee" * 6 + "abcd", dirty="true", lock_sha256="e" * 64, packages=PACKAGES)
    card = report.model_card(**settings, code=code)
    section = card[card.index("## Code") : card.index("## Choice")].splitlines()
    assert card.index("## Data") < card.index("## Code") < card.index("## Choice")
    assert section == [
        "## Code",
        "",
        f"- **Git commit**: `{code.commit}` (with uncommitted changes to tracked files)",
        f"- **uv.lock sha256**: `{'e' * 64}`",
        "- **Packages**: tensorflow 2.21.0, keras 3.15.1",
        "",
    ]
    unknown = report.model_card(**settings, code=Provenance())
    assert "- **Git commit**: `unknown` (uncommitted changes unknown)" in unknown
    assert "## Code" not in report.model_card(**settings)


def test_model_card_refuses_an_unknown_rule(grid: pd.DataFrame) -> None:
    with pytest.raises(ValueError, match="unknown selection rule 'median'"):
        report.model_card(
            model_name="m",
            data_source="s",
            data_sha256=SHA,
            config={},
            chosen_mode="l2",
            chosen_lambda=0.0,
            metric="log_loss",
            rule="median",
            table=grid,
            test_intervals={},
        )


def test_report_artifacts_bundle_every_figure_and_the_card(grid: pd.DataFrame, test_predictions) -> None:
    from matplotlib.figure import Figure

    y, p = test_predictions
    curves = [("l2 λ=0", {"loss": [1.0, 0.5], "val_loss": [1.1, 0.7]})]
    card = {
        "model_name": "m",
        "data_source": "d.csv",
        "data_sha256": SHA,
        "config": {"epochs": 2},
        "rule": "best",
        "test_intervals": bootstrap_cis(y, p, n_resamples=100),
    }
    artifacts = report.report_artifacts(
        table=grid,
        curves=curves,
        y_test=y,
        p_test=p,
        metric="log_loss",
        chosen_mode="l2",
        chosen_lambda=1e-2,
        card=card,
    )
    figures = {path for path, item in artifacts.items() if isinstance(item, Figure)}
    assert figures == {
        f"plots/{name}.png"
        for name in (
            "validation_curve",
            "weight_norm",
            "generalization_gap",
            "learning_curves",
            "roc_curve",
            "precision_recall",
            "confusion_matrix",
            "calibration",
        )
    }
    assert SHA in artifacts["model_card.md"] and "the best cross-validated log loss" in artifacts["model_card.md"]


@pytest.fixture(scope="module")
def three_modes(grid: pd.DataFrame) -> pd.DataFrame:
    """The two weight-decay modes of ``grid`` plus a dropout mode over rates."""
    dropout = grid[grid["mode"] == "l2"].assign(mode="dropout", **{"lambda": [0.0, 0.1, 0.2, 0.3, 0.5]})
    return pd.concat([grid, dropout], ignore_index=True)


def test_dropout_curves_get_their_own_axis_of_rates(three_modes: pd.DataFrame) -> None:
    parts = report.split_by_axis(three_modes)
    assert set(parts) == {"", "_dropout"} and set(parts["_dropout"]["mode"]) == {"dropout"}
    figure = report.validation_curve_figure(parts["_dropout"], "log_loss", 0.3, "dropout")
    ax = figure.axes[0]
    assert ax.get_xscale() == "linear" and ax.get_xlabel() == "dropout rate p" and "vs p" in ax.get_title()
    assert "chosen: dropout p = 0.3" in ax.get_legend_handles_labels()[1]
    wd = report.validation_curve_figure(parts[""], "log_loss", 0.3, "dropout")
    assert wd.axes[0].get_xscale() == "symlog"
    assert not [label for label in wd.axes[0].get_legend_handles_labels()[1] if label.startswith("chosen")]


def test_three_modes_give_both_figures_and_a_card_comparing_the_modes(three_modes, test_predictions) -> None:
    from matplotlib.figure import Figure

    y, p = test_predictions
    card = {
        "model_name": "m",
        "data_source": "d.csv",
        "data_sha256": SHA,
        "config": {"modes": ["l2", "decoupled", "dropout"]},
        "rule": "one-se",
        "test_intervals": bootstrap_cis(y, p, n_resamples=50),
        "per_mode": {"l2": 1e-3, "decoupled": 1e-2, "dropout": 0.3},
    }
    artifacts = report.report_artifacts(
        table=three_modes,
        curves=[],
        y_test=y,
        p_test=p,
        metric="log_loss",
        chosen_mode="dropout",
        chosen_lambda=0.3,
        card=card,
    )
    figures = {path for path, item in artifacts.items() if isinstance(item, Figure)}
    for name in ("validation_curve", "weight_norm", "generalization_gap"):
        assert {f"plots/{name}.png", f"plots/{name}_dropout.png"} <= figures
    text = artifacts["model_card.md"]
    assert "- **Dropout rate p**: 0.3 (each hidden unit's output is zeroed" in text
    assert "## Regularisation modes compared" in text
    compared = text[text.index("## Regularisation modes compared") :]
    assert "| dropout | dropout p=0.3 |" in compared and compared.count("**winner**") == 1
    assert "| l2 | l2 λ=1e-03 |" in compared and "| decoupled | decoupled λ=1e-02 |" in compared
    for mode in ("l2", "decoupled", "dropout"):
        assert f"- **{mode}** (" in compared  # each mode's validation curve, in numbers
    assert "- **dropout** (p → val log loss): 0 → " in compared and ", 0.5 → " in compared
    chosen = [line for line in text.splitlines() if line.endswith("| ✔ |")]
    assert len(chosen) == 1 and chosen[0].startswith("| dropout | 0.3 |")
