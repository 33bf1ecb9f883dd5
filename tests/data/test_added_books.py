"""Books added between trainings: checked like the dump's books (a bad row refused with its line and
field, nothing stored), stored in the serving store, exported beside the raw data, and merged by the
next ingest with the dump's rules and their own lineage; with enough readers, ordinary books after it."""

from __future__ import annotations

import pandas as pd
import pytest
from typer.testing import CliRunner

from pipeline import stages
from pipeline.cli import app
from pipeline.config import Workspace
from pipeline.data.parsing import IngestError
from pipeline.schemas import RAW_COLUMNS
from pipeline.storage.added_books import (
    add_book_fields,
    add_books_file,
    added_books_frame,
    books_csv,
)
from pipeline.storage.feedback import FeedbackStore, export_to_raw
from pipeline.storage.rawdata import fetch, read_raw_csv

HEADER = ";".join(f'"{c}"' for c in RAW_COLUMNS["books"])
GOOD = '"9780141439587";"Northanger Abbey";"Jane Austen";"2003";"Penguin";"";"http://x/m.jpg";""'


def books_file(tmp_path, *lines: str):
    path = tmp_path / "new-books.csv"
    path.write_bytes(("\r\n".join([HEADER, *lines]) + "\r\n").encode("utf-8"))
    return path


@pytest.fixture
def store(tmp_path) -> FeedbackStore:
    return FeedbackStore(f"sqlite:///{tmp_path / 'feedback.db'}")


@pytest.mark.parametrize(
    ("line", "field", "message"),
    [
        ('"";"A Title";"X";"2003";"P";"";"";""', "ISBN", "no ISBN"),
        ('"12345";"A Title";"X";"2003";"P";"";"";""', "ISBN", "not an ISBN-10 or ISBN-13"),
        ('"9780141439587";"Again";"X";"2003";"P";"";"";""', "ISBN", "the same ISBN is given twice"),
        ('"0000000019";"";"X";"2003";"P";"";"";""', "Book-Title", "no title"),
        ('"0000000019";"A Title";"X";"1999b";"P";"";"";""', "Year-Of-Publication", "not a year"),
        ('"0000000019";"A Title";"X";"2031";"P";"";"";""', "Year-Of-Publication", "not a year"),
    ],
)
def test_a_bad_row_is_refused_with_its_line_and_field_and_nothing_is_stored(
    tmp_path, store, repo_params, line, field, message
):
    path = books_file(tmp_path, GOOD, line)
    with pytest.raises(IngestError) as raised:
        add_books_file(store, path, repo_params.ingest)
    assert (raised.value.file, raised.value.line, raised.value.field) == (path.name, 3, field)
    assert message in str(raised.value)
    assert added_books_frame(store).empty


def test_a_structural_fault_is_refused_like_the_dumps(tmp_path, store, repo_params):
    path = books_file(tmp_path, GOOD, '"0000000019";"Only three";"fields"')
    with pytest.raises(IngestError, match="line 3"):
        add_books_file(store, path, repo_params.ingest)
    assert added_books_frame(store).empty


def test_good_rows_are_cleaned_by_the_dumps_rules_and_stored(tmp_path, store, repo_params):
    path = books_file(tmp_path, GOOD, '"000000001x";"Pride &amp; Prejudice";"Jane Austen";"";"";"";"";""')
    assert add_books_file(store, path, repo_params.ingest) == 2
    stored = added_books_frame(store).set_index("isbn")
    assert set(stored.index) == {"9780141439587", "000000001X"}
    assert stored.loc["000000001X", "title"] == "Pride & Prejudice" and pd.isna(stored.loc["000000001X", "year"])
    assert stored.loc["9780141439587", "image_url_m"] == "http://x/m.jpg"
    # the same book again corrects it, it is not a second row
    add_book_fields(store, "9780141439587", {"title": "Northanger Abbey (Penguin)", "year": 2003}, repo_params.ingest)
    stored = added_books_frame(store).set_index("isbn")
    assert len(stored) == 2 and stored.loc["9780141439587", "title"] == "Northanger Abbey (Penguin)"
    with pytest.raises(IngestError, match="request body, line 2, field 'Year-Of-Publication'"):
        add_book_fields(store, "0000000019", {"title": "T", "year": 3000}, repo_params.ingest)


def test_the_cli_exits_1_naming_the_line_and_field(tmp_path, monkeypatch, project):
    monkeypatch.chdir(project)
    monkeypatch.delenv("BOOKREC_ROOT", raising=False)
    monkeypatch.delenv("BOOKREC_FEEDBACK_URL", raising=False)
    runner = CliRunner()
    bad = runner.invoke(app, ["books", "add", str(books_file(tmp_path, GOOD, '"bad";"T";"X";"1";"P";"";"";""'))])
    assert bad.exit_code == 1 and "line 3, field 'ISBN'" in bad.output
    assert added_books_frame(FeedbackStore.for_root(project)).empty
    good = runner.invoke(app, ["books", "add", str(books_file(tmp_path, GOOD))])
    assert good.exit_code == 0 and "1 books added" in good.output
    assert added_books_frame(FeedbackStore.for_root(project))["isbn"].tolist() == ["9780141439587"]


def test_the_export_round_trips_through_the_dumps_parser(tmp_path, store, repo_params):
    tricky = '"0000000019";"A \\"quoted\\" title; with a semicolon";"X";"2001";"P";"";"";""'
    add_books_file(store, books_file(tmp_path, GOOD, tricky), repo_params.ingest)
    path = tmp_path / "books.csv"
    path.write_bytes(books_csv(added_books_frame(store)))
    parsed = read_raw_csv(path, "books")
    assert sorted(parsed["Book-Title"]) == ['A "quoted" title; with a semicolon', "Northanger Abbey"]


def test_the_next_ingest_merges_added_books_with_lineage_and_preprocess_keeps_the_read_ones(
    project, synthetic_bx
):
    ws, params = Workspace.load(project)
    fetch(ws.raw, ws.cache, source=synthetic_bx.folder, show_progress=False, allow_modified=True)
    store = FeedbackStore.for_root(project)
    dump_isbn = next(iter(synthetic_bx.shelf_of_book))
    lines = [GOOD, f'"{dump_isbn}";"A Dump Book Again";"Someone";"2001";"P";"";"";""']
    add_books_file(store, books_file(project, *lines), params.ingest)
    readers = list(synthetic_bx.group_of_user)[:8]
    for reader in readers:  # enough readers for the k-core: an ordinary book after the next training
        store.add(reader, "9780141439587", 8)
    export_to_raw(store, ws.feedback)

    report = stages.ingest(ws, params)
    assert report["added_books"]["rows_written"] == 1
    assert report["added_books"]["rejected_by_reason"] == {"already_in_book_crossing": 1}
    assert report["books"]["notes"]["rows_added_from_store"] == 1
    books = pd.read_parquet(ws.interim / "books.parquet").set_index("isbn")
    assert books.loc["9780141439587", "title"] == "Northanger Abbey"
    assert books.loc[dump_isbn, "title"] != "A Dump Book Again"  # the dump's row stays
    rejected = pd.read_parquet(ws.interim / "rejected" / "added_books.parquet")
    assert rejected["reason"].tolist() == ["already_in_book_crossing"]

    stages.preprocess(ws, params)
    items = pd.read_parquet(ws.processed / "items.parquet")
    assert "9780141439587" in set(items["isbn"])
