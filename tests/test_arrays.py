import numpy as np
import pytest

from recsys.arrays import sorted_member


@pytest.mark.parametrize("size", [0, 1, 7, 200])
def test_sorted_member_equals_isin(size: int) -> None:
    rng = np.random.default_rng(size)
    sorted_values = np.unique(rng.integers(-50, 50, size=size))
    values = rng.integers(-80, 80, size=(13, 11))  # below, inside and above the sorted range
    got = sorted_member(values, sorted_values)
    assert got.shape == values.shape
    np.testing.assert_array_equal(got, np.isin(values, sorted_values))
