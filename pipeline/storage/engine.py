"""DuckDB, the data stages' columnar engine: the steps that need every row at once, over files.

Ingest and preprocess stream their tables through the pure core (`pipeline.data`) in chunks of
`engine.chunk_rows` rows; what a chunk cannot decide alone (the first of duplicate rows, a rating's
reader in the users file, the k-core, the id maps, the joins to the catalog) DuckDB decides on
Parquet files, spilling to disk beyond `engine.memory_limit_gib`. So peak memory is one chunk plus
the engine's limit, whatever the size of the data, and the outputs are those of the in-memory
protocol row for row (tests/data/test_engine.py).

Why DuckDB rather than Polars: windowed "first row of each key" and the k-core's repeated
group-and-filter run out of core with spilling in DuckDB's stable releases, which Polars' streaming
engine does not guarantee for every operator; and it reads and writes the Parquet files in place.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.config import EngineParams


@contextlib.contextmanager
def connect(scratch: Path, settings: EngineParams) -> Iterator[duckdb.DuckDBPyConnection]:
    """A DuckDB database in `scratch` (so its tables spill there), closed and removed afterwards."""
    threads = settings.threads or len(os.sched_getaffinity(0))
    folder = Path(tempfile.mkdtemp(prefix=".engine.", dir=scratch))
    connection = duckdb.connect(
        str(folder / "engine.duckdb"),
        config={
            "memory_limit": f"{int(settings.memory_limit_gib * 1024)}MB",
            "threads": threads,
            "temp_directory": str(folder / "spill"),
            # True (the default) is what makes an ORDER BY hold when the result is streamed.
            "preserve_insertion_order": True,
        },
    )
    try:
        yield connection
    finally:
        connection.close()
        shutil.rmtree(folder, ignore_errors=True)


def sql_path(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def row_flags(connection: duckdb.DuckDBPyConnection, query: str, n_rows: int) -> np.ndarray:
    """A boolean per row (1-based `row`) of a file: True for the rows `query` returns (one `row` column)."""
    flags = np.zeros(n_rows, dtype=bool)
    reader = connection.sql(query).to_arrow_reader(1 << 20)
    for batch in reader:
        flags[batch.column(0).to_numpy() - 1] = True
    return flags


class ParquetSink:
    """Frames appended one after another into one Parquet file, typed like the first frame.

    Reading the file back with `pipeline.io.read_parquet` gives the frames concatenated, with the
    dtypes `to_parquet` of the whole frame would have given."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.writer: pq.ParquetWriter | None = None
        self.rows = 0
        self.template: pd.DataFrame | None = None

    def write(self, frame: pd.DataFrame) -> None:
        table = pa.Table.from_pandas(frame, preserve_index=False)
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.path, table.schema)
            self.template = frame.iloc[:0]
        elif not table.schema.equals(self.writer.schema, check_metadata=False):
            table = table.cast(self.writer.schema)
        else:
            table = table.replace_schema_metadata(self.writer.schema.metadata)
        self.writer.write_table(table)
        self.rows += len(frame)

    def close(self, empty: pd.DataFrame | None = None) -> None:
        """Finish the file; with no frame written, write `empty` (typed, no rows) instead."""
        if self.writer is None:
            if empty is None:
                raise ValueError(f"{self.path}: nothing was written and no empty frame was given")
            self.write(empty)
        self.writer.close()


def iter_parquet(path: Path, columns: list[str] | None, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """The rows of a Parquet file in order, `chunk_rows` at a time, as pandas frames."""
    source = pq.ParquetFile(path)
    for batch in source.iter_batches(batch_size=chunk_rows, columns=columns):
        yield pa.Table.from_batches([batch]).to_pandas()
