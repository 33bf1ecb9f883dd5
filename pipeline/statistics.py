"""Every interval the gate and the reports show, and the size an experiment plans for (pure: numpy,
scipy and statsmodels only). One home, so the offline gate, `bookrec gate compare`, `bookrec
experiment report`, the Monitoring page and the simulator cannot disagree on how a figure's
uncertainty is computed.

- A rate over lists (click-through, mean reciprocal rank of one version on one day): a ratio of
  sums over readers, the delta method's interval with readers as the unit (below).
- One mean of independent values: Student's t interval (scipy `ttest_1samp`).
- Two models on the same readers (the offline gate): the paired t interval of the per-reader
  differences (scipy `ttest_rel`); coverage, a property of the whole set of lists rather than a
  mean over readers, by a paired bootstrap over readers (scipy `bootstrap`).
- Two arms of an experiment (readers are the unit: a reader's lists are correlated): the ratio of
  clicked lists to lists per arm with the delta method's variance over readers (Deng et al., KDD
  2018), a normal interval (scipy `norm.interval`). Vectorised over leading axes, so many simulated
  experiments are evaluated at once.
- Planned size: readers per arm from statsmodels' `NormalIndPower`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class Interval:
    """An estimate (a difference, for the comparisons) with its interval and the units it is over."""

    estimate: float
    low: float
    high: float
    units: int  # readers
    method: str

    def at_least(self, bar: float) -> bool:
        """The whole interval at or above `bar` (NaN, no data, is never)."""
        return bool(self.low == self.low and self.low >= bar)

    def as_dict(self) -> dict:
        return asdict(self)

    def text(self, digits: int = 4) -> str:
        return f"{self.estimate:+.{digits}f} [{self.low:+.{digits}f}, {self.high:+.{digits}f}] over {self.units} readers"


NO_DATA = Interval(math.nan, math.nan, math.nan, 0, "none")


def mean_interval(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): Student's t interval of a mean (NaN bounds with fewer than two values)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        mean = float(values.mean()) if len(values) else math.nan
        return mean, math.nan, math.nan
    mean = float(values.mean())
    if values.std() == 0:  # no spread: the mean is exact
        return mean, mean, mean
    low, high = stats.ttest_1samp(values, 0.0).confidence_interval(confidence)
    return mean, float(low), float(high)


def paired_difference(first: np.ndarray, second: np.ndarray, confidence: float = 0.95) -> Interval:
    """Mean of `first - second` over the same readers, with the paired t interval."""
    first, second = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    if first.shape != second.shape:
        raise ValueError(f"paired figures need the same readers: {first.shape} against {second.shape}")
    n = len(first)
    if n < 2:
        return NO_DATA
    difference = float((first - second).mean())
    if np.all(first - second == difference):  # no spread: the difference is exact
        return Interval(difference, difference, difference, n, "paired t")
    low, high = stats.ttest_rel(first, second).confidence_interval(confidence)
    return Interval(difference, float(low), float(high), n, "paired t")


def paired_bootstrap(
    statistic: Callable[[np.ndarray], np.ndarray],
    units: int,
    confidence: float = 0.95,
    resamples: int = 1000,
    seed: int = 0,
) -> Interval:
    """A statistic of a set of readers (a difference between two models' lists on them) with an
    interval as wide as the percentile interval of a bootstrap over readers, centred on the estimate. `statistic` takes index arrays (..., readers)
    and returns (...): resampling indices keeps the two models' lists paired."""
    if units < 2:
        return NO_DATA
    everyone = np.arange(units)
    estimate = float(statistic(everyone[None, :])[0])
    result = stats.bootstrap(
        (everyone,),
        lambda samples, axis=-1: statistic(samples),
        vectorized=True,
        n_resamples=resamples,
        batch=max(1, min(resamples, 20_000_000 // max(units, 1) // 8)),
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    # A resample holds about 63% of the distinct readers, so a set statistic such as coverage
    # shifts in every resample: the bootstrap gives the interval's width, the estimate its centre.
    half = (result.confidence_interval.high - result.confidence_interval.low) / 2
    return Interval(estimate, estimate - half, estimate + half, units, "bootstrap over readers")


@dataclass(frozen=True)
class RatioDifference:
    """Challenger minus production in a ratio of sums over readers (clicked lists / lists), with
    the delta method's interval. Arrays when the inputs carry leading (simulation) axes."""

    production: np.ndarray | float  # production's ratio
    challenger: np.ndarray | float
    difference: np.ndarray | float
    low: np.ndarray | float
    high: np.ndarray | float
    production_readers: np.ndarray | int
    challenger_readers: np.ndarray | int


def _ratio_and_variance(successes: np.ndarray, trials: np.ndarray) -> tuple:
    """Per arm: the ratio sum(successes) / sum(trials), the variance of that ratio by the delta
    method with readers as the unit (last axis; readers with no trials are absent), and the readers."""
    present = trials > 0
    readers = present.sum(axis=-1)
    mean_trials = trials.sum(axis=-1) / np.maximum(readers, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = successes.sum(axis=-1) / trials.sum(axis=-1)
        linearised = np.where(present, (successes - ratio[..., None] * trials) / mean_trials[..., None], 0.0)
        variance = (linearised**2).sum(axis=-1) / np.maximum(readers - 1, 1) / readers
    return ratio, np.where(readers > 1, variance, np.nan), readers


def ratio_difference(
    challenger_successes: np.ndarray,
    challenger_trials: np.ndarray,
    production_successes: np.ndarray,
    production_trials: np.ndarray,
    confidence: float = 0.95,
) -> RatioDifference:
    """Per-reader counts of each arm (last axis: readers; a reader with 0 trials counts as absent)."""
    arms = [
        _ratio_and_variance(np.asarray(s, dtype=np.float64), np.asarray(t, dtype=np.float64))
        for s, t in ((challenger_successes, challenger_trials), (production_successes, production_trials))
    ]
    (challenger, challenger_var, n_c), (production, production_var, n_p) = arms
    difference = challenger - production
    error = np.sqrt(challenger_var + production_var)
    half = stats.norm.ppf(0.5 + confidence / 2) * error  # the normal interval's half width
    low, high = difference - half, difference + half
    return RatioDifference(production, challenger, difference, low, high, n_p, n_c)


def ratio_interval(
    successes: np.ndarray, trials: np.ndarray, confidence: float = 0.95
) -> tuple[float, float, float]:
    """(ratio, low, high) of sum(successes) / sum(trials) over readers (one value each), by the
    delta method with readers as the unit (NaN bounds with fewer than two readers)."""
    ratio, variance, _ = _ratio_and_variance(
        np.asarray(successes, dtype=np.float64), np.asarray(trials, dtype=np.float64)
    )
    if math.isnan(variance):
        return float(ratio), math.nan, math.nan
    if variance == 0:  # every reader at the same rate
        return float(ratio), float(ratio), float(ratio)
    low, high = stats.norm.interval(confidence, loc=ratio, scale=np.sqrt(variance))
    return float(ratio), float(low), float(high)


def reader_spread(successes: np.ndarray, trials: np.ndarray) -> tuple[float, float, int]:
    """(ratio, standard deviation per reader of the delta method's linearised values, readers): what
    a power calculation needs of one arm."""
    ratio, variance, readers = _ratio_and_variance(
        np.asarray(successes, dtype=np.float64), np.asarray(trials, dtype=np.float64)
    )
    return float(ratio), float(np.sqrt(variance * readers)), int(readers)


def planned_readers(
    baseline: float, reader_sd: float, mde: float, power: float, confidence: float, challenger_share: float
) -> tuple[int, int]:
    """Readers per arm (challenger, production) at which a relative click-through change of `mde`
    from `baseline` is told from none by the two-sided `confidence` interval with probability
    `power` (statsmodels `NormalIndPower`; the standardised effect is mde * baseline / reader_sd)."""
    from statsmodels.stats.power import NormalIndPower

    if not 0 < challenger_share < 1:
        raise ValueError(f"an A/B experiment needs a challenger share in (0, 1), not {challenger_share}")
    if not baseline > 0 or not reader_sd > 0:
        raise ValueError(f"cannot plan from a baseline click-through of {baseline} (spread {reader_sd})")
    ratio = (1 - challenger_share) / challenger_share
    challenger = NormalIndPower().solve_power(
        effect_size=mde * baseline / reader_sd,
        alpha=1 - confidence,
        power=power,
        ratio=ratio,
        alternative="two-sided",
    )
    return math.ceil(challenger), math.ceil(challenger * ratio)
