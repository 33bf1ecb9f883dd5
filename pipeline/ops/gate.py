"""The promotion gate's rules (pure: no MLflow here; `registry` gathers the inputs from the versions).

A challenger passes only if every rule holds; a missing input fails its rule, it is never skipped:
1. it has NDCG@10, coverage@10, personalization@10 and normalised novelty@10, each at or above its
   floor (NDCG has none);
2. with `beat_popularity`, its NDCG@10 is strictly above the popularity baseline's on its own split;
3. against a production version: both were split by the same rule (the same split fingerprint), so
   no test interaction of the challenger's split was in production's training data, and the
   challenger's NDCG@10 is at least production's NDCG@10 on the challenger's test split minus
   `ndcg_tolerance` (a tie passes);
4. when it comes out of an online experiment (`bookrec experiment promote`): it is not significantly
   worse than production on live traffic (the 95% interval of its click-through minus production's
   reaches zero or above) and each arm served at least `MIN_ONLINE_LISTS` lists.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FLOORS = ("coverage@10", "personalization@10", "novelty_normalised@10")
MIN_ONLINE_LISTS = 30


@dataclass(frozen=True)
class GateThresholds:
    ndcg_tolerance: float  # candidate NDCG@10 >= production NDCG@10 - tolerance
    min_coverage: float
    min_personalization: float
    min_novelty: float  # normalised novelty, in [0, 1]
    beat_popularity: bool  # candidate NDCG@10 must exceed the popularity baseline's on the same split

    def floor(self, key: str) -> float:
        return {
            "coverage@10": self.min_coverage,
            "personalization@10": self.min_personalization,
            "novelty_normalised@10": self.min_novelty,
        }[key]


@dataclass(frozen=True)
class Production:
    """What the gate needs of the version serving now."""

    version: str
    split_fingerprint: str | None
    ndcg_on_candidate_split: float | None  # measured on the challenger's test split


@dataclass(frozen=True)
class OnlineEvidence:
    """An A/B experiment's result: challenger minus production click-through, its 95% interval, and
    the lists each arm served."""

    difference: float
    low: float
    high: float
    challenger_lists: int
    production_lists: int


@dataclass(frozen=True)
class GateInputs:
    version: str
    metrics: dict[str, float | None]  # the challenger's test metrics (ndcg@10 and the FLOORS)
    split_fingerprint: str | None
    popularity_ndcg: float | None
    production: Production | None = None
    online: OnlineEvidence | None = None  # only for a promotion out of an experiment


@dataclass
class GateDecision:
    version: str
    passed: bool
    reasons: list[str] = field(default_factory=list)
    compared_with: str | None = None

    def summary(self) -> str:
        verdict = "PASSED" if self.passed else "REFUSED"
        return f"gate {verdict} for version {self.version}: " + "; ".join(self.reasons)

    def check(self, ok: bool, text: str) -> None:
        self.reasons.append(("ok: " if ok else "FAIL: ") + text)
        self.passed &= ok


def decide(inputs: GateInputs, thresholds: GateThresholds) -> GateDecision:
    decision = GateDecision(version=inputs.version, passed=True)
    ndcg = inputs.metrics.get("ndcg@10")
    decision.check(ndcg is not None, f"ndcg@10 is {ndcg}")
    for key in FLOORS:
        value = inputs.metrics.get(key)
        decision.check(
            value is not None and value >= thresholds.floor(key),
            f"{key} {value} >= floor {thresholds.floor(key)}",
        )
    if thresholds.beat_popularity:
        popularity = inputs.popularity_ndcg
        decision.check(
            ndcg is not None and popularity is not None and ndcg > popularity,
            f"ndcg@10 {ndcg} > popularity baseline {popularity}",
        )
    production = inputs.production
    if production is None:
        decision.reasons.append("no production model yet")
    elif production.version == inputs.version:
        decision.reasons.append("the candidate is already production")
    else:
        decision.compared_with = production.version
        _against_production(decision, ndcg, inputs.split_fingerprint, production, thresholds.ndcg_tolerance)
    if inputs.online is not None:
        _online(decision, inputs.online)
    return decision


def _online(decision: GateDecision, online: OnlineEvidence) -> None:
    lists = min(online.challenger_lists, online.production_lists)
    decision.check(
        lists >= MIN_ONLINE_LISTS,
        f"each arm served at least {MIN_ONLINE_LISTS} lists (challenger {online.challenger_lists}, "
        f"production {online.production_lists})",
    )
    decision.check(
        online.high == online.high and online.high >= 0,  # NaN (no traffic) fails
        f"online click-through difference {online.difference:+.4f} [{online.low:+.4f}, {online.high:+.4f}] "
        "is not significantly below zero",
    )


def _against_production(
    decision: GateDecision,
    ndcg: float | None,
    fingerprint: str | None,
    production: Production,
    tolerance: float,
) -> None:
    same_rule = fingerprint is not None and fingerprint == production.split_fingerprint
    decision.check(
        same_rule,
        f"split fingerprint {fingerprint} == production v{production.version}'s {production.split_fingerprint} "
        "(otherwise production may have trained on this test split: no fair comparison)",
    )
    reference = production.ndcg_on_candidate_split
    if not same_rule:
        return
    if reference is None or ndcg is None:
        decision.check(
            False, f"production v{production.version} has no ndcg@10 on this split to compare with"
        )
        return
    bar = reference - tolerance
    decision.check(
        ndcg >= bar,
        f"ndcg@10 {ndcg:.4f} >= production v{production.version} {reference:.4f} - tolerance {tolerance} = {bar:.4f}",
    )
