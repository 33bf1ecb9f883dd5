"""Compiled CPU loops (numba) for what torch only offers as several gather and scatter passes: the
optimizer update of a step's touched table rows, in place, in one pass. Imported when training on the
CPU only (serving never needs numba); compiled once per machine and cached beside this file."""

from __future__ import annotations

import numba
import numpy as np

# numba's own thread pool: its OpenMP layer would bring a second OpenMP runtime beside torch's, whose
# idle threads spin and slowed the rest of the step several times over
numba.config.THREADING_LAYER = "workqueue"


@numba.njit(parallel=True, fastmath=True, cache=True)
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
    """Adam on the distinct `rows` of (N, d) float32 `weights` with their gradient `values`
    (len(rows), d): the moments move towards the gradient, the weights by -size * m / (sqrt(v) + eps),
    in float32 throughout (vectorised). Each row is one thread's, so the result does not depend on
    the thread count."""
    keep, mix = np.float32(1.0 - beta1), np.float32(1.0 - beta2)
    decay, epsilon, step = np.float32(beta2), np.float32(eps), np.float32(size)
    for k in numba.prange(rows.shape[0]):
        weight, moment, square, gradient = weights[rows[k]], exp_avg[rows[k]], exp_avg_sq[rows[k]], values[k]
        for j in range(weight.shape[0]):
            moment[j] += keep * (gradient[j] - moment[j])
            square[j] = decay * square[j] + mix * gradient[j] * gradient[j]
            weight[j] -= step * moment[j] / (np.sqrt(square[j]) + epsilon)


@numba.njit(parallel=True, fastmath=True, cache=True)
def deferred_adam_rows(
    weights: np.ndarray,
    exp_avg: np.ndarray,
    exp_avg_sq: np.ndarray,
    last: np.ndarray,
    rows: np.ndarray,
    values: np.ndarray,
    apply_gradient: bool,
    now: int,
    sums: np.ndarray,
    start: int,
    settled: np.ndarray,
    beta1: float,
    beta2: float,
    eps: float,
    size: float,
    eps_hat: float,
) -> None:
    """`optim.DeferredAdam` on the distinct `rows`: first the momentum tail each row owes for the steps
    it skipped since `last[row]` (its size from `sums`, the tails of rows last touched at start ..
    now - 1, or `settled` for older ones), then, with `apply_gradient`, Adam's step `now` with
    `values`; without it the rows only catch up to step now - 1."""
    keep, mix = np.float32(1.0 - beta1), np.float32(1.0 - beta2)
    decay, step, epsilon, epsilon_hat = (
        np.float32(beta2),
        np.float32(size),
        np.float32(eps),
        np.float32(eps_hat),
    )
    for k in numba.prange(rows.shape[0]):
        row = rows[k]
        weight, moment, square = weights[row], exp_avg[row], exp_avg_sq[row]
        t0 = last[row]
        skipped = now - 1 - t0
        if t0 > 0 and skipped > 0:
            tail = np.float32(sums[t0 - start] if t0 >= start else settled[t0])
            fade, settle = np.float32(beta1**skipped), np.float32(beta2**skipped)
            for j in range(weight.shape[0]):
                weight[j] -= tail * moment[j] / (np.sqrt(square[j]) + epsilon)
                moment[j] *= fade
                square[j] *= settle
        if apply_gradient:
            gradient = values[k]
            for j in range(weight.shape[0]):
                moment[j] += keep * (gradient[j] - moment[j])
                square[j] = decay * square[j] + mix * gradient[j] * gradient[j]
                weight[j] -= step * moment[j] / (np.sqrt(square[j]) + epsilon_hat)
            last[row] = now
        elif t0 > 0:
            last[row] = now - 1
