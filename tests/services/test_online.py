"""The online loop through the real API on loopback: impressions and attribution, A/B and shadow
serving of the registry's `challenger`, business rules at request time, the admin endpoints' token,
and the replay simulator's bounded run."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import httpx
import pytest

from pipeline.config import ExperimentParams
from pipeline.serving.experiment import arm_of
from pipeline.storage import impressions as store
from pipeline.storage.feedback import FeedbackStore
from tests.conftest import build_synthetic_project, run, use_small_params
from tests.rules import Catalog
from tests.services.test_api import Service

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def project(tmp_path_factory, synthetic_bx):
    """Production: the usual small model. Challenger: a deliberately weaker one (one epoch, tiny)."""
    root = build_synthetic_project(tmp_path_factory.mktemp("online") / "project", synthetic_bx)
    use_small_params(root, {"train": {"epochs": 1, "gmf_dim": 2, "mlp_dim": 2, "mlp_layers": [2]}})
    run(["dvc", "repro", "train", "evaluate"], root)
    run(["bookrec", "register", "--no-promote"], root)
    return root


@pytest.fixture(scope="module")
def service(project):
    running = Service(project).start()
    yield running
    running.stop()


def _wait_for(condition, seconds: float = 10.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if (value := condition()) is not None and value is not False:
            return value
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def _impression(project, request_id: str):
    feedback = FeedbackStore.for_root(project)

    def find():
        frame = store.impressions_frame(feedback)
        found = frame[frame["request_id"] == request_id]
        return None if found.empty else found.iloc[0]

    return _wait_for(find)


def test_every_list_is_logged_and_feedback_naming_it_is_attributed(project, service):
    answer = httpx.get(f"{service.url}/recommendations/1000", params={"k": 5}).json()
    row = _impression(project, answer["request_id"])
    assert (row.user_id, row.model_version, row.arm, bool(row.shown)) == ("1000", "1", "production", True)
    books = store.impression_books_frame(FeedbackStore.for_root(project), [answer["request_id"]])
    assert books.sort_values("position")["isbn"].tolist() == [b["isbn"] for b in answer["books"]]

    clicked = answer["books"][2]["isbn"]
    posted = httpx.post(
        f"{service.url}/users/1000/interactions",
        json={"isbn": clicked, "rating": 9, "request_id": answer["request_id"]},
        headers=service.auth,
    )
    assert posted.status_code == 201
    from pipeline.serving.monitoring import online_report
    from pipeline.serving.service import BookRecommender

    model = BookRecommender.from_folder(project / "models" / "ncf")
    report = online_report(FeedbackStore.for_root(project), model, timedelta(hours=24))
    production = report.by_version.set_index(["model_version", "arm"]).loc[("1", "production")]
    assert production["ctr"] > 0 and production["mrr"] > 0
    metrics = httpx.get(f"{service.url}/metrics").text
    assert 'bookrec_impressions_total{arm="production",shown="true"}' in metrics
    assert 'bookrec_online{arm="production",metric="ctr",version="1"}' in metrics


def test_admin_endpoints_need_the_token(service):
    body = {"mode": "ab", "challenger_share": 0.5, "salt": "t"}
    assert httpx.put(f"{service.url}/admin/experiment", json=body).status_code == 401
    bad = {"Authorization": "Bearer wrong"}
    assert httpx.put(f"{service.url}/admin/experiment", json=body, headers=bad).status_code == 403
    path = f"{service.url}/admin/books/1000000011/unavailable"
    assert httpx.put(path, json={"reason": "x"}).status_code == 401
    assert httpx.delete(path, headers=bad).status_code == 403
    assert httpx.get(f"{service.url}/experiment").json()["mode"] == "off"  # nothing changed


def test_ab_arms_follow_the_stable_hash_and_serve_the_challenger(project, service):
    experiment = {"mode": "ab", "challenger_share": 0.5, "salt": "t1"}
    assert (
        httpx.put(f"{service.url}/admin/experiment", json=experiment, headers=service.auth).status_code == 200
    )
    _wait_for(lambda: httpx.get(f"{service.url}/experiment").json()["challenger_version"] == "2")
    checker, cap = Catalog(project), 5
    readers = [str(u) for u in range(1000, 1040)]
    try:
        for reader in readers:
            answer = httpx.get(f"{service.url}/recommendations/{reader}").json()
            expected = arm_of(reader, ExperimentParams(**experiment, mde=0.1, power=0.95))
            assert answer["arm"] == expected
            assert answer["model_version"] == ("2" if expected == "challenger" else "1")
            assert len(answer["books"]) == 10
            assert not checker.violations(reader, [b["isbn"] for b in answer["books"]], cap)
        assert {arm_of(r, ExperimentParams(**experiment, mde=0.1, power=0.95)) for r in readers} == {
            "production",
            "challenger",
        }
    finally:
        httpx.delete(f"{service.url}/admin/experiment", headers=service.auth)


def test_shadow_lists_are_logged_and_never_shown(project, service):
    before = httpx.get(f"{service.url}/recommendations/1005").json()
    shadow = {"mode": "shadow", "challenger_share": 0.5, "salt": "t1"}
    httpx.put(f"{service.url}/admin/experiment", json=shadow, headers=service.auth)
    try:
        _wait_for(lambda: httpx.get(f"{service.url}/experiment").json()["challenger_version"] == "2")
        during = httpx.get(f"{service.url}/recommendations/1005").json()
        assert during["model_version"] == "1" and during["arm"] == "production"
        assert [b["isbn"] for b in during["books"]] == [b["isbn"] for b in before["books"]]
        feedback = FeedbackStore.for_root(project)

        def shadow_row():
            frame = store.impressions_frame(feedback)
            found = frame[(frame["user_id"] == "1005") & ~frame["shown"].astype(bool)]
            return None if found.empty else found.iloc[-1]

        row = _wait_for(shadow_row)
        assert (row.model_version, row.arm) == ("2", "challenger")
    finally:
        httpx.delete(f"{service.url}/admin/experiment", headers=service.auth)


def test_unavailable_and_excluded_books_are_never_served_and_lists_stay_full(project, service):
    first = httpx.get(f"{service.url}/recommendations/1010").json()["books"]
    top, second = first[0]["isbn"], first[1]["isbn"]
    path = f"{service.url}/admin/books/{top}/unavailable"
    assert httpx.put(path, json={"reason": "out of print"}, headers=service.auth).status_code == 204
    try:
        for _ in range(3):  # every request after the mark, on this service, at once
            books = httpx.get(f"{service.url}/recommendations/1010").json()["books"]
            assert top not in {b["isbn"] for b in books} and len(books) == 10
        similar = httpx.get(f"{service.url}/books/{second}/similar", params={"k": 20}).json()["books"]
        assert top not in {b["isbn"] for b in similar} and len(similar) == 20
        excluded = httpx.get(f"{service.url}/recommendations/1010", params={"exclude": second}).json()[
            "books"
        ]
        assert {top, second}.isdisjoint(b["isbn"] for b in excluded) and len(excluded) == 10
        checker, cap = Catalog(project), 5
        assert not checker.violations("1010", [b["isbn"] for b in excluded], cap)
    finally:
        assert httpx.delete(path, headers=service.auth).status_code == 204
    assert httpx.get(f"{service.url}/recommendations/1010").json()["books"][0]["isbn"] == top


def test_the_simulator_replays_test_readers_and_the_store_attributes_the_same_clicks(project):
    from datetime import UTC, datetime

    live = FeedbackStore.for_root(project)
    interactions_before, started = live.count(), datetime.now(UTC)
    done = run(["bookrec", "simulate", "--requests", "200", "--seconds", "120", "--mode", "ab"], project)
    result = json.loads(done.stdout)
    assert result["requests"] == 200
    arms = result["arms"]
    assert arms["production"]["versions"] == ["1"] and arms["challenger"]["versions"] == ["2"]
    assert sum(a["lists"] for a in arms.values()) == 200 and sum(a["clicks"] for a in arms.values()) > 0
    attributed = {row["arm"]: row for row in result["attributed"]}
    for arm, tally in arms.items():  # every click the simulator made is attributed to its list
        assert attributed[arm]["shown"] == tally["lists"]
        assert attributed[arm]["ctr"] == pytest.approx(tally["ctr"])
        assert attributed[arm]["readers"] == tally["readers"]
        assert attributed[arm]["ctr_low"] == pytest.approx(tally["ctr_low"])  # one interval function
    # the replay was an experiment with a record and a planned size, judged readers as the unit
    comparison, plan = result["comparison"], result["experiment"]
    assert (plan["production_version"], plan["challenger_version"]) == ("1", "2")
    assert comparison["production_lists"] == arms["production"]["lists"]
    assert comparison["challenger_rate"] == pytest.approx(arms["challenger"]["ctr"])
    assert not comparison["reached"] and "planned size not reached" in result["decision"]
    # the replay stays out of the live store (lists the module's own service served earlier may
    # still be on their way to it: only what was created since the replay started counts)
    assert live.count() == interactions_before
    assert (store.impressions_frame(live)["created_at"] >= started).sum() == 0


def test_each_registered_version_records_how_its_data_moved_from_production(project):
    from pipeline.ops import registry, tracking

    client = tracking.client(project)
    first = client.get_model_version(registry.MODEL_NAME, "1")
    second = client.get_model_version(registry.MODEL_NAME, "2")
    assert first.tags["data_drift_against"] == "" and json.loads(first.tags["data_drift"]) == {}
    profile = json.loads(second.tags["data_profile"])
    assert profile["readers"] > 0 and sum(profile["rating_distribution"].values()) == pytest.approx(
        1, abs=1e-4
    )
    moved = json.loads(second.tags["data_drift"])
    assert second.tags["data_drift_against"] == "1"  # production when v2 was registered
    assert moved["new_readers"] == moved["new_books"] == 0 and moved["rating_distribution_distance"] == 0


def test_an_experiment_is_a_record_and_promote_refuses_before_its_planned_size(project, service):
    feedback = FeedbackStore.for_root(project)
    started = json.loads(run(["bookrec", "experiment", "set", "ab", "--baseline-ctr", "0.2"], project).stdout)
    try:
        assert (started["production_version"], started["challenger_version"]) == ("1", "2")
        assert started["salt"] == started["id"] and started["planned_challenger"] > 100
        assert store.read_setting(feedback, store.EXPERIMENT_KEY)["mode"] == "ab"
        _wait_for(lambda: httpx.get(f"{service.url}/experiment").json()["salt"] == started["id"])
        for reader in range(1000, 1020):
            httpx.get(f"{service.url}/recommendations/{reader}")
            httpx.get(f"{service.url}/books/1000000011/similar")  # never an arm's evidence
        report = run(["bookrec", "experiment", "report"], project).stdout
        assert f"experiment {started['id']}" in report and "planned size not reached" in report
        refused = run(["bookrec", "experiment", "promote"], project, check=False)
        assert refused.returncode == 1 and "no decision before the planned size" in refused.stderr
    finally:
        ended = json.loads(run(["bookrec", "experiment", "clear"], project).stdout)
    assert ended["ended"] == started["id"]
    assert started["id"] in run(["bookrec", "experiment", "list"], project).stdout
