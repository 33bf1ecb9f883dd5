"""`bookrec data synth`: the look-alike parses like the dump, scales without sharing ids, is seeded,
streams, and (on the real dump, when present) reproduces its distributions."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.data.ingest import clean_ratings, ingest_tables
from pipeline.data.locations import split_location
from pipeline.data.synth import SynthPlan, fit_profile, rating_blocks
from pipeline.schemas import ISBN_PATTERN
from pipeline.storage.rawdata import fetch, locate_raw, read_raw_csv
from pipeline.storage.synth import load_profile, read_source, write_synthetic


def ingested(folder, tmp_path, repo_params):
    """The project's own fetch (--allow-modified) and ingest parsing of a generated folder."""
    raw_dir = tmp_path / "raw"
    fetch(raw_dir, tmp_path / "cache", source=folder, show_progress=False, allow_modified=True)
    files = locate_raw(raw_dir)
    raw = {role: read_raw_csv(path, role) for role, path in files.items()}
    return ingest_tables(raw, {role: path.name for role, path in files.items()}, repo_params.ingest)


@pytest.fixture(scope="module")
def small_profile(synthetic_bx):
    return load_profile(synthetic_bx.folder)


# ---------------------------------------------------------------------------------------------------
# Independent of the real data: the small look-alike of tests/synthetic.py as the profile


def test_output_passes_fetch_and_ingest_with_disjoint_ids(small_profile, tmp_path, repo_params):
    plan = SynthPlan(small_profile, scale=2.5, clusters=4)
    write_synthetic(plan, tmp_path / "out")
    result = ingested(tmp_path / "out", tmp_path, repo_params)
    report = result.report()
    assert all(table["rows_rejected"] == 0 for table in report.values()), report
    users, books, ratings = result.users.clean, result.books.clean, result.ratings.clean
    assert len(users) == round(2.5 * small_profile.n_users) and users["user_id"].is_unique
    assert len(books) == round(2.5 * len(small_profile.books)) and books["isbn"].is_unique
    assert (
        books["isbn"].str.fullmatch(ISBN_PATTERN).all() and ratings["isbn"].str.fullmatch(ISBN_PATTERN).all()
    )
    assert ratings["user_id"].isin(users["user_id"]).all()
    assert (
        0.9 < len(ratings) / (2.5 * small_profile.user_degree.sum()) < 1.1
    )  # the last copy is a random half
    # Copies after the first carry their own authors: an author's catalog does not grow with the scale.
    n_books = len(small_profile.books)
    assert (
        (~books["author"].str.contains(r" \[\d\]$")).sum()
        == books["author"].str.endswith(" [2]").sum()
        == n_books
    )


def test_dump_quirks_are_written_as_the_dump_has_them(small_profile, tmp_path):
    write_synthetic(SynthPlan(small_profile, scale=1), tmp_path / "out")
    users = (tmp_path / "out" / "BX-Users.csv").read_bytes()
    books = (tmp_path / "out" / "BX-Books.csv").read_bytes()
    assert users.startswith(b'"User-ID";"Location";"Age"\r\n')
    assert b";NULL\r\n" in users and b'"NULL"' not in users  # NULL ages are bare
    assert b" s\r\n, " in users  # the Location with a CRLF inside survives, quoted
    assert b'The Word \\"Desire\\" &amp; Other Stories' in books  # backslash-escaped quotes, raw entities
    assert "Caf\u00e9".encode("latin-1") in books  # latin-1


def test_same_seed_same_bytes_other_seed_other_bytes(small_profile, tmp_path):
    def files(seed, name):
        write_synthetic(SynthPlan(small_profile, scale=1.5, seed=seed), tmp_path / name)
        return {p.name: p.read_bytes() for p in sorted((tmp_path / name).iterdir())}

    first, again, other = files(0, "a"), files(0, "b"), files(1, "c")
    assert first == again
    assert first["BX-Book-Ratings.csv"] != other["BX-Book-Ratings.csv"]
    assert first["BX-Users.csv"] != other["BX-Users.csv"]  # the fractional copy is another subset


def test_ratings_are_drawn_block_by_block(small_profile):
    plan = SynthPlan(small_profile, scale=3, users_per_block=50)
    blocks = rating_blocks(plan)
    assert iter(blocks) is blocks  # a generator: nothing is drawn before it is asked for
    sizes = [len(np.unique(block.user_ids)) for block in blocks]
    assert len(sizes) == 3 * -(-small_profile.n_users // 50) and max(sizes) <= 50


def test_memory_does_not_grow_with_the_scale(small_profile, tmp_path):
    def peak(scale):
        tracemalloc.start()
        write_synthetic(SynthPlan(small_profile, scale=scale, users_per_block=100), tmp_path / f"x{scale}")
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak, (tmp_path / f"x{scale}" / "BX-Book-Ratings.csv").stat().st_size

    (small, small_bytes), (large, large_bytes) = peak(2), peak(12)
    assert large_bytes > 5 * small_bytes
    assert large < 1.5 * small, (small, large)


def test_bad_arguments_exit_1_with_a_message(synthetic_bx, tmp_path):
    runner = CliRunner()
    base = ["data", "synth", "--source", str(synthetic_bx.folder), "--out", str(tmp_path / "out")]
    done = runner.invoke(app, [*base, "--scale", "0"])
    assert done.exit_code == 1 and "--scale must be a positive number" in done.output
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    done = runner.invoke(app, [*base, "--scale", "1"])
    assert done.exit_code == 1 and "not empty; pass --force" in done.output
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    done = runner.invoke(app, [*base, "--scale", "1", "--force"])
    assert done.exit_code == 0, done.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "BX-Book-Ratings.csv",
        "BX-Books.csv",
        "BX-Users.csv",
        "synth.json",
    ]


# ---------------------------------------------------------------------------------------------------
# On the real dump: the distributions at 4% of its size


@pytest.fixture(scope="module")
def real(shared_bx):
    raw = read_source(shared_bx)
    ratings = clean_ratings(raw["ratings"], raw["users"]["User-ID"].str.strip()).clean
    return fit_profile(ratings, raw["users"], raw["books"]), ratings, raw["users"]


def test_distributions_match_the_real_dump(real, tmp_path, repo_params):
    profile, real_ratings, real_users = real
    write_synthetic(SynthPlan(profile, scale=0.04, seed=3), tmp_path / "out")
    result = ingested(tmp_path / "out", tmp_path, repo_params)
    ratings, users = result.ratings.clean, result.users.clean
    assert all(table["rows_rejected"] == 0 for table in result.report().values())

    quantiles = [0.5, 0.9, 0.99]
    for key in ("user_id", "isbn"):
        want = np.quantile(real_ratings.groupby(key).size(), quantiles)
        got = np.quantile(ratings.groupby(key).size(), quantiles)
        assert np.all(np.abs(got - want) <= np.maximum(1, 0.35 * want)), (key, want, got)
    want_values = real_ratings["rating"].value_counts(normalize=True).sort_index()
    got_values = ratings["rating"].value_counts(normalize=True).reindex(want_values.index, fill_value=0)
    assert abs(got_values[0] - want_values[0]) < 0.03  # the implicit share
    assert (got_values - want_values).abs().sum() / 2 < 0.04  # total variation of the values
    real_null_age = (profile.user_age == "NULL").mean()
    got_null_age = (read_source(tmp_path / "out")["users"]["Age"] == "NULL").mean()
    assert abs(got_null_age - real_null_age) < 0.02
    real_countries = split_location(real_users["Location"])["country"].value_counts(normalize=True).head(5)
    got_countries = users["country"].value_counts(normalize=True).reindex(real_countries.index, fill_value=0)
    assert (got_countries - real_countries).abs().max() < 0.02, (real_countries, got_countries)
    real_in_catalog = profile.item_degree[profile.item_book >= 0].sum() / profile.item_degree.sum()
    assert abs(ratings["isbn"].isin(result.books.clean["isbn"]).mean() - real_in_catalog) < 0.03
