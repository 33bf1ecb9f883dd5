"""`bookrec data synth`: read the real dump once, write a look-alike at N times its size.

The sampling is `pipeline/data/synth.py` (pure); this module reads the source files (a folder or zip
with the BX-*.csv files, plain or .gz, as `bookrec data fetch --source` accepts) and streams the
three CSVs in the dump's own format: latin-1, `;`-separated, every field quoted, quotes inside a
field escaped with a backslash, unquoted `NULL` ages, CRLF line ends. The output is written block by
block (one block of readers, or one copy's catalog, at a time) into a temporary folder that is
renamed into place at the end, so a failed run leaves nothing and memory stays at the profile's size
whatever the scale. `synth.json` beside the CSVs records how they were made.
"""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from pipeline.data.ingest import clean_ratings
from pipeline.data.parsing import decode_text, parse_raw_csv
from pipeline.data.synth import (
    Profile,
    SynthPlan,
    book_rows,
    fit_profile,
    rating_blocks,
    rating_rows,
    user_rows,
)
from pipeline.io import atomic_directory, write_json
from pipeline.schemas import RAW_COLUMNS
from pipeline.storage.rawdata import ORIGINAL_FILES, find_source_files

OUTPUT_NAMES = {role: name for role, (name, _) in ORIGINAL_FILES.items()}
DIALECT = {
    "delimiter": ";",
    "quoting": csv.QUOTE_ALL,
    "escapechar": "\\",
    "doublequote": False,
    "lineterminator": "\r\n",
}


def default_source(root: Path, raw_dir: Path) -> Path:
    """The workspace's raw data when it is the original dump (never a synthetic copy fetched
    earlier), else the shared copy beside the repository (`../shared/data/book-crossing`)."""
    manifest = raw_dir / "manifest.json"
    if manifest.is_file() and '"variant": "original"' in manifest.read_text():
        return raw_dir
    shared = root.parent / "shared" / "data" / "book-crossing"
    if shared.is_dir():
        return shared
    raise FileNotFoundError(
        f"no real Book-Crossing data to profile: {raw_dir} is not the original dump and {shared} is "
        "missing; run `bookrec data fetch` or pass --source"
    )


def read_source(source: Path) -> dict[str, pd.DataFrame]:
    """The three raw tables of `source`, parsed exactly as ingest parses them (strings)."""
    _, files = find_source_files(Path(source))
    raw = {}
    for file in files:
        with file.open() as handle:
            raw[file.role] = parse_raw_csv(decode_text(handle.read(), file.name), file.role, file.name)
    return raw


def load_profile(source: Path) -> Profile:
    raw = read_source(source)
    ratings = clean_ratings(raw["ratings"], raw["users"]["User-ID"].str.strip(), OUTPUT_NAMES["ratings"])
    return fit_profile(ratings.clean, raw["users"], raw["books"])


# ---------------------------------------------------------------------------------------------------
# Writing


def format_rows(frame: pd.DataFrame, header: bool = False) -> str:
    """Rows in the dump's quoting; ages of NULL are written bare, as the dump does."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, **DIALECT)
    if header:
        writer.writerow(frame.columns)
    # Plain object arrays: iterating pandas' Arrow-backed strings row by row is ten times slower.
    writer.writerows(zip(*(frame[column].to_numpy(object) for column in frame.columns), strict=True))
    text = buffer.getvalue()
    # Inside a field every quote is escaped, so `;"NULL"` + line end can only be a whole last field.
    return text.replace(';"NULL"\r\n', ";NULL\r\n") if "Age" in frame.columns else text


def write_table(path: Path, role: str, chunks: Iterable[pd.DataFrame]) -> int:
    """Stream `chunks` (frames with RAW_COLUMNS[role]) into one CSV; returns the rows written."""
    rows = 0
    with open(path, "w", encoding="latin-1", errors="replace", newline="") as out:
        out.write(format_rows(pd.DataFrame(columns=list(RAW_COLUMNS[role])), header=True))
        for chunk in chunks:
            out.write(format_rows(chunk[list(RAW_COLUMNS[role])]))
            rows += len(chunk)
    return rows


def _users(plan: SynthPlan) -> Iterable[pd.DataFrame]:
    for copy in range(plan.n_copies):
        yield from user_rows(plan, copy)


def _books(plan: SynthPlan) -> Iterable[pd.DataFrame]:
    for copy in range(plan.n_copies):
        yield book_rows(plan, copy)


def check_output(out: Path, force: bool) -> None:
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out}: exists and is not empty; pass --force to replace it")


def write_synthetic(plan: SynthPlan, out: Path, force: bool = False, source: str = "") -> dict:
    """Write the three CSVs of `plan` into `out` atomically; refuses a non-empty `out` unless `force`."""
    check_output(out, force)
    started = time.perf_counter()
    with atomic_directory(out) as staging:
        rows = {
            "users": write_table(staging / OUTPUT_NAMES["users"], "users", _users(plan)),
            "books": write_table(staging / OUTPUT_NAMES["books"], "books", _books(plan)),
            "ratings": write_table(
                staging / OUTPUT_NAMES["ratings"], "ratings", map(rating_rows, rating_blocks(plan))
            ),
        }
        summary = {
            "generator": "bookrec data synth",
            "source": source,
            "scale": plan.scale,
            "seed": plan.seed,
            "clusters": plan.clusters,
            "within_cluster": plan.within_cluster,
            "rows": rows,
        }
        write_json(summary, staging / "synth.json")
    return summary | {"seconds": round(time.perf_counter() - started, 1)}


def synthesise(source: Path, out: Path, scale: float, seed: int = 0, force: bool = False) -> dict:
    """Profile the real files in `source`, then write `scale` times as much look-alike data to `out`."""
    if not scale > 0:  # before the profile is read: a bad argument should fail at once
        raise ValueError(f"--scale must be a positive number, got {scale}")
    check_output(out, force)
    plan = SynthPlan(load_profile(source), scale=scale, seed=seed)
    return write_synthetic(plan, out, force=force, source=str(Path(source).resolve()))
