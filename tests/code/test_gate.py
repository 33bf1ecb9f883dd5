"""The promotion gate's rules as a pure function: each rule, each missing input, ties, tolerance."""

from __future__ import annotations

import pytest

from pipeline.ops.gate import GateInputs, GateThresholds, OnlineEvidence, Production, decide

THRESHOLDS = GateThresholds(
    ndcg_tolerance=0.002, min_coverage=0.1, min_personalization=0.9, min_novelty=0.3, beat_popularity=True
)
GOOD = {"ndcg@10": 0.07, "coverage@10": 0.5, "personalization@10": 0.99, "novelty_normalised@10": 0.6}
RULE = "pair-hash-blake2b-v1:seed=42:test=0.2:validation=0.1"


def inputs(metrics=None, popularity=0.02, production=None, fingerprint=RULE) -> GateInputs:
    return GateInputs("2", GOOD if metrics is None else metrics, fingerprint, popularity, production)


def production(ndcg=0.07, fingerprint=RULE) -> Production:
    return Production("1", fingerprint, ndcg)


def test_a_good_first_model_passes_every_rule():
    decision = decide(inputs(), THRESHOLDS)
    assert decision.passed and "no production model yet" in decision.reasons
    assert all(r.startswith("ok: ") for r in decision.reasons if r != "no production model yet")


@pytest.mark.parametrize(
    ("key", "value"), [("coverage@10", 0.09), ("personalization@10", 0.8), ("novelty_normalised@10", 0.2)]
)
def test_each_floor_fails_below_and_passes_at_the_floor(key, value):
    assert not decide(inputs({**GOOD, key: value}), THRESHOLDS).passed
    at_floor = {"coverage@10": 0.1, "personalization@10": 0.9, "novelty_normalised@10": 0.3}[key]
    assert decide(inputs({**GOOD, key: at_floor}), THRESHOLDS).passed


@pytest.mark.parametrize("key", sorted(GOOD))
def test_a_missing_metric_fails_its_rule(key):
    metrics = {k: v for k, v in GOOD.items() if k != key}
    decision = decide(inputs(metrics), THRESHOLDS)
    assert not decision.passed
    assert any(r.startswith("FAIL") and key in r for r in decision.reasons)


def test_a_missing_popularity_figure_fails_the_gate_it_is_never_skipped():
    decision = decide(inputs(popularity=None), THRESHOLDS)
    assert not decision.passed and any("popularity" in r and r.startswith("FAIL") for r in decision.reasons)
    off = GateThresholds(**{**THRESHOLDS.__dict__, "beat_popularity": False})
    assert decide(inputs(popularity=None), off).passed


def test_popularity_must_be_beaten_strictly():
    assert not decide(inputs(popularity=0.07), THRESHOLDS).passed  # a tie does not beat it
    assert decide(inputs(popularity=0.0699), THRESHOLDS).passed


def test_against_production_the_tolerance_and_a_tie():
    assert decide(inputs(production=production(0.07)), THRESHOLDS).passed  # tie
    assert decide(inputs(production=production(0.072)), THRESHOLDS).passed  # exactly at the bar
    refused = decide(inputs(production=production(0.0721)), THRESHOLDS)
    assert not refused.passed and refused.compared_with == "1"
    assert any(r.startswith("FAIL: ndcg@10") for r in refused.reasons)


def test_production_without_a_figure_on_this_split_fails():
    assert not decide(inputs(production=production(None)), THRESHOLDS).passed


@pytest.mark.parametrize("theirs", ["pair-hash-blake2b-v1:seed=7:test=0.2:validation=0.1", None])
def test_another_split_rule_means_overlap_and_the_gate_refuses_to_compare(theirs):
    decision = decide(inputs(production=production(0.01, fingerprint=theirs)), THRESHOLDS)
    assert not decision.passed
    assert any(r.startswith("FAIL: split fingerprint") for r in decision.reasons)
    assert not decide(inputs(fingerprint=None, production=production(0.01)), THRESHOLDS).passed


def test_the_candidate_already_in_production_is_not_compared_with_itself():
    decision = decide(inputs(production=Production("2", RULE, 0.5)), THRESHOLDS)
    assert decision.passed and "the candidate is already production" in decision.reasons


@pytest.mark.parametrize(
    ("evidence", "passes"),
    [
        (OnlineEvidence(0.01, -0.004, 0.024, 500, 500), True),  # not significantly different
        (OnlineEvidence(0.0, -0.01, 0.0, 500, 500), True),  # the interval just reaches zero
        (OnlineEvidence(-0.03, -0.05, -0.01, 500, 500), False),  # significantly worse online
        (OnlineEvidence(0.05, 0.01, 0.09, 10, 500), False),  # too little traffic in one arm
        (OnlineEvidence(float("nan"), float("nan"), float("nan"), 0, 0), False),  # no experiment ran
    ],
)
def test_the_online_rule_of_a_promotion_out_of_an_experiment(evidence, passes):
    candidate = GateInputs("2", GOOD, RULE, 0.02, production(), online=evidence)
    decision = decide(candidate, THRESHOLDS)
    assert decision.passed is passes
    assert any("online click-through" in r for r in decision.reasons)
    assert decide(
        GateInputs("2", GOOD, RULE, 0.02, production()), THRESHOLDS
    ).passed  # no experiment: no rule
