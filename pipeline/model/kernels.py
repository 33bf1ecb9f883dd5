"""Compiled CPU loops (numba) for what torch only offers as several gather and scatter passes: the
optimizer update of a step's touched table rows, in place, in one pass. Imported when training on the
CPU only (serving never needs numba); compiled once per machine and cached beside this file."""

from __future__ import annotations

import math

import numba
import numpy as np

# numba's own thread pool: its OpenMP layer would bring a second OpenMP runtime beside torch's, whose
# idle threads spin and slowed the rest of the step several times over
numba.config.THREADING_LAYER = "workqueue"


@numba.njit(parallel=True, cache=True)
def lazy_adam_rows(
    weights: np.ndarray,
    exp_avg: np.ndarray,
    exp_avg_sq: np.ndarray,
    rows: np.ndarray,
    values: np.ndarray,
    beta1: float,
    beta2: float,
    eps: float,
    size: float,
) -> None:
    """Adam on the distinct `rows` of (N, d) `weights` with their gradient `values` (len(rows), d):
    the moments move towards the gradient, the weights by -size * m / (sqrt(v) + eps). Each row is
    one thread's, so the result does not depend on the thread count."""
    for k in numba.prange(rows.shape[0]):
        row = rows[k]
        for j in range(weights.shape[1]):
            gradient = values[k, j]
            moment = exp_avg[row, j] + (1.0 - beta1) * (gradient - exp_avg[row, j])
            square = beta2 * exp_avg_sq[row, j] + (1.0 - beta2) * gradient * gradient
            exp_avg[row, j] = moment
            exp_avg_sq[row, j] = square
            weights[row, j] -= size * moment / (math.sqrt(square) + eps)
