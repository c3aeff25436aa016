"""The numpy special functions behind the confidence sequence agree with SciPy's."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.special as sp

from fleet_server.rollouts import special


def test_gammaln_matches_scipy_from_tiny_to_huge_arguments() -> None:
    x = np.logspace(-8, 7, 20_000)
    expected = sp.gammaln(x)
    err = np.abs(special.gammaln(x) - expected) / np.maximum(1.0, np.abs(expected))
    assert err.max() < 1e-11


def test_betaln_matches_scipy_on_posterior_sized_arguments() -> None:
    rng = np.random.default_rng(7)
    a, b = rng.uniform(0.01, 1e5, 10_000), rng.uniform(0.01, 1e5, 10_000)
    expected = sp.betaln(a, b)
    err = np.abs(special.betaln(a, b) - expected) / np.maximum(1.0, np.abs(expected))
    assert err.max() < 1e-11


def test_xlogy_and_xlog1py_are_zero_where_x_is_zero_even_at_log_zero() -> None:
    x = np.array([0.0, 0.0, 1.0, 2.5, 3.0])
    y = np.array([0.0, 1.0, 0.0, 0.5, 1.0])
    np.testing.assert_array_equal(special.xlogy(x, y), sp.xlogy(x, y))
    np.testing.assert_array_equal(special.xlog1py(x, -y), sp.xlog1py(x, -y))


def test_gammaln_refuses_non_positive_arguments() -> None:
    with pytest.raises(ValueError, match="x > 0"):
        special.gammaln(np.array([1.0, 0.0]))
