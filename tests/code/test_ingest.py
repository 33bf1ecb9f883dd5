"""Parsing and cleaning of the raw files: every quirk of the dump, on files the tests write themselves."""

from __future__ import annotations

import gzip
from pathlib import Path

import pandas as pd
import pytest

from pipeline.config import IngestParams
from pipeline.data.ingest import (
    IngestError,
    clean_books,
    clean_ratings,
    clean_users,
)
from pipeline.data.locations import split_location
from pipeline.storage.rawdata import read_raw_csv

PARAMS = IngestParams(min_age=5, max_age=100, max_publication_year=2006)
BOOKS_HEADER = '"ISBN";"Book-Title";"Book-Author";"Year-Of-Publication";"Publisher";"Image-URL-S";"Image-URL-M";"Image-URL-L"'


def write(path: Path, lines: list[str], encoding: str = "latin-1", newline: str = "\r\n") -> Path:
    path.write_bytes((newline.join(lines) + newline).encode(encoding))
    return path


def test_books_escaped_quotes_html_entities_latin1_and_years(tmp_path):
    path = write(
        tmp_path / "BX-Books.csv",
        [
            BOOKS_HEADER,
            '"0735201994";"Peterman Rides Again: \\"J. Peterman\\" &amp; the Catalog";"John Peterman";"2000";"Prentice Hall";"s";"m";"l"',
            '"034545104x";"Caf\xe9 &lt;Noir&gt;";"  Ana  Ruiz ";"0";"Ed. &quot;Sol&quot;";"s";"m";"l"',
            '"034545104X";"Duplicate after upper-casing";"X";"1999";"P";"s";"m";"l"',
            '" 0002005018 ";"Clara Callan";"";"2030";"";"";"";""',
            '"0000000001";"Erz\xc3?\xc2\xa4hlungen, Caf\xc3\xa9";"G\xc3\xb6del";"1999";"Gro\xc3?\xc2?e";"s";"m";"l"',
        ],
    )
    raw = read_raw_csv(path, "books")
    assert list(raw["row"]) == [1, 2, 3, 4, 5]
    assert list(raw["line"]) == [2, 3, 4, 5, 6]
    table = clean_books(raw, PARAMS, "BX-Books.csv")
    clean = table.clean
    assert list(clean["isbn"]) == ["0735201994", "034545104X", "0002005018", "0000000001"]
    # UTF-8 inside the latin-1 file is repaired, even when doubly encoded; what cannot be is left alone.
    assert clean.loc[3, ["title", "author"]].tolist() == ["Erzählungen, Café", "Gödel"]
    assert clean.loc[3, "publisher"] == "Gro\xc3?\xc2?e"
    assert clean.loc[0, "title"] == 'Peterman Rides Again: "J. Peterman" & the Catalog'
    assert clean.loc[1, "title"] == "Café <Noir>"
    assert clean.loc[1, "author"] == "Ana Ruiz"
    assert clean.loc[1, "publisher"] == 'Ed. "Sol"'
    assert clean["year"].tolist()[0] == 2000
    assert pd.isna(clean.loc[1, "year"]) and pd.isna(clean.loc[2, "year"])  # 0 and 2030 become missing
    assert pd.isna(clean.loc[2, "author"]) and pd.isna(clean.loc[2, "image_url_s"])
    assert table.rejected[["row", "line", "reason"]].to_dict("records") == [
        {"row": 3, "line": 4, "reason": "duplicate_isbn_after_upper_casing"}
    ]
    assert table.report.values_set_missing == {"year_after_2006": 1, "year_not_a_number": 0, "year_zero": 1}
    assert table.report.rows_read == table.report.rows_written + table.report.rows_rejected == 5


def test_users_crlf_inside_location_null_and_implausible_ages(tmp_path):
    path = write(
        tmp_path / "BX-Users.csv",
        [
            '"User-ID";"Location";"Age"',
            '"1";"nyc, new york, usa";NULL',
            '"275081";"cernusco s\r\n, milan, italy";"0"',
            '"3";"\xe5rhus, \\"n/a\\", denmark";"244"',
            '"4";"porto, , portugal";"35"',
            '"5";"lisbon";"4"',
            '"6";"a, b, c, u.s.a.";"100"',
            '"6";"duplicate id";"30"',
            '"x7";"bad id, , usa";"30"',
        ],
    )
    raw = read_raw_csv(path, "users")
    assert list(raw["line"]) == [2, 3, 5, 6, 7, 8, 9, 10]  # the CRLF inside row 2 takes a line
    table = clean_users(raw, PARAMS, "BX-Users.csv")
    clean = table.clean.set_index("user_id")
    assert clean.loc["275081", ["city", "region", "country"]].tolist() == ["cernusco s", "milan", "italy"]
    assert pd.isna(clean.loc["3", "region"]) and clean.loc["3", "country"] == "denmark"
    assert clean.loc["3", "city"] == "århus"
    assert pd.isna(clean.loc["4", "region"])
    assert pd.isna(clean.loc["5", "country"]) and clean.loc["5", "city"] == "lisbon"
    assert clean.loc["6", ["region", "country"]].tolist() == ["b, c", "usa"]
    ages = clean["age"]
    assert pd.isna(ages["1"]) and pd.isna(ages["275081"]) and pd.isna(ages["3"]) and pd.isna(ages["5"])
    assert ages["4"] == 35 and ages["6"] == 100
    assert sorted(table.rejected["reason"]) == ["duplicate_user_id", "user_id_not_a_number"]
    assert table.report.values_set_missing["age_outside_5_100"] == 3
    assert table.report.rows_read == 8 and table.report.rows_written == 6


def test_ratings_normalise_isbn_and_quarantine_bad_rows(tmp_path):
    path = write(
        tmp_path / "BX-Book-Ratings.csv",
        [
            '"User-ID";"ISBN";"Book-Rating"',
            '"1";" 034545104x ";"0"',
            '"1";"034545104X";"7"',
            '"2";"\\"0210000010";"8"',
            '"2";"";"5"',
            '"3";"0002005018";"11"',
            '"99";"0002005018";"5"',
            '"2";"0002005018";"seven"',
        ],
    )
    raw = read_raw_csv(path, "ratings")
    table = clean_ratings(raw, pd.Series(["1", "2", "3"]), "BX-Book-Ratings.csv")
    assert table.clean.to_dict("records") == [
        {"user_id": "1", "isbn": "034545104X", "rating": 0},
        {"user_id": "2", "isbn": '"0210000010', "rating": 8},
    ]
    assert dict(zip(table.rejected["row"], table.rejected["reason"], strict=True)) == {
        2: "duplicate_user_isbn_pair",
        4: "isbn_empty",
        5: "rating_not_an_integer_0_to_10",
        6: "user_not_in_users_file",
        7: "rating_not_an_integer_0_to_10",
    }
    assert table.report.notes["isbn_not_isbn10_or_isbn13"] == 1


def test_gzip_and_utf8_kaggle_variant(tmp_path):
    gz = tmp_path / "BX-Users.csv.gz"
    gz.write_bytes(
        gzip.compress('"User-ID";"Location";"Age"\r\n"1";"k\xf6ln, nrw, germany";"30"\r\n'.encode("latin-1"))
    )
    assert read_raw_csv(gz, "users").loc[0, "Location"] == "köln, nrw, germany"
    kaggle = write(
        tmp_path / "Users.csv",
        ["User-ID,Location,Age", '1,"köln, nrw, germany",30.0', '2,"x, y, z",'],
        encoding="utf-8",
        newline="\n",
    )
    users = clean_users(read_raw_csv(kaggle, "users"), PARAMS).clean
    assert users.loc[0, "city"] == "köln" and users.loc[0, "age"] == 30 and pd.isna(users.loc[1, "age"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the file is empty"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not a text CSV: NUL byte"),
        ('"User-ID";"Location";"Age"\r\n'.encode("utf-16"), "not a text CSV"),
        (b'"User-ID"\t"Location"\t"Age"\r\n"1"\t"x"\t"2"\r\n', "wrong separator"),
        (b'"User-ID";"Location"\r\n"1";"x"\r\n', "field 'Age': missing column"),
        (b'"Name";"Location";"Age"\r\n', "header must start with 'User-ID'"),
        (
            b'"User-ID";"Location";"Age"\r\n"1";"x";"2"\r\n"2";"y',
            "line 3: the file ends in the middle of a line",
        ),
        (b'"User-ID";"Location";"Age"\r\n"1";"x";"2"\r\n"2";"y\r\n', "line 3: malformed CSV"),
        (
            b'"User-ID";"Location";"Age"\r\n"1";"x";"2"\r\n"2";"y"\r\n"3";"z";"4"\r\n',
            "line 3, field 'Location': expected 3 fields",
        ),
        (
            b'"User-ID";"Location";"Age"\r\n"1";"x";"2";"9"\r\n',
            "line 2: expected 3 fields separated by ';', found 4",
        ),
    ],
    ids=[
        "empty",
        "binary",
        "utf16",
        "tabs",
        "missing-column",
        "no-header",
        "truncated",
        "open-quote",
        "short-row",
        "long-row",
    ],
)
def test_structural_faults_name_file_line_and_field(tmp_path, content, message):
    path = tmp_path / "BX-Users.csv"
    path.write_bytes(content)
    with pytest.raises(IngestError) as caught:
        read_raw_csv(path, "users")
    assert str(caught.value).startswith("BX-Users.csv")
    assert message in str(caught.value)


def test_split_location_keeps_extra_commas_in_region_and_maps_country_aliases():
    places = split_location(pd.Series(["a, b, c, united states", "London, , England", "x, y, N/A", "", None]))
    assert places.to_dict("records")[0] == {"city": "a", "region": "b, c", "country": "usa"}
    assert places.loc[1, "country"] == "united kingdom" and pd.isna(places.loc[1, "region"])
    assert places["country"].isna().tolist() == [False, False, True, True, True]


def test_live_feedback_joins_ratings_and_adds_new_readers(tmp_path):
    import pandas as pd

    from pipeline.data.ingest import ingest_tables
    from pipeline.storage.feedback import write_export

    users = write(tmp_path / "BX-Users.csv", ['"User-ID";"Location";"Age"', '"1";"a, b, usa";"30"'])
    books = write(
        tmp_path / "BX-Books.csv",
        [
            BOOKS_HEADER,
            '"0000000001";"T";"A";"2000";"P";"s";"m";"l"',
            '"0000000002";"U";"B";"2001";"P";"s";"m";"l"',
        ],
    )
    ratings = write(
        tmp_path / "BX-Book-Ratings.csv", ['"User-ID";"ISBN";"Book-Rating"', '"1";"0000000001";"0"']
    )
    feedback = pd.DataFrame(
        {
            "User-ID": ["1", "1", "alice", "bad id!"],
            "ISBN": ["0000000001", "0000000002", "0000000002", "1"],
            "Book-Rating": [7, 9, 0, 5],
        }
    )
    exported = read_raw_csv(write_export(feedback, tmp_path / "feedback"), "ratings")
    raw = {
        "users": read_raw_csv(users, "users"),
        "books": read_raw_csv(books, "books"),
        "ratings": read_raw_csv(ratings, "ratings"),
        "feedback": exported,
    }
    result = ingest_tables(raw, {role: role for role in raw}, PARAMS)
    assert result.ratings.clean.to_dict("records") == [
        {"user_id": "1", "isbn": "0000000001", "rating": 0},  # Book-Crossing's own record is kept
        {"user_id": "1", "isbn": "0000000002", "rating": 9},
        {"user_id": "alice", "isbn": "0000000002", "rating": 0},
    ]
    assert result.users.clean["user_id"].tolist() == ["1", "alice"]
    assert pd.isna(result.users.clean.loc[1, "age"])
    assert sorted(result.feedback.rejected["reason"]) == ["already_in_book_crossing", "user_id_invalid"]
    report = result.report()["feedback"]
    assert report["rows_read"] == report["rows_written"] + report["rows_rejected"] == 4


def test_a_ratings_file_with_a_header_and_no_rows_stops_ingest_naming_the_file(tmp_path):
    from pipeline.data.ingest import ingest_tables

    users = write(tmp_path / "BX-Users.csv", ['"User-ID";"Location";"Age"', '"1";"a, b, c";"30"'])
    books = write(tmp_path / "BX-Books.csv", [BOOKS_HEADER, '"0000000001";"T";"A";"2000";"P";"s";"m";"l"'])
    ratings = write(tmp_path / "BX-Book-Ratings.csv", ['"User-ID";"ISBN";"Book-Rating"'])
    raw = {"users": read_raw_csv(users, "users"), "books": read_raw_csv(books, "books")}
    raw["ratings"] = read_raw_csv(ratings, "ratings")
    files = {"users": "BX-Users.csv", "books": "BX-Books.csv", "ratings": "BX-Book-Ratings.csv"}
    with pytest.raises(IngestError, match=r"^BX-Book-Ratings\.csv: the file has a header and no rows"):
        ingest_tables(raw, files, PARAMS)
