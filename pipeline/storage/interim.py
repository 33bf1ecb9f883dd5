"""The ingest stage over files of any size: raw CSVs in, the interim Parquet tables out.

Three passes, none holding a whole table: (1) parse each file in chunks (structural faults stop the
stage here) into a scratch Parquet copy with each row's keys; (2) DuckDB finds the rules that need
every row (the later of duplicate rows, ratings of readers the users file lacks); (3) each chunk
goes through the same pure cleaning as a table held in memory (`pipeline.data.ingest`), with those
flags, and is appended to the outputs. The live-feedback export is small and is cleaned whole,
against the engine's tables. The books and the readers (users, ratings, feedback) share no row and
run in two processes. The caller writes into a staging folder that replaces the last outputs only
on success (`pipeline.io.atomic_directory`), so a fault found late leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import EngineParams, IngestParams
from pipeline.data.ingest import (
    FEEDBACK_USER_ID,
    CleanTable,
    TableReport,
    book_keys,
    clean_added_books,
    clean_books,
    clean_feedback,
    clean_ratings,
    clean_users,
    new_readers,
    rating_keys,
    user_keys,
)
from pipeline.data.parsing import IngestError
from pipeline.schemas import INTERIM_BOOKS, INTERIM_RATINGS, REJECTED
from pipeline.storage.engine import ParquetSink, connect, iter_parquet, row_flags, sql_path
from pipeline.storage.rawdata import iter_raw_csv, read_raw_csv

KEY_COLUMNS: dict[str, tuple[Callable[[pd.DataFrame], pd.DataFrame], tuple[str, ...]]] = {
    "ratings": (rating_keys, ("user_id", "isbn", "valid")),
    "users": (user_keys, ("user_id", "valid")),
    "books": (book_keys, ("isbn",)),
}


def stage_raw(path: Path, role: str, target: Path, chunk_rows: int) -> tuple[int, list[str]]:
    """Parse one raw file into `target` (its fields, row, line and key_* columns); (rows, columns)."""
    keys_of, wanted = KEY_COLUMNS[role]
    sink = ParquetSink(target)
    columns: list[str] = []
    for frame in iter_raw_csv(path, role, chunk_rows):
        columns = list(frame.columns)
        keys = keys_of(frame)
        sink.write(frame.assign(**{f"key_{name}": keys[name] for name in wanted}))
    sink.close()
    return sink.rows, columns


def _later_duplicates(source: Path, keys: str, where: str) -> str:
    """The rows of `source` whose `keys` an earlier row (lower `row`) has: only keys seen twice are
    windowed, so the sort is as small as the duplicates."""
    source_sql = f"read_parquet({sql_path(source)})"
    return (
        f"WITH twice AS (SELECT {keys} FROM {source_sql} WHERE {where} GROUP BY ALL HAVING count(*) > 1) "
        f"SELECT row FROM (SELECT row, row_number() OVER (PARTITION BY {keys} ORDER BY row) AS n "
        f"FROM {source_sql} SEMI JOIN twice USING ({keys}) WHERE {where}) WHERE n > 1"
    )


def _clean_chunks(
    role: str,
    staged: Path,
    columns: list[str],
    flags: dict[str, np.ndarray],
    params: IngestParams,
    file: str,
    clean_sink: ParquetSink,
    rejected_sink: ParquetSink,
    chunk_rows: int,
) -> TableReport:
    report = TableReport(file=file, rows_read=0)
    for raw in iter_parquet(staged, columns, chunk_rows):
        window = slice(int(raw["row"].iloc[0]) - 1, int(raw["row"].iloc[-1]))
        chunk_flags = {name: values[window] for name, values in flags.items()}
        if role == "ratings":
            table = clean_ratings(raw, None, file, **chunk_flags)
        else:
            table = (clean_users if role == "users" else clean_books)(raw, params, file, **chunk_flags)
        clean_sink.write(table.clean)
        rejected_sink.write(REJECTED.validate(table.rejected))
        report.add(table.report)
    return report


def _feedback(connection, raw: pd.DataFrame, file: str, staged_ratings: Path) -> tuple[CleanTable, list[str]]:
    keys = rating_keys(raw, FEEDBACK_USER_ID)
    connection.register("feedback_ids", pd.DataFrame({"user_id": keys["user_id"].unique()}))
    known = connection.execute("SELECT user_id FROM known_users SEMI JOIN feedback_ids USING (user_id)").df()[
        "user_id"
    ]
    connection.register("feedback_pairs", keys.loc[keys["valid"], ["user_id", "isbn"]].drop_duplicates())
    # A pair rated by a valid row of a known reader is in the ratings written (its first row is).
    pairs = connection.execute(
        f"SELECT DISTINCT r.key_user_id AS user_id, r.key_isbn AS isbn "
        f"FROM read_parquet({sql_path(staged_ratings)}) r "
        f"JOIN feedback_pairs f ON r.key_user_id = f.user_id AND r.key_isbn = f.isbn "
        f"SEMI JOIN known_users k ON r.key_user_id = k.user_id WHERE r.key_valid"
    ).df()
    in_book_crossing = (
        pd.MultiIndex.from_frame(pairs.astype(str))
        if len(pairs)
        else pd.MultiIndex.from_tuples([], names=["user_id", "isbn"])
    )
    return clean_feedback(raw, file, known.astype(str), in_book_crossing)


def _check_rows(shapes: dict[str, tuple[int, list[str]]], files: dict[str, Path]) -> None:
    for role, (rows, _) in shapes.items():  # the live feedback export may be empty; these may not
        if rows == 0:
            raise IngestError(files[role].name, "the file has a header and no rows")


def _clean_role(role, shapes, staged, flags, out, params, files, engine, sink=None) -> TableReport:
    """Clean one staged table into out/<role>.parquet (or into `sink`, left open) and its rejected rows."""
    own = sink is None
    sink = sink or ParquetSink(out / f"{role}.parquet")
    with _closing(ParquetSink(out / "rejected" / f"{role}.parquet")) as rejected:
        report = _clean_chunks(
            role, staged, shapes[role][1], flags, params, files[role].name, sink, rejected, engine.chunk_rows
        )
    if own:
        sink.close()
    return report


def _books_job(
    files,
    scratch: Path,
    out: Path,
    params: IngestParams,
    engine: EngineParams,
    added_file: Path | None = None,
) -> dict:
    """The dump's books, then the books added to the serving catalog since (`added_file`)."""
    staged = scratch / "books.parquet"
    shapes = {"books": stage_raw(files["books"], "books", staged, engine.chunk_rows)}
    _check_rows(shapes, files)
    with connect(scratch, engine) as connection:
        query = _later_duplicates(staged, "key_isbn", "key_isbn <> ''")
        flags = {"duplicate": row_flags(connection, query, shapes["books"][0])}
    sink = ParquetSink(out / "books.parquet")
    reports = {"books": _clean_role("books", shapes, staged, flags, out, params, files, engine, sink)}
    if added_file is not None:
        in_dump = pd.Index(pd.read_parquet(staged, columns=["key_isbn"])["key_isbn"].unique())
        added = clean_added_books(read_raw_csv(added_file, "books"), params, added_file.name, in_dump)
        if len(added.clean):
            sink.write(INTERIM_BOOKS.validate(added.clean))
        reports["books"].notes["rows_added_from_store"] = len(added.clean)
        reports["added_books"] = added.report
        with _closing(ParquetSink(out / "rejected" / "added_books.parquet")) as rejected:
            rejected.write(REJECTED.validate(added.rejected))
    sink.close()
    return reports


def _readers_job(
    files, feedback_file, scratch: Path, out: Path, params: IngestParams, engine: EngineParams
) -> dict:
    """Users and ratings (whose readers must be in the users file), then the live feedback."""
    staged = {role: scratch / f"{role}.parquet" for role in ("ratings", "users")}
    shapes = {role: stage_raw(files[role], role, staged[role], engine.chunk_rows) for role in staged}
    feedback_raw = read_raw_csv(feedback_file, "ratings") if feedback_file is not None else None
    _check_rows(shapes, files)
    (n_ratings, _), (n_users, _) = shapes["ratings"], shapes["users"]
    with connect(scratch, engine) as connection:
        connection.execute(
            f"CREATE TABLE known_users AS SELECT DISTINCT key_user_id AS user_id "
            f"FROM read_parquet({sql_path(staged['users'])}) WHERE key_valid"
        )
        user_flags = {
            "duplicate": row_flags(
                connection, _later_duplicates(staged["users"], "key_user_id", "true"), n_users
            )
        }
        rating_flags = {
            "duplicate": row_flags(
                connection,
                _later_duplicates(staged["ratings"], "key_user_id, key_isbn", "key_valid"),
                n_ratings,
            ),
            "known": row_flags(
                connection,
                f"SELECT row FROM read_parquet({sql_path(staged['ratings'])}) r "
                f"SEMI JOIN known_users k ON r.key_user_id = k.user_id",
                n_ratings,
            ),
        }
        sinks = {role: ParquetSink(out / f"{role}.parquet") for role in staged}
        reports = {
            "ratings": _clean_role(
                "ratings",
                shapes,
                staged["ratings"],
                rating_flags,
                out,
                params,
                files,
                engine,
                sinks["ratings"],
            ),
            "users": _clean_role(
                "users", shapes, staged["users"], user_flags, out, params, files, engine, sinks["users"]
            ),
        }
        if feedback_raw is not None:
            feedback, added_ids = _feedback(connection, feedback_raw, feedback_file.name, staged["ratings"])
            if added_ids:
                sinks["users"].write(new_readers(added_ids, sinks["users"].template))
                reports["users"].notes["readers_added_from_feedback"] = len(added_ids)
            sinks["ratings"].write(INTERIM_RATINGS.validate(feedback.clean))
            reports["ratings"].notes["rows_added_from_feedback"] = len(feedback.clean)
            reports["feedback"] = feedback.report
            with _closing(ParquetSink(out / "rejected" / "feedback.parquet")) as rejected:
                rejected.write(REJECTED.validate(feedback.rejected))
        for sink in sinks.values():
            sink.close()
    return reports


def ingest_files(
    files: dict[str, Path],
    feedback_file: Path | None,
    out: Path,
    params: IngestParams,
    engine: EngineParams,
    added_books_file: Path | None = None,
) -> dict:
    """Write ratings/users/books.parquet and rejected/<role>.parquet into `out`; the ingest report. The
    live feedback (`feedback_file`) joins the ratings and the books added since the dump
    (`added_books_file`) the books, each under the dump's rules, with its own report (lineage).

    With two cores or more, the books go through a second process while this one takes the readers
    and their ratings (each with half the engine's memory): the two share no row."""
    parallel = len(os.sched_getaffinity(0)) > 1
    if parallel:
        engine = engine.model_copy(update={"memory_limit_gib": engine.memory_limit_gib / 2})
    with tempfile.TemporaryDirectory(prefix=".ingest.", dir=out.parent) as scratch_name:
        scratch = Path(scratch_name)
        if not parallel:
            reports = _readers_job(files, feedback_file, scratch, out, params, engine)
            books = _books_job(files, scratch, out, params, engine, added_books_file)
        else:
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                books_future = pool.submit(_books_job, files, scratch, out, params, engine, added_books_file)
                reports = _readers_job(files, feedback_file, scratch, out, params, engine)
                books = books_future.result()
    ordered = {role: reports[role] for role in ("ratings", "users")} | books
    ordered |= {"feedback": reports["feedback"]} if "feedback" in reports else {}
    return {role: report.as_dict() for role, report in ordered.items()}


@contextlib.contextmanager
def _closing(sink: ParquetSink) -> Iterator[ParquetSink]:
    yield sink
    sink.close()
