"""The promotion gate's rules (pure: no MLflow here; `release` ranks the versions, `registry` reads
and records them).

Every figure the gate compares is measured in the gate's own run: the challenger, production and
the best version ever promoted on this split are ranked on the same readers under the same rules
(protocol, split, list rules, reader sample), never taken from a stored figure. A challenger passes
only if every rule holds; a missing input fails its rule, it is never skipped:
1. its coverage@10, personalization@10 and normalised novelty@10 are at or above their floors;
2. with `beat_popularity`, its NDCG@10 is strictly above the popularity baseline's, ranked here too;
3. against production: both were split by the same rule (the same split fingerprint, so no test
   interaction of this split was in production's training data), and it is non-inferior: the lower
   end of the `confidence` interval of the per-reader NDCG@10 difference (paired over readers) is at
   or above -`margin`; its breadth holds too: coverage@10 (a bootstrap over readers) and novelty@10
   (paired over readers) are at or above production's minus `coverage_margin` / `novelty_margin`;
4. against the best version ever promoted on this split, non-inferior in NDCG@10 by the same margin,
   so that small losses, each within the margin, cannot add up (no ratchet);
5. out of an online experiment (`bookrec experiment promote`): the experiment reached its planned
   size in both arms, and the lower end of the interval of the click-through difference is at or
   above -`online_margin` times production's click-through.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from pipeline.evaluation import metrics
from pipeline.online import ExperimentResult
from pipeline.statistics import Interval, paired_bootstrap, paired_difference

K = 10


@dataclass(frozen=True)
class GateThresholds:
    confidence: float  # of every interval the gate computes
    margin: float  # NDCG@10: challenger - reference >= -margin at the interval's lower end
    coverage_margin: float  # coverage@10: challenger - production >= -this, likewise
    novelty_margin: float  # normalised novelty@10: challenger - production >= -this, likewise
    online_margin: float  # click-through: challenger - production >= -this * production's
    min_coverage: float
    min_personalization: float
    min_novelty: float  # normalised novelty, in [0, 1]
    beat_popularity: bool
    resamples: int  # bootstrap resamples (coverage)
    seed: int  # of the bootstrap

    def floor(self, key: str) -> float:
        return {
            "coverage@10": self.min_coverage,
            "personalization@10": self.min_personalization,
            "novelty_normalised@10": self.min_novelty,
        }[key]


@dataclass(frozen=True, eq=False)
class Ranked:
    """One version's top-10 lists for the gate's readers, ranked in the gate's run, and the
    per-reader figures the gate pairs."""

    version: str
    rules: str  # what the lists were ranked under (split, protocol, list rules, reader sample)
    readers: np.ndarray  # reader indices, in the order of the rows below
    ndcg: np.ndarray  # per reader NDCG@10
    novelty: np.ndarray  # per reader normalised novelty@10
    lists: np.ndarray  # (readers, 10) item indices
    n_items: int

    def summary(self) -> dict[str, float]:
        return {
            "ndcg@10": float(self.ndcg.mean()) if len(self.ndcg) else math.nan,
            "coverage@10": metrics.catalog_coverage(self.lists, self.n_items),
            "personalization@10": metrics.personalization(self.lists),
            "novelty_normalised@10": float(np.nanmean(self.novelty)) if len(self.novelty) else math.nan,
        }


class RulesDiffer(ValueError):
    """Two figures measured under different rules or on different readers: no fair comparison."""


@dataclass(frozen=True)
class Comparison:
    """`challenger` minus `reference` on the same readers, each with its interval."""

    challenger: str
    reference: str
    rules: str
    ndcg: Interval
    coverage: Interval
    novelty: Interval

    def as_dict(self) -> dict:
        return asdict(self)


def compare(challenger: Ranked, reference: Ranked, thresholds: GateThresholds) -> Comparison:
    """The paired comparison behind every offline decision and `bookrec gate compare`."""
    if challenger.rules != reference.rules:
        raise RulesDiffer(
            f"v{challenger.version} was ranked under {challenger.rules!r}, v{reference.version} under "
            f"{reference.rules!r}: figures from different rule sets are never compared"
        )
    if not np.array_equal(challenger.readers, reference.readers):
        raise RulesDiffer(f"v{challenger.version} and v{reference.version} were ranked for different readers")
    n_items = challenger.n_items

    def coverage_difference(samples: np.ndarray) -> np.ndarray:
        return metrics.coverage_of_samples(challenger.lists, samples, n_items) - metrics.coverage_of_samples(
            reference.lists, samples, n_items
        )

    return Comparison(
        challenger.version,
        reference.version,
        challenger.rules,
        paired_difference(challenger.ndcg, reference.ndcg, thresholds.confidence),
        paired_bootstrap(
            coverage_difference,
            len(challenger.readers),
            thresholds.confidence,
            thresholds.resamples,
            thresholds.seed,
        ),
        paired_difference(challenger.novelty, reference.novelty, thresholds.confidence),
    )


@dataclass(frozen=True)
class Reference:
    """A version the challenger is compared with: its split rule, and its lists ranked in this run
    (None when its split rule differs: it was not ranked)."""

    version: str
    split_fingerprint: str | None
    ranked: Ranked | None


@dataclass(frozen=True)
class GateInputs:
    candidate: Ranked
    split_fingerprint: str | None
    popularity: Ranked | None  # the popularity baseline, ranked in this run
    production: Reference | None = None
    best_promoted: Reference | None = None  # the best version ever promoted on this split, if not production
    online: ExperimentResult | None = None  # only for a promotion out of an experiment


@dataclass
class GateDecision:
    version: str
    passed: bool
    reasons: list[str] = field(default_factory=list)
    compared_with: str | None = None
    comparisons: list[Comparison] = field(default_factory=list)
    references: dict[str, str | None] = field(default_factory=dict)
    readers: int = 0
    rules: str = ""
    online: dict | None = None

    def summary(self) -> str:
        verdict = "PASSED" if self.passed else "REFUSED"
        return f"gate {verdict} for version {self.version}: " + "; ".join(self.reasons)

    def check(self, ok: bool, text: str) -> None:
        self.reasons.append(("ok: " if ok else "FAIL: ") + text)
        self.passed &= bool(ok)


def decide(inputs: GateInputs, thresholds: GateThresholds) -> GateDecision:
    candidate = inputs.candidate
    decision = GateDecision(
        version=candidate.version, passed=True, readers=len(candidate.readers), rules=candidate.rules
    )
    figures = candidate.summary()
    for key in ("coverage@10", "personalization@10", "novelty_normalised@10"):
        value = figures[key]
        decision.check(
            value == value and value >= thresholds.floor(key),
            f"{key} {value:.4f} >= floor {thresholds.floor(key)}",
        )
    if thresholds.beat_popularity:
        _beats_popularity(decision, candidate, inputs.popularity)
    production = inputs.production
    decision.references = {
        "production": None if production is None else production.version,
        "best_promoted": None if inputs.best_promoted is None else inputs.best_promoted.version,
    }
    if production is None:
        decision.reasons.append("no production model yet")
    elif production.version == candidate.version:
        decision.reasons.append("the candidate is already production")
    else:
        decision.compared_with = production.version
        comparison = _against(decision, inputs, production, thresholds, "production")
        if comparison is not None:
            _breadth(decision, comparison, thresholds)
    best = inputs.best_promoted
    if best is not None and best.version not in (candidate.version, getattr(production, "version", None)):
        _against(decision, inputs, best, thresholds, "the best version ever promoted on this split")
    if inputs.online is not None:
        _online(decision, inputs.online, thresholds)
    return decision


def _beats_popularity(decision: GateDecision, candidate: Ranked, popularity: Ranked | None) -> None:
    ndcg = float(candidate.ndcg.mean()) if len(candidate.ndcg) else math.nan
    if popularity is None or popularity.rules != candidate.rules:
        decision.check(
            False, "ndcg@10 > popularity baseline: no popularity figure ranked under the same rules"
        )
        return
    baseline = float(popularity.ndcg.mean())
    decision.check(ndcg > baseline, f"ndcg@10 {ndcg:.4f} > popularity baseline {baseline:.4f}")


def _against(
    decision: GateDecision, inputs: GateInputs, reference: Reference, thresholds: GateThresholds, role: str
) -> Comparison | None:
    fingerprint = inputs.split_fingerprint
    same_rule = fingerprint is not None and fingerprint == reference.split_fingerprint
    decision.check(
        same_rule,
        f"split fingerprint {fingerprint} == {role} v{reference.version}'s {reference.split_fingerprint} "
        "(otherwise it may have trained on this test split: no fair comparison)",
    )
    if not same_rule:
        return None
    if reference.ranked is None:
        decision.check(
            False, f"{role} v{reference.version} was not ranked in this run: nothing to compare with"
        )
        return None
    try:
        comparison = compare(inputs.candidate, reference.ranked, thresholds)
    except RulesDiffer as err:
        decision.check(False, str(err))
        return None
    decision.comparisons.append(comparison)
    ndcg = comparison.ndcg
    decision.check(
        ndcg.at_least(-thresholds.margin),
        f"ndcg@10 minus {role} v{reference.version}: {ndcg.text()}, "
        f"{thresholds.confidence:.0%} lower end >= -margin {thresholds.margin}",
    )
    return comparison


def _breadth(decision: GateDecision, comparison: Comparison, thresholds: GateThresholds) -> None:
    for name, interval, margin in (
        ("coverage@10", comparison.coverage, thresholds.coverage_margin),
        ("novelty_normalised@10", comparison.novelty, thresholds.novelty_margin),
    ):
        decision.check(
            interval.at_least(-margin),
            f"{name} minus production v{comparison.reference}: {interval.text()}, "
            f"{thresholds.confidence:.0%} lower end >= -margin {margin}",
        )


def _online(decision: GateDecision, online: ExperimentResult, thresholds: GateThresholds) -> None:
    decision.online = online.as_dict()
    decision.check(
        online.reached,
        f"experiment {online.experiment} reached its planned size: readers challenger "
        f"{online.challenger_readers}/{online.planned_challenger}, production "
        f"{online.production_readers}/{online.planned_production}",
    )
    bar = -thresholds.online_margin * online.production_rate
    decision.check(
        online.non_inferior(thresholds.online_margin),  # NaN (no traffic) fails
        f"online click-through difference {online.difference:+.4f} [{online.low:+.4f}, {online.high:+.4f}] "
        f"(readers as the unit), lower end >= -{thresholds.online_margin} x production's "
        f"{online.production_rate:.4f} = {bar:+.4f}",
    )


def best_of(ranked: list[Ranked]) -> Ranked | None:
    """The version with the highest mean NDCG@10 in this run."""
    return max(ranked, key=lambda r: float(r.ndcg.mean()), default=None)
