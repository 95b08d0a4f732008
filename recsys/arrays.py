"""Array helpers shared by the data, scoring and serving code."""

from __future__ import annotations

import numpy as np


def sorted_member(values: np.ndarray, sorted_values: np.ndarray) -> np.ndarray:
    """``np.isin(values, sorted_values)`` for an already sorted ``sorted_values``: one binary
    search per value, with none of ``isin``'s sorting of both sides."""
    if not sorted_values.size:
        return np.zeros(values.shape, dtype=bool)
    at = np.minimum(np.searchsorted(sorted_values, values), len(sorted_values) - 1)
    return sorted_values[at] == values


def length_groups(
    lengths: np.ndarray, growth: float, slack: float = 0.0, max_rows: int = 0
) -> list[np.ndarray]:
    """Row indices grouped by similar length, shortest first, each group to be padded to its
    longest: attention costs the square of the padded length, so one long row would otherwise
    tax a whole batch. A group closes at ``max_rows`` rows (0: no cap) or where the next length
    exceeds ``growth`` times the group's first plus ``slack``."""
    order = np.argsort(lengths, kind="stable")
    ordered = np.asarray(lengths)[order].tolist()
    groups, start = [], 0
    for end in range(1, len(order) + 1):
        if (
            end == len(order)
            or end - start == max_rows
            or ordered[end] > growth * ordered[start] + slack
        ):
            groups.append(order[start:end])
            start = end
    return groups
