"""Splits and folds that keep every group of rows (a patient, a customer, a protein block) on one side.

Rows of one group resemble each other more than rows of two groups do, so a group seen in
training and again in a test or validation split flatters the score. With
``--group-column`` the test and validation splits are drawn by whole groups, and the
cross-validation folds are scikit-learn's ``StratifiedGroupKFold``. The draws keep the
class balance as well as whole groups allow.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from wd_pipeline.errors import DataError

# Test, validation and training each take at least one whole group.
MIN_GROUPS = 3
# The swaps that improve a greedy draw are looked for among at most this many pairs of groups per round.
SWAP_PAIRS = 250_000
SWAP_ROUNDS = 100
# A draw whose squared relative shortfalls sum to less than this is close enough (0.1 % per class and side).
CLOSE_ENOUGH = 4e-6


def group_codes(column: pa.ChunkedArray, name: str) -> np.ndarray:
    """Each row's group as a number 0…k-1 (in order of first appearance), after checking the groups can be split.

    ``column`` is the group column of the labelled rows with missing values as nulls.
    """
    missing = column.null_count
    if missing:
        raise DataError(
            f"group column {name!r} is missing on {missing} of {len(column)} rows: every row needs a group; "
            "fill it in, or pass --group-column with another column"
        )
    encoded = pc.dictionary_encode(column).combine_chunks()
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    count = len(encoded.dictionary)
    if count == 1:
        raise DataError(
            f"group column {name!r} holds a single group: a grouped split needs groups to keep apart; "
            "pass --group-column with the column that tells the groups apart, or leave it out"
        )
    if count < MIN_GROUPS:
        raise DataError(
            f"group column {name!r} holds {count} groups: test, validation and training each take whole groups, "
            f"so at least {MIN_GROUPS} are needed; pass --group-column with a column of more groups, or leave it out"
        )
    return codes


def split_rows(
    label: np.ndarray, groups: np.ndarray, *, test_fraction: float, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, validation, test) row numbers, each group in one of them: test drawn first, validation from the rest."""
    rest, test = stratified_group_draw(label, groups, test_fraction, seed)
    val_share = val_fraction / (1.0 - test_fraction)
    kept, validation = stratified_group_draw(label[rest], groups[rest], val_share, seed)
    return rest[kept], rest[validation], test


def stratified_group_draw(
    label: np.ndarray, groups: np.ndarray, share: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(rest, drawn) row numbers: whole groups drawn to hold about ``share`` of each class, the others left.

    A seeded greedy draw: the groups are shuffled, then placed one at a time, larger before
    smaller (the shuffle orders groups of one size), each on the side (drawn or rest) where
    it most reduces the squared relative shortfall of that side's class counts against its
    target. Small groups come last and even out what large ones left. Where few groups hold
    the rare class, greedy placement can still miss its share; swaps of one drawn group for
    one left (:func:`_swap_while_better`) then repair that.
    """
    present = np.unique(groups)
    codes = np.searchsorted(present, groups)
    per_class = np.stack(
        [np.bincount(codes[label == value], minlength=len(present)) for value in (0, 1)], axis=1
    ).astype(float)
    totals = per_class.sum(axis=0)
    target = np.outer([1.0 - share, share], totals)
    scale = np.where(target > 0, target, 1.0)
    rng = np.random.RandomState(seed)
    shuffled = rng.permutation(len(present))
    order = shuffled[np.argsort(-per_class[shuffled].sum(axis=1), kind="stable")]
    placed = np.zeros_like(target)
    side = np.zeros(len(present), dtype=np.int8)
    for group in order:
        gain = ((placed + per_class[group] - target) / scale) ** 2 - ((placed - target) / scale) ** 2
        chosen = int(np.argmin(gain.sum(axis=1)))
        side[group] = chosen
        placed[chosen] += per_class[group]
    _leave_no_side_empty(side, per_class.sum(axis=1))
    _swap_while_better(side, per_class, target, scale, rng)
    drawn = side[codes] == 1
    return np.flatnonzero(~drawn), np.flatnonzero(drawn)


def _swap_while_better(
    side: np.ndarray, per_class: np.ndarray, target: np.ndarray, scale: np.ndarray, rng: np.random.RandomState
) -> None:
    """Exchange one drawn group for one left group while that brings both sides' class counts closer to target.

    Each round takes the best exchange (among a seeded sample of pairs when there are many
    groups); an exchange never empties a side.
    """

    def cost(drawn: np.ndarray) -> np.ndarray:
        rest = per_class.sum(axis=0) - drawn
        return (((drawn - target[1]) / scale[1]) ** 2).sum(axis=-1) + (((rest - target[0]) / scale[0]) ** 2).sum(
            axis=-1
        )

    for _ in range(SWAP_ROUNDS):
        drawn_groups, rest_groups = np.flatnonzero(side == 1), np.flatnonzero(side == 0)
        limit = max(1, int(np.sqrt(SWAP_PAIRS)))
        if len(drawn_groups) > limit:
            drawn_groups = rng.choice(drawn_groups, size=limit, replace=False)
        if len(rest_groups) > limit:
            rest_groups = rng.choice(rest_groups, size=limit, replace=False)
        drawn = per_class[side == 1].sum(axis=0)
        if cost(drawn) < CLOSE_ENOUGH:
            return
        swapped = drawn + per_class[rest_groups][None, :, :] - per_class[drawn_groups][:, None, :]
        costs = cost(swapped)
        best = np.unravel_index(int(np.argmin(costs)), costs.shape)
        if costs[best] >= cost(drawn) - 1e-12:
            return
        side[drawn_groups[best[0]]], side[rest_groups[best[1]]] = 0, 1


def _leave_no_side_empty(side: np.ndarray, sizes: np.ndarray) -> None:
    """When every group landed on one side, the smallest one moves to the other."""
    for empty in (0, 1):
        if not (side == empty).any():
            side[int(np.argmin(sizes))] = empty


def check_both_classes(label: np.ndarray, groups: np.ndarray, parts: dict[str, np.ndarray], name: str) -> None:
    """Every split needs rows of both classes; whole groups cannot always give them that."""
    for split, rows in parts.items():
        for value, word in ((1, "positive"), (0, "negative")):
            if not (label[rows] == value).any():
                holding = len(np.unique(groups[label == value]))
                raise DataError(
                    f"grouped split left the {split} split without {word} rows: they lie in {holding} "
                    f"group{'s' if holding != 1 else ''} of {name!r}, and test, validation and training each need "
                    "some; pass --group-column with a column that spreads them over more groups, or leave it out"
                )


def fold_rows(
    label: np.ndarray, groups: np.ndarray | None, folds: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(training, validation) row numbers of each cross-validation fold: stratified, and by whole groups when given."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    rows = np.zeros(len(label))
    if groups is None:
        return list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(rows, label))
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return list(splitter.split(rows, label, groups))


def check_group_folds(folds: int, groups: int, name: str) -> None:
    """Each fold's validation part takes at least one whole group of the training data (train + validation)."""
    if folds > groups:
        raise DataError(
            f"{folds} folds need at least {folds} groups in the training data (train + validation); "
            f"it holds {groups} groups of {name!r}: lower --folds"
        )
