"""Permutation importance: the column the label depends on ranks first, noise sits near zero, a category counts once."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.helpers.networks import fit_full_batch, frame_schema
from wd_pipeline.ml import importance, network, preprocessing, report
from wd_pipeline.ml.importance import permutation_importance


def signal_table(rows: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """``signal`` decides most of the label, ``colour`` a little, ``noise`` nothing."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=rows)
    colour = rng.choice(["red", "green", "blue"], size=rows).astype(object)
    noise = rng.normal(size=rows)
    score = 2.5 * signal + 1.0 * (colour == "red") - 1.0 * (colour == "blue") + rng.normal(scale=0.5, size=rows)
    frame = pd.DataFrame({"noise": noise, "colour": colour, "signal": signal})
    return frame, (score > 0).astype(int)


@pytest.fixture(scope="module")
def trained() -> tuple[object, preprocessing.Preprocessing]:
    """A small network trained on the table, reading colour through a one-hot layer."""
    frame, y = signal_table(600, seed=0)
    prep = preprocessing.adapt(frame, frame_schema(frame, list(frame.columns)), one_hot_max=8)
    assert [column.name for column in prep.one_hot] == ["colour"]
    model = network.build_model(prep, lam=0.0, learning_rate=0.03, seed=1)
    fit_full_batch(model, preprocessing.model_inputs(frame, prep), y.astype("float32").reshape(-1, 1), epochs=150)
    return model, prep


def test_through_the_served_input_path_signal_ranks_first_and_noise_is_near_zero(trained) -> None:
    model, prep = trained
    test, y = signal_table(400, seed=1)
    result = permutation_importance(
        lambda frame: network.predict_frame(model, prep, frame), test, y, columns=prep.columns, repeats=5, seed=0
    )
    assert result.baseline_roc_auc > 0.9
    assert result.ranking()[0] == "signal"
    by_column = {c.column: c for c in result.columns}
    assert sorted(by_column) == ["colour", "noise", "signal"]  # the one-hot colour is one column, not three
    assert by_column["signal"].roc_auc_drop.low > 0.2
    assert by_column["colour"].roc_auc_drop.low > 0
    assert abs(by_column["noise"].roc_auc_drop.estimate) < 0.02
    assert by_column["signal"].log_loss_rise.estimate > by_column["noise"].log_loss_rise.estimate
    assert [row["rank"] for row in result.rows()] == [1, 2, 3]


def exact(frame: pd.DataFrame) -> np.ndarray:
    """A fixed model: reads ``signal`` and ``colour``, never ``noise``."""
    colour = frame["colour"].map({"red": 1.0, "green": 0.0, "blue": -1.0}).to_numpy(dtype=float)
    return 1 / (1 + np.exp(-(2.5 * frame["signal"].to_numpy() + colour)))


def test_a_column_the_model_ignores_costs_exactly_nothing_and_order_is_by_drop() -> None:
    test, y = signal_table(300, seed=2)
    result = permutation_importance(exact, test, y, columns=["noise", "colour", "signal"], repeats=4, seed=1)
    assert result.ranking() == ["signal", "colour", "noise"]
    noise = result.columns[-1]
    assert (noise.roc_auc_drop.estimate, noise.roc_auc_drop.low, noise.roc_auc_drop.high) == (0.0, 0.0, 0.0)
    assert noise.log_loss_rise.estimate == 0.0


def test_repeats_are_seeded_and_each_column_has_its_own_shuffles() -> None:
    test, y = signal_table(200, seed=3)
    first = permutation_importance(exact, test, y, columns=["colour", "signal"], repeats=3, seed=7)
    again = permutation_importance(exact, test, y, columns=["colour", "signal"], repeats=3, seed=7)
    other = permutation_importance(exact, test, y, columns=["colour", "signal"], repeats=3, seed=8)
    assert first == again and first != other
    assert test.equals(signal_table(200, seed=3)[0])  # the caller's frame is never shuffled in place


def test_the_interval_comes_from_the_repeats_and_one_repeat_has_none() -> None:
    interval = importance.mean_interval([0.1, 0.2, 0.3])
    assert interval.estimate == pytest.approx(0.2)
    assert interval.low == pytest.approx(0.2 - 4.302653 * 0.1 / np.sqrt(3), rel=1e-5)
    single = importance.mean_interval([0.25])
    assert single.estimate == 0.25 and np.isnan(single.low) and np.isnan(single.high)


def test_zero_repeats_and_a_single_class_are_refused() -> None:
    test, y = signal_table(50, seed=4)
    with pytest.raises(ValueError, match="at least one repeat"):
        permutation_importance(exact, test, y, columns=["signal"], repeats=0)
    with pytest.raises(ValueError, match="both classes"):
        permutation_importance(exact, test, np.zeros(50), columns=["signal"], repeats=1)


def test_the_model_card_lists_the_columns_most_important_first() -> None:
    test, y = signal_table(300, seed=2)
    result = permutation_importance(exact, test, y, columns=["noise", "colour", "signal"], repeats=3, seed=1)
    section = "\n".join(report.importance_section(result))
    assert section.startswith("## Which columns matter (permutation importance on the test split, 3 shuffles")
    rows = [line.split(" | ")[1] for line in section.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert rows == ["signal", "colour", "noise"]
    assert report.importance_section(None) == []
    axes = report.importance_figure(result).axes[0]
    heights = {label.get_text(): label.get_position()[1] for label in axes.get_yticklabels()}
    assert sorted(heights, key=heights.get, reverse=True) == ["signal", "colour", "noise"]  # most important on top


def counting(sizes: list[int]) -> importance.Predict:
    """:func:`exact`, noting how many rows each call scores in ``sizes``."""

    def counted(frame: pd.DataFrame) -> np.ndarray:
        sizes.append(len(frame))
        return exact(frame)

    return counted


def test_a_large_split_is_measured_on_a_seeded_sample_and_the_card_says_so() -> None:
    test, y = signal_table(3_000, seed=5)
    sizes: list[int] = []
    counted = counting(sizes)
    columns = ["noise", "colour", "signal"]
    sampled = permutation_importance(counted, test, y, columns=columns, repeats=2, seed=1, max_rows=500)
    # The baseline, then every shuffle of the 500 sampled rows (scored together, in one call here).
    assert sizes[0] == 500 and all(size % 500 == 0 for size in sizes) and sum(sizes) == 500 * (1 + 3 * 2)
    assert (sampled.rows_measured, sampled.rows_in_split, sampled.sampled) == (500, 3_000, True)
    assert sampled == permutation_importance(exact, test, y, columns=columns, repeats=2, seed=1, max_rows=500)
    assert sampled.ranking() == ["signal", "colour", "noise"]
    assert "seeded sample of 500 of the 3,000 test rows" in "\n".join(report.importance_section(sampled))

    whole = permutation_importance(exact, test, y, columns=columns, repeats=2, seed=1)
    assert (whole.rows_measured, whole.rows_in_split, whole.sampled) == (3_000, 3_000, False)
    assert "sample" not in "\n".join(report.importance_section(whole))


def test_shuffles_scored_together_measure_what_one_call_per_shuffle_measures(monkeypatch) -> None:
    """Batching the model calls changes how many calls there are, nothing that is measured."""
    test, y = signal_table(300, seed=3)
    calls: list[int] = []
    counted = counting(calls)
    columns = ["noise", "colour", "signal"]
    together = permutation_importance(counted, test, y, columns=columns, repeats=4, seed=2)
    assert calls == [300, 300 * 3 * 4]  # the baseline, then all twelve shuffles at once
    monkeypatch.setattr(importance, "BATCH_ROWS", 1)
    calls.clear()
    one_by_one = permutation_importance(counted, test, y, columns=columns, repeats=4, seed=2)
    assert calls == [300] * (1 + 3 * 4)
    assert one_by_one == together
