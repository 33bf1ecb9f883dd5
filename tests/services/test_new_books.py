"""A book added through the API, served for real on loopback: in the next similar-books and
recommendation answers, ratable, and the same lists from the API, the MLflow pyfunc and the
dashboard's data path (one code path: the version grown by the store's books)."""

from __future__ import annotations

import sys

import httpx
import pandas as pd
import pytest

from tests.conftest import REPO_ROOT
from tests.services.test_api import Service

pytestmark = pytest.mark.slow
NEW_ISBN = "9780000000011"


@pytest.fixture(scope="module")
def store_url(tmp_path_factory) -> str:
    """A serving store of these tests' own: the session's trained project stays as it is."""
    return f"sqlite:///{tmp_path_factory.mktemp('store') / 'feedback.db'}"


@pytest.fixture(scope="module")
def service(trained_project, store_url):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BOOKREC_FEEDBACK_URL", store_url)
        running = Service(trained_project).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def catalog(trained_project):
    """The served catalog and, for its most prolific author, that author's most devoted reader."""
    folder = trained_project / "models" / "ncf"
    items = pd.read_parquet(folder / "items.parquet")
    interactions = pd.read_parquet(folder / "interactions.parquet")
    users = pd.read_parquet(folder / "users.parquet")
    author = items["author"].value_counts().index[0]
    by_author = interactions.merge(items[["item_idx", "author"]], on="item_idx")
    reader = by_author[by_author["author"] == author]["user_idx"].value_counts().index[0]
    user_id = users.set_index("user_idx").loc[reader, "user_id"]
    publisher = items[items["author"] == author]["publisher"].mode().iloc[0]
    return items, author, str(user_id), publisher, users["user_id"].astype(str).tolist()


def isbns(answer: dict) -> list[str]:
    return [book["isbn"] for book in answer["books"]]


def test_a_book_added_through_the_api_is_in_the_next_answers(service, catalog):
    """The answers right after the `PUT` returns have it (how long that takes on the real catalog is
    benchmarks/new_books_latency.py's figure: timings are no test's business)."""
    items, author, reader, publisher, _ = catalog
    assert httpx.get(f"{service.url}/books/{NEW_ISBN}/similar").status_code == 404
    body = {"title": "A Tale Nobody Has Read Yet", "author": author, "year": 2003, "publisher": publisher}
    assert httpx.put(f"{service.url}/admin/books/{NEW_ISBN}", json=body).status_code == 401
    added = httpx.put(f"{service.url}/admin/books/{NEW_ISBN}", json=body, headers=service.auth, timeout=30)
    assert added.status_code == 200, added.text
    similar = httpx.get(f"{service.url}/books/{NEW_ISBN}/similar", params={"k": 10})
    listed = isbns(httpx.get(f"{service.url}/recommendations/{reader}", params={"k": 100}).json())
    assert similar.status_code == 200 and len(similar.json()["books"]) == 10
    assert NEW_ISBN in listed  # a reader of its author can be recommended it
    by_author = set(items[items["author"] == author]["isbn"])
    assert set(isbns(similar.json())) & by_author  # its neighbours include its author's books

    rated = httpx.post(
        f"{service.url}/users/{reader}/interactions",
        json={"isbn": NEW_ISBN, "rating": 9},
        headers=service.auth,
    )
    assert rated.status_code == 201
    after = isbns(httpx.get(f"{service.url}/recommendations/{reader}", params={"k": 100}).json())
    assert NEW_ISBN not in after  # read now: never recommended to them again

    bad = httpx.put(
        f"{service.url}/admin/books/9780000000028",
        json={"title": "Too Late", "year": 2999},
        headers=service.auth,
    )
    assert bad.status_code == 422 and "Year-Of-Publication" in bad.text


def test_the_api_the_pyfunc_and_the_dashboards_data_path_give_the_same_lists(
    service, catalog, trained_project, store_url, monkeypatch
):
    import mlflow

    from pipeline.ops import registry, tracking
    from pipeline.serving.holder import registry_holder

    _, author, reader, publisher, user_ids = catalog
    body = {"title": "A Tale Nobody Has Read Yet", "author": author, "year": 2003, "publisher": publisher}
    httpx.put(f"{service.url}/admin/books/{NEW_ISBN}", json=body, headers=service.auth, timeout=30)
    readers = [u for u in user_ids[::9] if u != reader]
    api = {
        u: isbns(httpx.get(f"{service.url}/recommendations/{u}", params={"k": 10}).json()) for u in readers
    }
    api_similar = isbns(httpx.get(f"{service.url}/books/{NEW_ISBN}/similar", params={"k": 10}).json())
    assert any(NEW_ISBN in listed for listed in api.values())

    monkeypatch.setenv("BOOKREC_FEEDBACK_URL", store_url)
    monkeypatch.setenv("BOOKREC_ROOT", str(trained_project))
    tracking.use_store(trained_project)
    pyfunc = mlflow.pyfunc.load_model(f"models:/{registry.MODEL_NAME}@production")
    served = pyfunc.predict(pd.DataFrame({"user_id": readers, "k": 10}))
    for user_id in readers:
        assert served.loc[served["user_id"] == user_id, "isbn"].tolist() == api[user_id]
    similar = pyfunc.predict(pd.DataFrame({"isbn": [NEW_ISBN], "k": [10]}), params={"mode": "similar"})
    assert similar["similar_isbn"].tolist() == api_similar

    monkeypatch.syspath_prepend(str(REPO_ROOT / "dashboard"))
    sys.modules.pop("data_access", None)
    import data_access

    holder = registry_holder(trained_project, poll_seconds=60)
    holder.refresh()
    growth = data_access.follow_added_books(holder)
    try:
        model = holder.current.recommender
        for user_id in readers:  # as the reader page asks: nothing read since training, nothing blocked
            shown = model.recommend([user_id], 10, extra_reads={user_id: []}, extra_excluded={user_id: []})
            assert shown["isbn"].tolist() == api[user_id]
        assert model.search("nobody has read")["isbn"].tolist() == [NEW_ISBN]
        assert model.similar_books([NEW_ISBN], 10)["similar_isbn"].tolist() == api_similar
    finally:
        growth.stop()
        holder.stop()
