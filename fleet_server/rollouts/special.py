"""The three special functions the confidence sequence needs, in numpy alone, so the
server (and the device install that shares its distribution) does not carry SciPy.

``gammaln`` shifts its argument above 8 with the recurrence ``Γ(x + 1) = x Γ(x)`` and then
sums Stirling's series to the ``z^-7`` term: error below 1e-11 of ``max(1, |log Γ(x)|)``
for x from 1e-8 to 1e7 (checked against SciPy in ``tests/rollouts/test_special_functions.py``)."""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

_SHIFT = 8
_HALF_LOG_2PI = 0.5 * np.log(2 * np.pi)


def gammaln(x: ArrayLike) -> NDArray[np.float64]:
    """``log Γ(x)`` for x > 0, elementwise."""
    x = np.asarray(x, dtype=np.float64)
    if np.any(~(x > 0)):
        raise ValueError("gammaln needs x > 0")
    z = x + _SHIFT
    log_product = np.zeros_like(x)
    for k in range(_SHIFT):
        log_product += np.log(x + k)
    inv = 1.0 / z
    inv2 = inv * inv
    series = inv * (1 / 12 - inv2 * (1 / 360 - inv2 * (1 / 1260 - inv2 / 1680)))
    return (z - 0.5) * np.log(z) - z + _HALF_LOG_2PI + series - log_product


def betaln(a: ArrayLike, b: ArrayLike) -> NDArray[np.float64]:
    """``log B(a, b)`` for a, b > 0, elementwise."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return gammaln(a) + gammaln(b) - gammaln(a + b)


def xlogy(x: ArrayLike, y: ArrayLike) -> NDArray[np.float64]:
    """``x * log(y)``, and 0 where x == 0 (whatever y is)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.broadcast_to(np.asarray(y, dtype=np.float64), x.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x == 0, 0.0, x * np.log(np.where(x == 0, 1.0, y)))


def xlog1py(x: ArrayLike, y: ArrayLike) -> NDArray[np.float64]:
    """``x * log1p(y)``, and 0 where x == 0 (whatever y is)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.broadcast_to(np.asarray(y, dtype=np.float64), x.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x == 0, 0.0, x * np.log1p(np.where(x == 0, 0.0, y)))
