"""The REST API served for real on loopback against a project with a registered model: endpoints,
live feedback round trip across a restart, bad input, the alias swap under load, and schemathesis."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from pipeline.storage.secrets import api_token
from tests.conftest import BIN, REPO_ROOT, build_synthetic_project, free_port, register_broken_copy, run

pytestmark = pytest.mark.slow


class Service:
    def __init__(self, root: Path):
        self.root, self.port, self.process = root, free_port(), None
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> Service:
        env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
        env.pop("MLFLOW_TRACKING_URI", None)
        self.process = subprocess.Popen(
            [str(BIN / "bookrec"), "serve", "--port", str(self.port), "--poll-seconds", "1"],
            cwd=self.root,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise AssertionError("bookrec serve did not become healthy within 90 s")

    @property
    def auth(self) -> dict[str, str]:
        """The write token `bookrec serve` made in the project (run/api_token)."""
        return {"Authorization": f"Bearer {(self.root / 'run' / 'api_token').read_text().strip()}"}

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture(scope="module")
def project(tmp_path_factory, synthetic_bx):
    return build_synthetic_project(tmp_path_factory.mktemp("api") / "project", synthetic_bx)


def load_project_params(root: Path):
    from pipeline.config import load_params

    return load_params(root)


@pytest.fixture(scope="module")
def service(project):
    running = Service(project).start()
    yield running
    running.stop()


def test_health_docs_and_metrics(service):
    assert httpx.get(f"{service.url}/health").json() == {
        "status": "ok",
        "model_version": "1",
        "production_version": "1",
        "error": None,
        "stale_rules": [],
    }
    schema = httpx.get(f"{service.url}/openapi.json").json()
    assert {
        "/recommendations/{user_id}",
        "/books/{isbn}/similar",
        "/users/{user_id}/interactions",
        "/recommendations",
        "/health",
        "/metrics",
    } <= set(schema["paths"])
    httpx.get(f"{service.url}/recommendations/1000")
    metrics = httpx.get(f"{service.url}/metrics").text
    assert 'bookrec_requests_total{endpoint="/recommendations/{user_id}",status="200"}' in metrics
    assert "bookrec_request_seconds_bucket" in metrics


def test_recommendations_known_and_unknown_readers(service):
    known = httpx.get(f"{service.url}/recommendations/1000", params={"k": 5}).json()
    assert known["known_reader"] is True and [b["rank"] for b in known["books"]] == [1, 2, 3, 4, 5]
    assert all(b["title"] for b in known["books"])
    stranger = httpx.get(f"{service.url}/recommendations/new-reader-42").json()
    assert stranger["known_reader"] is False and len(stranger["books"]) == 10
    new = httpx.post(
        f"{service.url}/recommendations",
        json={"age": 22, "location": "berlin, berlin, germany", "liked_isbns": ["1000000011"], "k": 4},
    ).json()
    assert len(new["books"]) == 4 and "1000000011" not in {b["isbn"] for b in new["books"]}


def test_requests_scored_together_get_the_answers_they_get_alone(project):
    """The micro-batcher: concurrent requests (known, unknown and new readers, different k, one bad)
    are scored in one batch, and each gets exactly its own answer."""
    import asyncio

    import numpy as np

    from pipeline.serving.batching import RankBatcher
    from pipeline.serving.service import BookRecommender, Reader

    model = BookRecommender.from_folder(project / "models" / "ncf")
    young = Reader(age=22, location="berlin, berlin, germany", liked_isbns=("1000000011",))
    old = Reader(age=70, location="austin, texas, usa")
    asks = [("1000", 5, None, ("1000000022",)), ("1001", 12, None, ()), ("stranger", 3, None, ())]
    asks += [("<new reader>", 7, young, ()), ("<new reader>", 7, old, ()), ("1002", 0, None, ())]
    sizes: list[int] = []

    async def together():
        batcher = RankBatcher(observe_batch_size=sizes.append)
        calls = [batcher.rank(model, u, k, reader=r, extra_reads=x) for u, k, r, x in asks]
        answers = await asyncio.gather(*calls, return_exceptions=True)
        batcher.stop()
        return answers

    answers = asyncio.run(together())
    assert sizes == [len(asks) - 1]  # the bad k is refused before it joins a batch
    for (user, k, reader, extra), answer in zip(asks[:-1], answers[:-1], strict=True):
        alone = model.rank([user], k, readers={user: reader} if reader else None, extra_reads={user: extra})
        np.testing.assert_array_equal(answer[0], alone[0][0])
        np.testing.assert_allclose(answer[1], alone[1][0], rtol=1e-5)
    assert isinstance(answers[-1], ValueError) and "k must be between" in str(answers[-1])
    assert answers[3][0].tolist() != answers[4][0].tolist()  # two new readers, two descriptions


def test_a_request_that_breaks_its_batch_fails_alone(project):
    import asyncio

    from pipeline.serving.batching import RankBatcher
    from pipeline.serving.service import BookRecommender

    class BrokenFor(BookRecommender):
        """The real recommender, except that one reader's id makes `rank` raise."""

        def rank(self, user_ids, *args, **kwargs):
            if "poison" in user_ids:
                raise RuntimeError("cannot rank poison")
            return super().rank(user_ids, *args, **kwargs)

    model = BrokenFor.from_folder(project / "models" / "ncf")
    sizes: list[int] = []

    async def together():
        batcher = RankBatcher(observe_batch_size=sizes.append)
        calls = [batcher.rank(model, user, 5) for user in ("1000", "poison", "1001")]
        answers = await asyncio.gather(*calls, return_exceptions=True)
        batcher.stop()
        return answers

    good, bad, other = asyncio.run(together())
    assert sizes == [3] and isinstance(bad, RuntimeError)
    assert good[0].tolist() == model.rank(["1000"], 5)[0][0].tolist()
    assert other[0].tolist() == model.rank(["1001"], 5)[0][0].tolist()


def test_served_lists_never_hold_known_books_their_editions_or_a_work_twice(project, service, synthetic_bx):
    """Every reader's list from the API, with the model's author cap and with a cap of 1: no book of
    any split, no dislike, no other edition of either, one edition per work, the cap honoured."""
    from tests.rules import Catalog

    catalog = Catalog(project)
    assert catalog.disliked and synthetic_bx.editions  # the fixture has both, or this proves nothing
    params = load_project_params(project)
    problems = []
    with httpx.Client(base_url=service.url) as client:
        for user_id in sorted(synthetic_bx.group_of_user):
            for cap, query in ((params.serve.max_per_author, {}), (1, {"max_per_author": 1})):
                books = client.get(f"/recommendations/{user_id}", params={"k": 20, **query}).json()["books"]
                assert len(books) == 20
                problems += catalog.violations(user_id, [b["isbn"] for b in books], cap)
        for first, _ in synthetic_bx.editions:
            books = client.get(f"/books/{first}/similar", params={"k": 20}).json()["books"]
            problems += catalog.similar_violations(
                first, [b["isbn"] for b in books], params.serve.max_per_author
            )
    assert problems == []


def test_api_pyfunc_and_evaluator_give_the_same_lists(project, service):
    """One ranking path: the API's lists equal the registry pyfunc's (exclusions and caps included),
    and the pyfunc with exclude="train" equals the evaluator's lists on the test protocol."""
    import mlflow
    import numpy as np
    import pandas as pd

    from pipeline import stages
    from pipeline.config import Workspace
    from pipeline.ops import registry, tracking

    pyfunc = registry.load_recommender(project, "1")
    tracking.use_store(project)
    model = mlflow.pyfunc.load_model(f"models:/{registry.MODEL_NAME}/1")
    users = pyfunc.users["user_id"].astype(str).tolist()[::8]
    for cap in ("default", "1", "0"):
        query = {} if cap == "default" else {"max_per_author": cap}
        served = model.predict(pd.DataFrame({"user_id": users, "k": 10}), params={"max_per_author": cap})
        for user_id in users:
            api = httpx.get(f"{service.url}/recommendations/{user_id}", params={"k": 10, **query}).json()
            assert [b["isbn"] for b in api["books"]] == served.loc[
                served["user_id"] == user_id, "isbn"
            ].tolist()
    ws, params = Workspace.load(project)
    data = stages.evaluation_data(ws, params, "test")
    engine = pyfunc.bundle.recommender(data.train)
    rows = np.arange(0, len(pyfunc.users), 8)
    expected = pyfunc.isbns[data.lists(engine, rows, 10)]
    replayed = model.predict(pd.DataFrame({"user_id": users, "k": 10}), params={"exclude": "train"})
    assert replayed["isbn"].tolist() == [isbn for row in expected for isbn in row]


def test_similar_books_and_unknown_isbn(service):
    similar = httpx.get(f"{service.url}/books/1000000011/similar", params={"k": 3})
    assert similar.status_code == 200 and len(similar.json()["books"]) == 3
    missing = httpx.get(f"{service.url}/books/0000000000/similar")
    assert missing.status_code == 404 and "unknown ISBN" in missing.json()["detail"]


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("GET", "/recommendations/1000?k=0", None, 422),
        ("GET", "/recommendations/1000?k=100000", None, 422),
        ("GET", "/recommendations/1000?k=ten", None, 422),
        ("POST", "/users/1000/interactions", b"{not json", 422),
        ("POST", "/users/1000/interactions", {"isbn": "1000000011", "rating": 11}, 422),
        ("POST", "/users/1000/interactions", {"isbn": "1000000011", "stars": 3}, 422),
        ("POST", "/users/1000/interactions", {"isbn": "9999999999"}, 404),
        ("POST", "/recommendations", {"age": -3}, 422),
        ("POST", "/recommendations", b"x" * 200_000, 413),
    ],
)
def test_bad_input_gets_a_clear_4xx(service, method, path, body, status):
    content = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else None)
    headers = {"content-type": "application/json", **service.auth}
    answer = httpx.request(method, service.url + path, content=content, headers=headers)
    assert answer.status_code == status, answer.text
    assert answer.json().get("detail")


def test_writes_need_the_bearer_token_reads_do_not(project, service):
    import stat

    token_file = project / "run" / "api_token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600  # readable by its owner only
    url = f"{service.url}/users/1002/interactions"
    body = {"isbn": "1000000011", "rating": 8}
    missing = httpx.post(url, json=body)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
    wrong = httpx.post(url, json=body, headers={"Authorization": "Bearer not-the-token"})
    assert wrong.status_code == 403
    assert httpx.post(url, json=body, headers={"Authorization": "Basic abc"}).status_code == 401
    from pipeline.storage.feedback import FeedbackStore

    assert "1000000011" not in FeedbackStore.for_root(project).latest_ratings("1002")  # nothing stored
    assert httpx.post(url, json=body, headers=service.auth).status_code == 201
    assert httpx.get(f"{service.url}/recommendations/1002").status_code == 200  # reads stay open


def test_posted_interaction_is_reflected_at_once_and_survives_a_restart(project, service):
    before = httpx.get(f"{service.url}/recommendations/1001").json()["books"]
    top = before[0]["isbn"]
    stored = httpx.post(
        f"{service.url}/users/1001/interactions", json={"isbn": top, "rating": 9}, headers=service.auth
    )
    assert stored.status_code == 201 and stored.json()["isbn"] == top
    after = httpx.get(f"{service.url}/recommendations/1001").json()["books"]
    assert top not in {b["isbn"] for b in after}
    service.stop()
    service.start()
    again = httpx.get(f"{service.url}/recommendations/1001").json()["books"]
    assert top not in {b["isbn"] for b in again}


def test_standing_lists_serve_known_readers_and_feedback_still_counts_at_once(project, service):
    """The API keeps standing lists (precomputed per reader); a dislike posted afterwards leaves the
    reader's representation as it was but must leave their next list at once, and a liked book must
    move the list to the new history."""

    def standing() -> float:
        lines = httpx.get(f"{service.url}/metrics").text.splitlines()
        return next(float(x.split()[-1]) for x in lines if x.startswith("bookrec_standing_lists "))

    deadline = time.monotonic() + 60
    while standing() == 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert standing() > 0
    before = [b["isbn"] for b in httpx.get(f"{service.url}/recommendations/1003").json()["books"]]
    disliked = before[0]
    posted = httpx.post(
        f"{service.url}/users/1003/interactions", json={"isbn": disliked, "rating": 2}, headers=service.auth
    )
    assert posted.status_code == 201
    after = [b["isbn"] for b in httpx.get(f"{service.url}/recommendations/1003").json()["books"]]
    assert disliked not in after and after[:9] == before[1:10]  # the same list, one place up
    liked = httpx.get(f"{service.url}/recommendations/1200").json()["books"][0]["isbn"]
    httpx.post(
        f"{service.url}/users/1003/interactions", json={"isbn": liked, "rating": 10}, headers=service.auth
    )
    moved = [b["isbn"] for b in httpx.get(f"{service.url}/recommendations/1003").json()["books"]]
    from pipeline.serving.service import BookRecommender

    ranked_in_full = BookRecommender.from_folder(project / "models" / "ncf").recommend(
        ["1003"], 10, extra_reads={"1003": [liked]}, extra_excluded={"1003": [disliked, liked]}
    )
    assert moved == ranked_in_full["isbn"].tolist()


def test_alias_swap_without_failed_requests(project, service):
    failures, answers, stop = [], [], threading.Event()

    def hammer():
        with httpx.Client(base_url=service.url, timeout=10) as client:
            while not stop.is_set():
                response = client.get("/recommendations/1000", params={"k": 5})
                (answers if response.status_code == 200 else failures).append(response.status_code)

    workers = [threading.Thread(target=hammer) for _ in range(2)]
    for worker in workers:
        worker.start()
    try:
        from pipeline import stages
        from pipeline.config import Workspace, load_params

        ws, params = Workspace.load(project)
        params = params.model_copy(update={"train": params.train.model_copy(update={"seed": 11})})
        stages.train(ws, params, show_progress=False)
        stages.evaluate(ws, load_params(project))
        version = json.loads(run(["bookrec", "register", "--no-promote"], project).stdout)["version"]
        token = ["--token", api_token(project)]
        run(["bookrec", "registry", "promote", version, "--reason", "swap test", *token], project)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if httpx.get(f"{service.url}/health").json()["model_version"] == version:
                break
            time.sleep(0.5)
        else:
            pytest.fail("the service did not pick up the new production version")
        time.sleep(1)
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert not failures and len(answers) > 20


def wait_for_health(service, condition, seconds: float = 60) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        health = httpx.get(f"{service.url}/health").json()
        if condition(health):
            return health
        time.sleep(0.5)
    raise AssertionError(f"health never met the condition; last: {health}")


def test_health_tells_the_truth_when_production_cannot_be_loaded(project, service, tmp_path):
    """The alias moved (as by hand in the MLflow UI) to a version whose weights are corrupt: the old
    version keeps serving, and /health and /metrics say degraded, naming both versions."""

    from pipeline.ops import registry, tracking

    client = tracking.client(project)
    serving = httpx.get(f"{service.url}/health").json()["model_version"]
    bad = register_broken_copy(client, serving, tmp_path)
    client.set_registered_model_alias(registry.MODEL_NAME, "production", bad)
    try:
        health = wait_for_health(service, lambda h: h["status"] != "ok")
        assert health["status"] == "degraded" and health["model_version"] == serving
        assert health["production_version"] == str(bad) and "weights" in health["error"]
        assert httpx.get(f"{service.url}/recommendations/1000").status_code == 200  # still serving
        metrics = httpx.get(f"{service.url}/metrics").text
        assert "bookrec_model_degraded 1.0" in metrics
        assert f'bookrec_serving_version{{version="{serving}"}} 1.0' in metrics
    finally:
        client.set_registered_model_alias(registry.MODEL_NAME, "production", serving)
    assert wait_for_health(service, lambda h: h["status"] == "ok")["model_version"] == serving
    assert "bookrec_model_degraded 0.0" in httpx.get(f"{service.url}/metrics").text


def test_schemathesis_finds_no_server_errors(service, tmp_path):
    done = subprocess.run(
        [
            str(BIN / "schemathesis"),
            "run",
            f"{service.url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "30",
            "--generation-deterministic",
            "--request-timeout",
            "10",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_health_is_degraded_while_the_registry_cannot_be_read_or_the_rules_are_stale(project, service):
    """The registry's database locked by another writer, then the run-time rules' table gone: the
    version loaded keeps serving, and /health says degraded and why, until both are back."""
    import sqlite3

    serving = wait_for_health(service, lambda h: h["status"] == "ok")["model_version"]
    registry_db = sqlite3.connect(project / "mlruns" / "mlflow.db", timeout=30, isolation_level=None)
    registry_db.execute("BEGIN EXCLUSIVE")
    try:
        health = wait_for_health(service, lambda h: h["status"] != "ok", seconds=45)
        assert health["status"] == "degraded" and health["model_version"] == serving
        assert "the registry cannot be read" in health["error"]
        assert httpx.get(f"{service.url}/recommendations/1000").status_code == 200  # still serving
    finally:
        registry_db.execute("ROLLBACK")
        registry_db.close()
    wait_for_health(service, lambda h: h["status"] == "ok")

    feedback_db = sqlite3.connect(
        project / "data" / "feedback" / "feedback.db", timeout=30, isolation_level=None
    )
    feedback_db.execute("ALTER TABLE settings RENAME TO settings_away")
    try:
        health = wait_for_health(service, lambda h: h.get("stale_rules"), seconds=30)
        assert health["status"] == "degraded" and set(health["stale_rules"]) == {"experiment", "unavailable"}
        assert "run-time rules could not be reread" in health["error"]
        assert "bookrec_model_degraded 1.0" in httpx.get(f"{service.url}/metrics").text
    finally:
        feedback_db.execute("ALTER TABLE settings_away RENAME TO settings")
        feedback_db.close()
    wait_for_health(service, lambda h: h["status"] == "ok" and not h["stale_rules"])


def test_exclude_takes_at_most_50_books_however_written(service):
    isbns = [f"{n:010d}" for n in range(51)]
    url = f"{service.url}/recommendations/1000"
    for exclude in ([",".join(isbns)], [",".join(isbns[:30]), ",".join(isbns[30:])], isbns):
        answer = httpx.get(url, params={"exclude": exclude})
        assert answer.status_code == 422 and "at most 50" in answer.text, (len(exclude), answer.text)
    assert httpx.get(url, params={"exclude": ",".join(isbns[:50])}).status_code == 200
    similar = httpx.get(f"{service.url}/books/1000000011/similar", params={"exclude": ",".join(isbns)})
    assert similar.status_code == 422


@pytest.fixture(scope="module")
def served_model(project):
    from pipeline.serving.service import BookRecommender

    return BookRecommender.from_folder(project / "models" / "ncf")


def bounded_app(project, model, tmp_path, read_token: str | None = None, **limits):
    """The API app in process over `model`, with params.yaml's serve section and these `limits`."""
    from pipeline.config import load_params
    from pipeline.serving.api import create_app
    from pipeline.serving.holder import ModelHolder
    from pipeline.storage.feedback import FeedbackStore

    serve = load_params(REPO_ROOT).serve
    serve = serve.model_copy(
        update={"limits": serve.limits.model_copy(update=limits), "read_token": read_token is not None}
    )
    holder = ModelHolder(lambda version: model, lambda: "1", poll_seconds=60)
    holder.refresh()
    feedback = FeedbackStore(f"sqlite:///{tmp_path / 'feedback.db'}")
    app = create_app(holder, feedback, "write-token", start_polling=False, serve=serve, read_token=read_token)
    return app, feedback


def test_a_client_over_its_rate_gets_429_and_monitoring_stays_open(project, served_model, tmp_path):
    from fastapi.testclient import TestClient

    app, _ = bounded_app(project, served_model, tmp_path, requests_per_client="5/minute")
    with TestClient(app) as client:
        assert [client.get("/recommendations/1000").status_code for _ in range(5)] == [200] * 5
        refused = client.get("/books/1000000011/similar")
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert "too many requests" in refused.json()["detail"]
        assert client.get("/health").status_code == 200
        assert (
            'bookrec_requests_total{endpoint="rate limited",status="429"} 1.0' in client.get("/metrics").text
        )


def test_impressions_per_reader_are_capped_and_the_dropped_lists_counted(project, served_model, tmp_path):
    from fastapi.testclient import TestClient

    from pipeline.storage.impressions import impressions_frame

    app, feedback = bounded_app(project, served_model, tmp_path, impressions_per_reader=3)
    with TestClient(app) as client:
        answers = [client.get("/recommendations/1000") for _ in range(5)]
        assert all(a.status_code == 200 and a.json()["books"] for a in answers)  # served all the same
        client.get("/recommendations/1001")
        metrics = client.get("/metrics").text
    logged = impressions_frame(feedback)
    assert (logged["user_id"] == "1000").sum() == 3 and (logged["user_id"] == "1001").sum() == 1
    assert "bookrec_impressions_capped_total 2.0" in metrics


def test_reads_can_be_put_behind_a_token(project, served_model, tmp_path):
    from fastapi.testclient import TestClient

    app, _ = bounded_app(project, served_model, tmp_path, read_token="read-token")
    with TestClient(app) as client:
        assert client.get("/recommendations/1000").status_code == 401
        wrong = client.get("/recommendations/1000", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 403
        for token in ("read-token", "write-token"):
            headers = {"Authorization": f"Bearer {token}"}
            assert client.get("/books/1000000011/similar", headers=headers).status_code == 200
        read_only = {"Authorization": "Bearer read-token"}
        write = client.post("/users/1000/interactions", json={"isbn": "1000000011"}, headers=read_only)
        assert write.status_code == 403  # the read token never writes
        assert client.get("/health").status_code == 200


def test_similar_books_are_computed_off_the_event_loop(project, served_model, tmp_path):
    """While one similar-books search computes, the loop still answers other requests."""
    import asyncio

    from pipeline.serving.service import BookRecommender

    model = BookRecommender.from_folder(project / "models" / "ncf")
    computing, release = threading.Event(), threading.Event()
    search = model.rank_similar

    def slow_search(*args, **kwargs):
        computing.set()
        release.wait(10)
        return search(*args, **kwargs)

    model.rank_similar = slow_search
    app, _ = bounded_app(project, model, tmp_path)

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            similar = asyncio.create_task(client.get("/books/1000000011/similar"))
            while not computing.is_set():
                await asyncio.sleep(0.01)
            health = await client.get("/health")
            answered_meanwhile = not similar.done()
            release.set()
            return health.status_code, answered_meanwhile, (await similar).status_code

    assert asyncio.run(scenario()) == (200, True, 200)


def test_a_full_scoring_queue_answers_503(project, tmp_path):
    import asyncio

    from pipeline.serving.service import BookRecommender

    model = BookRecommender.from_folder(project / "models" / "ncf")
    release = threading.Event()
    rank = model.rank

    def slow_rank(*args, **kwargs):
        release.wait(10)
        return rank(*args, **kwargs)

    model.rank = slow_rank
    app, _ = bounded_app(project, model, tmp_path, pending_requests=2)

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            asks = [asyncio.create_task(client.get(f"/recommendations/{1000 + n}")) for n in range(6)]
            await asyncio.sleep(0.5)
            release.set()
            return await asyncio.gather(*asks)

    answers = asyncio.run(scenario())
    refused = [a for a in answers if a.status_code == 503]
    assert refused and all("at capacity" in a.json()["detail"] and a.headers["retry-after"] for a in refused)
    assert {a.status_code for a in answers} == {200, 503}
