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
