"""Parse the raw Book-Crossing CSVs exactly (pure: text in, frames of strings out).

Structural faults (no header, a wrong separator, a missing column, a row with the wrong number of
fields, a truncated file, bytes that are not text) raise an `IngestError` naming the file, line and
field. A whole file in memory (`parse_raw_csv`) and a stream read in chunks (`iter_raw_frames`) go
through the same reader, so they raise the same errors and give the same rows.
"""

from __future__ import annotations

import csv
import io
import itertools
from collections.abc import Iterator
from typing import TextIO

import numpy as np
import pandas as pd

from pipeline.schemas import RAW_COLUMNS


class IngestError(ValueError):
    """A raw file cannot be parsed; says where."""

    def __init__(self, file: str, message: str, line: int | None = None, field: str | None = None):
        self.file, self.message, self.line, self.field = file, message, line, field
        where = file
        if line is not None:
            where += f", line {line}"
        if field is not None:
            where += f", field {field!r}"
        super().__init__(f"{where}: {message}")

    def __reduce__(self):  # so that the error crosses from a worker process intact
        return (IngestError, (self.file, self.message, self.line, self.field))


def decode_text(data: bytes, file: str) -> str:
    """UTF-8 when the bytes are valid UTF-8 (the Kaggle re-upload), else latin-1 (the original dump)."""
    if not data:
        raise IngestError(file, "the file is empty")
    if b"\x00" in data[:65536]:
        offset = data.index(b"\x00")
        raise IngestError(
            file, f"not a text CSV: NUL byte at byte offset {offset} (binary, or UTF-16/32 encoded?)"
        )
    try:
        return data.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def parse_raw_csv(text: str, role: str, file: str) -> pd.DataFrame:
    """All fields of a whole file held in memory, as strings, plus `row` and `line`."""
    frames = list(
        iter_raw_frames(io.StringIO(text, newline=""), role, file, text.count("\n"), text.endswith("\n"))
    )
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def iter_raw_frames(
    stream: TextIO,
    role: str,
    file: str,
    total_lines: int,
    ends_with_newline: bool,
    chunk_rows: int = 1 << 30,
) -> Iterator[pd.DataFrame]:
    """The records of `stream` (text, opened with newline="") in frames of at most `chunk_rows`:
    every field as a string, plus `row` (1-based record number) and `line` (its first line).

    `total_lines` (newlines in the file) and `ends_with_newline` name a truncated file before any
    frame is yielded; a header-only file yields one empty frame."""
    expected = RAW_COLUMNS[role]
    header_line = stream.readline()
    separator = _sniff_separator(header_line.split("\n", 1)[0].rstrip("\r"), expected, file)
    if not ends_with_newline:
        raise IngestError(file, "the file ends in the middle of a line (truncated?)", line=total_lines + 1)
    # The original dump escapes quotes inside fields with a backslash; the Kaggle copy doubles them.
    reader = csv.reader(
        itertools.chain([header_line], stream),
        delimiter=separator,
        escapechar="\\" if separator == ";" else None,
        strict=True,
    )
    rows: list[list[str]] = []
    lines: list[int] = []
    first_row, first_line, yielded = 1, 1, False
    try:
        header = next(reader)
        _check_header(header, expected, file)
        first_line = reader.line_num + 1
        for record in reader:
            if len(record) != len(expected):
                _raise_wrong_width(record, expected, separator, file, first_line, reader.line_num == total_lines)
            rows.append(record)
            lines.append(first_line)
            first_line = reader.line_num + 1
            if len(rows) == chunk_rows:
                yield _raw_frame(rows, lines, expected, first_row)
                first_row, rows, lines, yielded = first_row + len(rows), [], [], True
    except csv.Error as err:
        raise IngestError(
            file, f"malformed CSV ({err}); truncated or not a CSV file?", line=first_line
        ) from None
    if rows or not yielded:
        yield _raw_frame(rows, lines, expected, first_row)


def _raise_wrong_width(
    record: list[str], expected: tuple[str, ...], separator: str, file: str, line: int, at_end: bool
) -> None:
    if not record:
        raise IngestError(file, "blank line inside the data", line=line)
    raise IngestError(
        file,
        f"expected {len(expected)} fields separated by {separator!r}, found {len(record)}"
        + (" (truncated file?)" if at_end else ""),
        line=line,
        field=expected[min(len(record), len(expected)) - 1] if len(record) < len(expected) else None,
    )


def _raw_frame(rows: list[list[str]], lines: list[int], expected: tuple[str, ...], first_row: int) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(expected), dtype=str)
    frame["row"] = np.arange(first_row, first_row + len(frame), dtype=np.int64)
    frame["line"] = np.asarray(lines, dtype=np.int64)
    return frame


def _sniff_separator(header_line: str, expected: tuple[str, ...], file: str) -> str:
    for separator in (";", ","):
        names = [n.strip().strip('"') for n in header_line.split(separator)]
        if names[0].lower() == expected[0].lower() and len(names) > 1:
            return separator
    if header_line.strip().strip('"').lower().startswith(expected[0].lower()):
        raise IngestError(
            file, f"wrong separator: expected ';' (or ',') between {', '.join(expected)}", line=1
        )
    raise IngestError(
        file,
        f"header must start with {expected[0]!r} (columns {', '.join(expected)}); found {header_line[:80]!r}",
        line=1,
    )


def _check_header(header: list[str], expected: tuple[str, ...], file: str) -> None:
    names = [h.strip() for h in header]
    lowered = [n.lower() for n in names]
    for column in expected:
        if column.lower() not in lowered:
            raise IngestError(file, f"missing column (header has {', '.join(names)})", line=1, field=column)
    if lowered != [c.lower() for c in expected]:
        raise IngestError(
            file, f"columns must be {', '.join(expected)} in this order; found {', '.join(names)}", line=1
        )


