"""The preprocess stage over files of any size: the interim tables in, the protocol's tables out.

DuckDB filters the ratings to the catalog, splits positives from dislikes and peels the k-core
(group, filter, repeat until nothing changes) without holding the ratings in memory. The dense id
maps come from the pure core (`pipeline.data.preprocess`: the core's distinct ids are small next to
the ratings); the encoded interactions stream out of the engine in (user_idx, item_idx) order,
`chunk_rows` at a time, through the pure split (`pipeline.data.split`) into train, validation and
test. The result equals `build_interactions` + `split_interactions` on the same tables in memory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from pipeline import io
from pipeline.config import EngineParams, PreprocessParams
from pipeline.data.preprocess import id_tables, ordered_isbns, ordered_user_ids
from pipeline.data.protocol import PROTOCOL, positive_values
from pipeline.data.split import SPLIT_NAMES, assign_splits
from pipeline.schemas import INTERACTIONS, PROCESSED_ITEMS, PROCESSED_USERS
from pipeline.storage.engine import ParquetSink, connect, sql_path

ENCODED = (
    "SELECT u.user_idx, i.item_idx, CAST(t.rating AS TINYINT) AS rating, t.user_id, t.isbn FROM {table} t "
    "JOIN user_map u USING (user_id) JOIN item_map i USING (isbn) {where} ORDER BY u.user_idx, i.item_idx"
)


def _count(connection, query: str) -> int:
    return int(connection.execute(f"SELECT count(*) FROM ({query})").fetchone()[0])


def _k_core(connection, params: PreprocessParams) -> int:
    """Replace table `core` by its k-core; its size."""
    size = _count(connection, "SELECT * FROM core")
    while True:
        connection.execute(
            "CREATE TABLE next_core AS SELECT c.* FROM core c "
            f"SEMI JOIN (SELECT user_id FROM core GROUP BY user_id HAVING count(*) >= {params.user_core}) "
            "USING (user_id) "
            f"SEMI JOIN (SELECT isbn FROM core GROUP BY isbn HAVING count(*) >= {params.item_core}) "
            "USING (isbn)"
        )
        connection.execute("DROP TABLE core")
        connection.execute("ALTER TABLE next_core RENAME TO core")
        smaller = _count(connection, "SELECT * FROM core")
        if smaller == size:
            return size
        size = smaller


def _id_maps(connection) -> tuple[np.ndarray, np.ndarray]:
    user_ids = ordered_user_ids(connection.execute("SELECT DISTINCT user_id FROM core").df()["user_id"])
    isbns = ordered_isbns(connection.execute("SELECT DISTINCT isbn FROM core").df()["isbn"])
    for name, column, values in (("user_map", "user_id", user_ids), ("item_map", "isbn", isbns)):
        frame = {column: values, name.replace("_map", "_idx"): np.arange(len(values), dtype=np.int32)}
        connection.register(f"{name}_frame", pd.DataFrame(frame))
        connection.execute(f"CREATE TABLE {name} AS SELECT * FROM {name}_frame")
        connection.unregister(f"{name}_frame")
    return user_ids, isbns


def _write_splits(connection, out: Path, params: PreprocessParams, chunk_rows: int) -> dict[str, int]:
    sinks = {name: ParquetSink(out / f"{name}.parquet") for name in SPLIT_NAMES}
    reader = connection.sql(ENCODED.format(table="core", where="")).to_arrow_reader(chunk_rows)
    empty = None
    for batch in reader:
        frame = batch.to_pandas()
        labels = assign_splits(frame["user_id"], frame["isbn"], params)
        encoded = frame[["user_idx", "item_idx", "rating"]].astype({"user_idx": "int32", "item_idx": "int32"})
        empty = encoded.iloc[:0]
        for code, name in enumerate(SPLIT_NAMES):
            sinks[name].write(INTERACTIONS.validate(encoded[labels == code].reset_index(drop=True)))
    for sink in sinks.values():
        sink.close(empty)
    return {f"{name}_rows": sink.rows for name, sink in sinks.items()}


def _catalog_rows(path: Path, column: str, values: np.ndarray) -> pd.DataFrame:
    """The rows of an interim table whose `column` is one of `values`, typed as ingest wrote them."""
    return pq.read_table(path, filters=[(column, "in", values.tolist())]).to_pandas()


def preprocess_files(interim: Path, out: Path, params: PreprocessParams, engine: EngineParams) -> dict:
    """Write train/validation/test/dislikes/users/items.parquet and protocol_report.json into `out`."""
    ratings, books = sql_path(interim / "ratings.parquet"), sql_path(interim / "books.parquet")
    positive = ", ".join(str(v) for v in positive_values(params.min_explicit_rating))
    with connect(out, engine) as connection:
        counts = {"ratings_in": _count(connection, f"SELECT * FROM read_parquet({ratings})")}
        connection.execute(
            f"CREATE TABLE in_catalog AS SELECT user_id, isbn, rating FROM read_parquet({ratings}) "
            f"SEMI JOIN (SELECT isbn FROM read_parquet({books})) USING (isbn)"
        )
        counts["ratings_with_isbn_in_catalog"] = _count(connection, "SELECT * FROM in_catalog")
        connection.execute(f"CREATE TABLE core AS SELECT * FROM in_catalog WHERE rating IN ({positive})")
        counts["positives"] = _count(connection, "SELECT * FROM core")
        counts["dislikes"] = counts["ratings_with_isbn_in_catalog"] - counts["positives"]
        counts["interactions_after_k_core"] = _k_core(connection, params)
        user_ids, isbns = _id_maps(connection)
        counts["users"], counts["items"] = len(user_ids), len(isbns)
        counts |= _write_splits(connection, out, params, engine.chunk_rows)
        dislikes = connection.execute(
            ENCODED.format(table="in_catalog", where=f"WHERE t.rating NOT IN ({positive})")
        ).df()[["user_idx", "item_idx", "rating"]]
    dislikes = dislikes.astype({"user_idx": "int32", "item_idx": "int32", "rating": "int8"})
    io.write_parquet(INTERACTIONS.validate(dislikes), out / "dislikes.parquet")
    users, items = id_tables(
        user_ids,
        isbns,
        _catalog_rows(interim / "users.parquet", "user_id", user_ids),
        _catalog_rows(interim / "books.parquet", "isbn", isbns),
    )
    io.write_parquet(PROCESSED_USERS.validate(users), out / "users.parquet")
    io.write_parquet(PROCESSED_ITEMS.validate(items), out / "items.parquet")
    counts["protocol"] = PROTOCOL
    io.write_json(counts, out / "protocol_report.json")
    return counts
