"""The data stages on the engine (DuckDB, in chunks) give exactly the in-memory protocol's tables.

The in-memory functions (`ingest_tables`, `build_interactions`, `split_interactions`) are the
protocol's reference; the streamed stages must equal them row for row, whatever the chunk size, on
the synthetic dump with extra faults planted across chunk boundaries (duplicates far apart, ratings
of unknown readers, feedback that repeats Book-Crossing or brings new readers).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from pipeline import io
from pipeline.config import EngineParams
from pipeline.data.ingest import IngestError, ingest_tables
from pipeline.data.preprocess import build_interactions
from pipeline.data.split import SPLIT_NAMES, split_interactions
from pipeline.storage.feedback import write_export
from pipeline.storage.interim import ingest_files
from pipeline.storage.processed import preprocess_files
from pipeline.storage.rawdata import read_raw_csv

FILES = {"ratings": "BX-Book-Ratings.csv", "users": "BX-Users.csv", "books": "BX-Books.csv"}


def tiny_engine(chunk_rows: int) -> EngineParams:
    return EngineParams(memory_limit_gib=0.25, chunk_rows=chunk_rows, threads=2)


@pytest.fixture(scope="module")
def faulty_bx(tmp_path_factory, synthetic_bx) -> dict[str, Path]:
    """The synthetic dump with a planted duplicate of each kind at the end of its file (far from
    the first row in every chunking), unknown readers, and a feedback export."""
    folder = tmp_path_factory.mktemp("faulty-bx")
    files = {role: folder / name for role, name in FILES.items()}
    for role, name in FILES.items():
        shutil.copy(synthetic_bx.folder / name, files[role])
    users = read_raw_csv(files["users"], "users")
    books = read_raw_csv(files["books"], "books")
    ratings = read_raw_csv(files["ratings"], "ratings")
    first_user, first_isbn = users["User-ID"].iloc[0], books["ISBN"].iloc[0]
    first_pair = ratings.iloc[0]
    with open(files["users"], "ab") as handle:
        handle.write(
            f'"{first_user}";"dup, of, first";"33"\r\n"x9";"bad, id, usa";"20"\r\n'.encode("latin-1")
        )
    with open(files["books"], "ab") as handle:
        handle.write(f'"{first_isbn.lower()}";"Dup";"A";"2000";"P";"s";"m";"l"\r\n'.encode("latin-1"))
    with open(files["ratings"], "ab") as handle:
        handle.write(
            (
                f'"{first_pair["User-ID"]}";" {first_pair["ISBN"].lower()} ";"9"\r\n'  # the same pair again
                f'"999999";"{first_isbn}";"5"\r\n'  # a reader the users file lacks
                f'"{first_user}";"";"3"\r\n'
            ).encode("latin-1")
        )
    feedback = pd.DataFrame(
        {
            "User-ID": [first_pair["User-ID"].strip(), "alice", "alice", "bad id!", first_user],
            "ISBN": [
                first_pair["ISBN"].strip().upper(),
                books["ISBN"].iloc[1],
                books["ISBN"].iloc[2],
                "1",
                "X",
            ],
            "Book-Rating": [7, 0, 8, 5, 6],
        }
    )
    files["feedback"] = write_export(feedback, folder / "feedback")
    return files


def reference_protocol(ingested, params) -> tuple:
    """The in-memory preprocess of an `IngestResult`: (its `Interactions`, every processed table by name)."""
    tables = ingested.tables()
    built = build_interactions(tables["ratings"].clean, tables["users"].clean, tables["books"].clean, params)
    splits = split_interactions(built.interactions, built.users, built.items, params)
    return built, {**splits, "dislikes": built.dislikes, "users": built.users, "items": built.items}


def as_written(frame: pd.DataFrame, tmp_path: Path) -> pd.DataFrame:
    """`frame` as the in-memory stage wrote it and a reader gets it back."""
    return io.read_parquet(io.write_parquet(frame, tmp_path / "reference.parquet"))


def in_memory_ingest(files: dict[str, Path], params):
    raw = {
        role: read_raw_csv(path, "ratings" if role == "feedback" else role) for role, path in files.items()
    }
    return ingest_tables(raw, {role: path.name for role, path in files.items()}, params.ingest)


@pytest.fixture(scope="module")
def reference(faulty_bx, repo_params):
    return in_memory_ingest(faulty_bx, repo_params)


@pytest.mark.parametrize("chunk_rows", [97, 1_000_000])
def test_streamed_ingest_equals_the_in_memory_tables(tmp_path, faulty_bx, reference, repo_params, chunk_rows):
    out = tmp_path / "interim"
    out.mkdir()
    sources = {role: faulty_bx[role] for role in FILES}
    report = ingest_files(sources, faulty_bx["feedback"], out, repo_params.ingest, tiny_engine(chunk_rows))
    assert report == reference.report()
    for role, table in reference.tables().items():
        if role != "feedback":
            written = io.read_parquet(out / f"{role}.parquet")
            pd.testing.assert_frame_equal(written, as_written(table.clean, tmp_path))
        rejected = io.read_parquet(out / "rejected" / f"{role}.parquet")
        pd.testing.assert_frame_equal(rejected, as_written(table.rejected, tmp_path))
    # the planted faults are there to be found: every rule that needs all rows fired
    assert report["users"]["rejected_by_reason"]["duplicate_user_id"] == 1
    assert report["books"]["rejected_by_reason"]["duplicate_isbn_after_upper_casing"] >= 1
    assert report["ratings"]["rejected_by_reason"]["duplicate_user_isbn_pair"] == 1
    assert report["ratings"]["rejected_by_reason"]["user_not_in_users_file"] == 1
    assert report["feedback"]["rejected_by_reason"]["already_in_book_crossing"] == 1
    assert report["users"]["notes"]["readers_added_from_feedback"] == 1


def test_streamed_preprocess_equals_the_in_memory_protocol(tmp_path, reference, repo_params):
    interim, processed = tmp_path / "interim", tmp_path / "processed"
    for role in FILES:
        io.write_parquet(reference.tables()[role].clean, interim / f"{role}.parquet")
    processed.mkdir()
    params = repo_params.preprocess.model_copy(update={"user_core": 3, "item_core": 3})
    counts = preprocess_files(interim, processed, params, tiny_engine(211))
    built, processed_tables = reference_protocol(reference, params)
    splits = {name: processed_tables[name] for name in SPLIT_NAMES}
    for name, frame in processed_tables.items():
        pd.testing.assert_frame_equal(
            io.read_parquet(processed / f"{name}.parquet"), as_written(frame, tmp_path)
        )
    assert counts == dict(built.counts) | {f"{n}_rows": len(f) for n, f in splits.items()} | {
        "protocol": counts["protocol"]
    }
    assert counts["dislikes"] > 0 and min(len(f) for f in splits.values()) > 0
    assert not any(path.name.startswith(".engine") for path in processed.iterdir())  # scratch removed


def test_a_header_only_file_stops_the_streamed_ingest_and_the_last_outputs_stay(
    tmp_path, faulty_bx, repo_params
):
    empty = tmp_path / "BX-Book-Ratings.csv"
    empty.write_bytes(b'"User-ID";"ISBN";"Book-Rating"\r\n')
    target = tmp_path / "interim"
    target.mkdir()
    (target / "ratings.parquet").write_text("the last good output")
    sources = {role: faulty_bx[role] for role in FILES} | {"ratings": empty}
    with pytest.raises(IngestError, match=r"^BX-Book-Ratings\.csv: the file has a header and no rows"):
        with io.atomic_directory(target) as out:  # as stages.ingest writes
            ingest_files(sources, None, out, repo_params.ingest, tiny_engine(100))
    assert [p.name for p in target.iterdir()] == ["ratings.parquet"]
    assert (target / "ratings.parquet").read_text() == "the last good output"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["BX-Book-Ratings.csv", "interim"]  # no scratch left
