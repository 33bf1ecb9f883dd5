"""Integration on the real Book-Crossing dump in ../shared: counts, conservation of rows, protocol figures."""

from __future__ import annotations

import pytest

from pipeline import io
from pipeline.schemas import INTERACTIONS, ITEM_FEATURES, PROCESSED_ITEMS, PROCESSED_USERS, USER_FEATURES

pytestmark = pytest.mark.real_data


def test_ingest_reads_every_row_and_loses_none(real_workspace):
    report = io.read_json(real_workspace.interim / "ingest_report.json")
    assert report["ratings"]["rows_read"] == 1_149_780
    assert report["users"]["rows_read"] == 278_858
    assert report["books"]["rows_read"] == 271_379
    for role, table in report.items():
        rejected = io.read_parquet(real_workspace.interim / "rejected" / f"{role}.parquet")
        written = io.read_parquet(real_workspace.interim / f"{role}.parquet")
        assert table["rows_read"] == table["rows_written"] + table["rows_rejected"]
        assert len(written) == table["rows_written"] and len(rejected) == table["rows_rejected"]
    # Only the 315 ISBNs that collide once upper-cased are unusable; no user is lost to a missing age.
    assert report["books"]["rejected_by_reason"] == {"duplicate_isbn_after_upper_casing": 315}
    assert report["users"]["rows_written"] == 278_858
    assert report["users"]["values_set_missing"]["age_outside_5_100"] == 1_248


def test_protocol_counts_and_the_stable_split(real_workspace):
    counts = io.read_json(real_workspace.processed / "protocol_report.json")
    assert counts["protocol"] == "bx-implicit-v2"
    assert counts["interactions_after_k_core"] == 553_847
    assert counts["users"] == 14_868
    assert counts["items"] == 35_469
    # the keyed hash of (User-ID, ISBN) with seed 42: 20% test, 10% of the rest validation, in expectation
    assert (counts["train_rows"], counts["validation_rows"], counts["test_rows"]) == (
        399_191,
        44_124,
        110_532,
    )


def test_processed_tables_honour_their_contracts(real_workspace):
    splits = {
        name: io.read_parquet(real_workspace.processed / f"{name}.parquet")
        for name in ("train", "validation", "test")
    }
    for frame in splits.values():
        INTERACTIONS.validate(frame)
    users = PROCESSED_USERS.validate(io.read_parquet(real_workspace.processed / "users.parquet"))
    items = PROCESSED_ITEMS.validate(io.read_parquet(real_workspace.processed / "items.parquet"))
    assert users["user_idx"].tolist() == list(range(len(users)))
    assert items["item_idx"].tolist() == list(range(len(items)))
    # per-reader fractions hold in expectation: almost every test row's reader has training rows
    assert (~splits["test"]["user_idx"].isin(splits["train"]["user_idx"])).mean() < 0.001
    USER_FEATURES.validate(io.read_parquet(real_workspace.features / "user_features.parquet"))
    ITEM_FEATURES.validate(io.read_parquet(real_workspace.features / "item_features.parquet"))
    # Titles decoded from latin-1, unescaped, and UTF-8 mojibake repaired: what is left is rare.
    assert not items["title"].str.contains("&amp;", regex=False, na=False).any()
    assert items["title"].str.contains("Ã", regex=False, na=False).mean() < 0.002


def test_the_engine_writes_exactly_the_in_memory_protocols_tables(real_workspace, repo_params, tmp_path):
    """The stages ran on DuckDB in chunks (real_workspace); the in-memory reference on the same dump
    must give the same rows, rejected rows, reports and splits."""
    import pandas as pd

    from pipeline.data.ingest import ingest_tables
    from pipeline.storage.feedback import FEEDBACK_FILE
    from pipeline.storage.rawdata import locate_raw, read_raw_csv
    from tests.data.test_engine import reference_protocol

    files = locate_raw(real_workspace.raw)
    if (real_workspace.feedback / FEEDBACK_FILE).is_file():
        files["feedback"] = real_workspace.feedback / FEEDBACK_FILE
    raw = {
        role: read_raw_csv(path, "ratings" if role == "feedback" else role) for role, path in files.items()
    }
    result = ingest_tables(raw, {role: path.name for role, path in files.items()}, repo_params.ingest)
    assert io.read_json(real_workspace.interim / "ingest_report.json") == result.report()

    def same(path, frame):
        reference = io.read_parquet(io.write_parquet(frame, tmp_path / "reference.parquet"))
        pd.testing.assert_frame_equal(io.read_parquet(path), reference)

    for role, table in result.tables().items():
        if role != "feedback":
            same(real_workspace.interim / f"{role}.parquet", table.clean)
        same(real_workspace.interim / "rejected" / f"{role}.parquet", table.rejected)
    for name, frame in reference_protocol(result, repo_params.preprocess)[1].items():
        same(real_workspace.processed / f"{name}.parquet", frame)
