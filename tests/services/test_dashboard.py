"""The Streamlit dashboard against a real SQLite registry holding a small trained model: every page
with AppTest, the faults, and the app served on loopback and driven in headless Chromium."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import httpx
import pandas as pd
import pytest

from tests.conftest import BIN, REPO_ROOT, free_port, register_broken_copy

pytestmark = pytest.mark.slow
APP = REPO_ROOT / "dashboard" / "app.py"


def loading(test) -> bool:
    return any("Loading the production model" in c.value for c in test.sidebar.caption)


def run_loaded(default_timeout: float = 90, timeout: float = 120):
    """A new session of the app once the model's background load has finished (a real browser
    reruns by itself; AppTest's reruns of one session re-render the page, never the sidebar)."""
    from streamlit.testing.v1 import AppTest

    deadline = time.monotonic() + timeout
    while True:
        test = AppTest.from_file(str(APP), default_timeout=default_timeout).run()
        if not loading(test) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not loading(test), "the model did not load"
    return test


@pytest.fixture
def app(trained_project, monkeypatch):
    monkeypatch.setenv("BOOKREC_ROOT", str(trained_project))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(REPO_ROOT / "dashboard")
    test = run_loaded()
    assert not test.exception, test.exception
    return test


def test_a_cold_start_shows_the_form_at_once_and_the_model_when_it_has_loaded(trained_project, monkeypatch):
    """The first visit of a fresh process does not wait for the model: the sidebar says it is loading,
    the reader form is there; the same session then shows the model without the visitor doing anything
    (here: the rerun the page's timer would cause)."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("BOOKREC_ROOT", str(trained_project))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(REPO_ROOT / "dashboard")
    st.cache_resource.clear()  # as in a process that never loaded the model
    first = AppTest.from_file(str(APP), default_timeout=90).run()
    assert not first.exception, first.exception
    assert loading(first)
    assert [t.label for t in first.text_input] == ["Book-Crossing User-ID"]
    assert any("fills in by itself" in i.value for i in first.info)
    deadline = time.monotonic() + 120
    while len(first.run().selectbox[0].options) == 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(first.selectbox[0].options) > 1  # the example readers, from the model, same session
    assert not first.info or not any("fills in by itself" in i.value for i in first.info)
    sidebar = " ".join(m.value for m in run_loaded().sidebar.markdown)
    assert "v1 (production)" in sidebar


def html_bodies(test) -> str:
    return "\n".join(element.proto.body for element in test.get("html"))


def test_sidebar_shows_the_production_model(app):
    sidebar = " ".join(m.value for m in app.sidebar.markdown) + " ".join(c.value for c in app.sidebar.caption)
    assert "v1" in sidebar and "Trained" in sidebar and "Data:" in sidebar
    assert "NDCG@10 **0." in sidebar and "Coverage@10 **0." in sidebar


def test_reader_page_recommends_unread_books_with_reasons(app, trained_project):
    example = app.selectbox[0].options[1]
    app.selectbox[0].select(example).run()
    assert not app.exception, app.exception
    assert any(f"Reader {example}" in m.value for m in app.markdown)
    body = html_bodies(app)
    assert "bookrec-card" in body and "because you read" in body
    assert "data:image/svg+xml;base64," in body  # placeholder beneath every cover
    from pipeline.serving.service import BookRecommender

    model = BookRecommender.from_folder(trained_project / "models" / "ncf")
    read = set(model.items["isbn"].iloc[model.read_items(example)])
    recommended = set(model.recommend([example], 10)["isbn"])
    shown = {isbn for isbn in model.items["isbn"] if f'data-isbn="{isbn}"' in body.split("Top 10")[-1]}
    assert recommended <= shown and not (read & recommended)


def test_dashboard_lists_obey_the_exclusion_and_list_rules(app, trained_project, synthetic_bx):
    """The reader page's and the similar-books page's lists, as rendered: no known book or edition of
    one, one edition per work, the author cap."""
    from pipeline.config import load_params
    from tests.rules import Catalog

    catalog = Catalog(trained_project)
    cap = load_params(trained_project).serve.max_per_author
    problems = []
    for example in app.selectbox[0].options[1:]:
        app.selectbox[0].select(example).run()
        assert not app.exception, app.exception
        top = app.get("html")[-1].proto.body  # the last grid on the page: the top 10
        shown = [isbn for isbn in catalog.work if f'data-isbn="{isbn}"' in top]
        assert len(shown) == 10
        problems += catalog.violations(example, shown, cap)
    app.switch_page("pages/similar.py").run()
    first, second = synthetic_bx.editions[0]  # "Tale 10 of the Usa Shelf" and its paperback
    app.text_input[0].input("Tale 10 of the Usa Shelf").run()
    option = next(o for o in app.selectbox[0].options if o.startswith("Tale 10 of the Usa Shelf —"))
    app.selectbox[0].select(option).run()
    assert not app.exception, app.exception
    nearest = app.get("html")[-1].proto.body  # the last grid: the nearest books
    shown = [isbn for isbn in catalog.work if f'data-isbn="{isbn}"' in nearest]
    assert len(shown) == 10 and second not in shown
    problems += catalog.similar_violations(first, shown, cap)
    assert problems == []


def test_reader_page_unknown_user_and_live_feedback(app, trained_project):
    app.text_input[0].input("no-such-reader").run()
    assert not app.exception
    assert any("No reader with User-ID 'no-such-reader'" in w.value for w in app.warning)
    example = app.selectbox[0].options[2]
    app.text_input[0].input("").run()
    app.selectbox[0].select(example).run()
    first_choice = app.selectbox[1].options[0]
    before = html_bodies(app)
    app.button[0].click().run()  # "I read this" on the top recommendation
    assert not app.exception, app.exception
    from pipeline.storage.feedback import FeedbackStore

    stored = list(FeedbackStore.for_root(trained_project).latest_ratings(example))
    assert len(stored) == 1
    after = html_bodies(app)
    assert f'data-isbn="{stored[0]}"' in before.split("Top 10")[-1]
    assert f'data-isbn="{stored[0]}"' not in after.split("Top 10")[-1]  # reflected at once
    assert first_choice
    # the feedback names the list it was chosen from, and that list was logged as an impression
    from pipeline.storage import impressions

    (interaction,) = FeedbackStore.for_root(trained_project).for_user(example)
    assert interaction.request_id is not None
    books = _wait(
        lambda: impressions.impression_books_frame(
            FeedbackStore.for_root(trained_project), [interaction.request_id]
        )
    )
    assert interaction.isbn in set(books["isbn"]) and len(books) == 10


def _wait(read, seconds: float = 10.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if len(found := read()):
            return found
        time.sleep(0.2)
    raise AssertionError("nothing written in time")


def _listed(app) -> str:
    """The recommendations' grid (the page's last html element; the books read come before it)."""
    return app.get("html")[-1].proto.body


def test_unavailable_books_leave_the_dashboard_lists_within_seconds(app, trained_project):
    from pipeline.storage import impressions
    from pipeline.storage.feedback import FeedbackStore

    example = app.selectbox[0].options[3]
    app.selectbox[0].select(example).run()
    top = _listed(app).split('data-isbn="')[1].split('"')[0]
    store = FeedbackStore.for_root(trained_project)
    impressions.set_unavailable(store, [top], "out of print")
    try:
        time.sleep(3)  # serve.rules_refresh_seconds is 2
        app.run()
        assert not app.exception, app.exception
        listed = _listed(app)
        assert f'data-isbn="{top}"' not in listed and listed.count('class="bookrec-card"') == 10
    finally:
        impressions.set_available(store, [top])


def test_a_book_added_to_the_catalog_is_found_and_listed_within_seconds(app, trained_project):
    """Added through the store (as `bookrec books add` and the API add books): searched, shown with its
    neighbours, and a neighbour of its author's books, after serve.rules_refresh_seconds and a rerun."""
    from pipeline.storage.added_books import add_books, remove_books
    from pipeline.storage.feedback import FeedbackStore

    items = pd.read_parquet(trained_project / "models" / "ncf" / "items.parquet")
    author = items["author"].value_counts().index[0]
    book = pd.DataFrame(
        {"isbn": ["9780000000035"], "title": ["Zanzibar Nights"], "author": [author], "year": [2002]}
    ).reindex(
        columns=["isbn", "title", "author", "year", "publisher", "image_url_s", "image_url_m", "image_url_l"]
    )
    store = FeedbackStore.for_root(trained_project)
    add_books(store, book)
    try:
        time.sleep(3)  # serve.rules_refresh_seconds is 2
        app.switch_page("pages/similar.py").run()
        app.text_input[0].input("zanzibar nights").run()
        assert not app.exception, app.exception
        assert app.selectbox[0].label == "1 matching books"
        listed = html_bodies(app)
        assert 'data-isbn="9780000000035"' in listed and listed.count('class="bookrec-card"') == 11
    finally:
        remove_books(store, ["9780000000035"])


def test_monitoring_page_shows_the_served_lists(app):
    example = app.selectbox[0].options[1]
    app.selectbox[0].select(example).run()
    time.sleep(1)  # the impression writer runs in the background
    app.switch_page("pages/monitoring.py").run()
    assert not app.exception, app.exception
    assert any("Online metrics" in h.value for h in app.header)
    table = app.dataframe[0].value
    assert "production" in set(table["arm"]) and (table["impressions"] > 0).all()
    assert len(app.get("vega_lite_chart")) == 3
    assert any("is the first version" in c.value for c in app.caption)  # the data-drift section
    # the A/B section reads experiment records only (dashboard lists are never an arm's evidence)
    assert any("No A/B experiment recorded" in c.value for c in app.caption)


def test_similar_books_page(app):
    app.switch_page("pages/similar.py").run()
    assert any("Type a few words" in i.value for i in app.info)
    app.text_input[0].input("zzzz no such title").run()
    assert any("No book in the catalog matches" in w.value for w in app.warning)
    app.text_input[0].input("Tale 1").run()
    assert not app.exception, app.exception
    assert app.selectbox[0].label.endswith("matching books")
    assert html_bodies(app).count('class="bookrec-card"') == 11  # the book itself and ten neighbours


def test_new_reader_page_recommends_at_once(app):
    app.switch_page("pages/new_reader.py").run()
    assert not app.exception, app.exception
    before = html_bodies(app)
    app.text_input[0].input("madrid, madrid, spain").run()
    app.number_input[0].set_value(60).run()
    assert not app.exception
    assert html_bodies(app) != before and html_bodies(app).count('class="bookrec-card"') == 10


def test_models_page_lists_versions(app):
    app.switch_page("pages/models.py").run()
    assert not app.exception, app.exception
    table = app.dataframe[0].value
    assert "production" in " ".join(table["aliases"]) and {"ndcg@10", "coverage@10", "gate"} <= set(
        table.columns
    )
    history = app.dataframe[1].value
    assert {"version", "at", "by", "reason"} <= set(history.columns)
    assert history.iloc[-1]["by"] == "the promotion gate" and history.iloc[-1]["version"] == "1"


def test_sidebar_says_degraded_when_production_cannot_be_loaded(app, trained_project, tmp_path):
    """Production moved (as by hand in the MLflow UI) to a version with corrupt weights: the sidebar
    says degraded, gives the load error and the version still serving; restored afterwards."""

    from pipeline.ops import registry, tracking

    client = tracking.client(trained_project)
    serving = str(registry.production_version(client).version)
    bad = register_broken_copy(client, serving, tmp_path)

    def sidebar_after_refresh(expect: str) -> str:
        deadline = time.monotonic() + 60  # the holder polls the alias every 15 s
        while time.monotonic() < deadline:
            fresh = run_loaded()  # a new session, as a reload would be
            assert not fresh.exception, fresh.exception
            text = " ".join(m.value for m in [*fresh.sidebar.markdown, *fresh.sidebar.error])
            if expect in text:
                return text
            time.sleep(2)
        raise AssertionError(f"the sidebar never said {expect!r}: {text}")

    client.set_registered_model_alias(registry.MODEL_NAME, "production", bad)
    try:
        text = sidebar_after_refresh("degraded")
        assert f"v{serving} (serving; **degraded**)" in text
        assert f"version {bad} could not be loaded" in text and f"Still serving v{serving}" in text
    finally:
        client.set_registered_model_alias(registry.MODEL_NAME, "production", serving)
    assert f"v{serving} (production)" in sidebar_after_refresh("(production)")


def test_no_production_model_and_unreachable_registry(tmp_path, monkeypatch):

    empty = tmp_path / "empty"
    (empty / "mlruns").mkdir(parents=True)
    monkeypatch.setenv("BOOKREC_ROOT", str(empty))
    monkeypatch.chdir(REPO_ROOT / "dashboard")
    test = run_loaded(default_timeout=60)
    assert not test.exception
    assert any("no production model yet" in i.value for i in test.info), [i.value for i in test.info] + [
        e.value for e in test.error
    ]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    test = run_loaded(default_timeout=60)
    assert not test.exception
    assert any("cannot be reached" in e.value for e in test.error)


@pytest.mark.browser
def test_browser_renders_recommendations_and_similar_books(trained_project, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (make test installs it when run as root)")
    from playwright.sync_api import expect, sync_playwright

    port = free_port()
    env = {
        **os.environ,
        "BOOKREC_ROOT": str(trained_project),
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    server = subprocess.Popen(
        [
            str(BIN / "streamlit"),
            "run",
            str(APP),
            "--server.headless",
            "true",
            "--server.address",
            "127.0.0.1",
            "--server.port",
            str(port),
            "--browser.gatherUsageStats",
            "false",
        ],
        env=env,
        cwd=REPO_ROOT / "dashboard",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    shots = REPO_ROOT / "reports" / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/_stcore/health", timeout=1).text == "ok":
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        with sync_playwright() as p:
            # Playwright gives the browser a fresh temporary profile of its own.
            browser = p.chromium.launch(
                executable_path=chromium,
                headless=True,
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                    "--disable-quic",
                ],
            )
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.goto(f"http://127.0.0.1:{port}/", wait_until="domcontentloaded")
            page.get_by_text("Recommendations for a reader").wait_for(timeout=60_000)
            page.get_by_label("Book-Crossing User-ID").fill("1000")
            page.get_by_label("Book-Crossing User-ID").press("Enter")
            page.get_by_text("Top 10 for reader 1000").wait_for(timeout=60_000)
            cards = page.locator(".bookrec-grid").last.locator(".bookrec-card")
            # Streamlit renders in steps: wait (bounded) until the last grid holds the whole list.
            expect(cards).to_have_count(10, timeout=30_000)
            titles = cards.locator(".bookrec-title").all_inner_texts()
            assert all(title.startswith("Tale") or title for title in titles)
            style = cards.first.locator(".bookrec-cover").get_attribute("style")
            assert "data:image/svg+xml;base64," in style  # the placeholder layer under the dead cover host
            page.screenshot(path=str(shots / "reader.png"), full_page=True)

            page.goto(f"http://127.0.0.1:{port}/similar", wait_until="domcontentloaded")
            page.get_by_label("Search by title or author").fill("Tale 1")
            page.get_by_label("Search by title or author").press("Enter")
            page.get_by_text("Nearest books").wait_for(timeout=60_000)
            expect(page.locator(".bookrec-grid").last.locator(".bookrec-card")).to_have_count(
                10, timeout=30_000
            )
            page.screenshot(path=str(shots / "similar.png"), full_page=True)

            page.goto(f"http://127.0.0.1:{port}/monitoring", wait_until="domcontentloaded")
            page.get_by_text("Click-through rate per day").wait_for(timeout=60_000)
            expect(page.locator("[data-testid='stVegaLiteChart']")).to_have_count(3, timeout=30_000)
            page.screenshot(path=str(shots / "monitoring.png"), full_page=True)
            browser.close()
        assert (shots / "reader.png").stat().st_size > 10_000
    finally:
        server.terminate()
        server.wait(timeout=30)
