"""Split every raw table (parsed by `pipeline.data.parsing`) into clean typed rows and rejected rows.

Rows that parse but cannot be used are returned with a reason, never dropped. What a chunk of a
larger file cannot decide alone (duplicates, readers in the users file) comes in as flags.
"""

from __future__ import annotations

import html
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import ftfy
import numpy as np
import pandas as pd

from pipeline.config import IngestParams
from pipeline.data.locations import split_location
from pipeline.data.parsing import IngestError
from pipeline.schemas import INTERIM_BOOKS, INTERIM_RATINGS, INTERIM_USERS, ISBN_PATTERN

# ---------------------------------------------------------------------------------------------------
# Cleaning (pure)


@dataclass
class TableReport:
    file: str
    rows_read: int
    rows_written: int = 0
    rejected_by_reason: dict[str, int] = field(default_factory=dict)
    values_set_missing: dict[str, int] = field(default_factory=dict)
    notes: dict[str, int] = field(default_factory=dict)

    @property
    def rows_rejected(self) -> int:
        return sum(self.rejected_by_reason.values())

    def add(self, other: TableReport) -> None:
        """Count `other` (the report of a later chunk of the same file) into this one."""
        self.rows_read += other.rows_read
        self.rows_written += other.rows_written
        for mine, theirs in (
            (self.rejected_by_reason, other.rejected_by_reason),
            (self.values_set_missing, other.values_set_missing),
            (self.notes, other.notes),
        ):
            for key, count in theirs.items():
                mine[key] = mine.get(key, 0) + count

    def as_dict(self) -> dict:
        return {
            "file": self.file,
            "rows_read": self.rows_read,
            "rows_written": self.rows_written,
            "rows_rejected": self.rows_rejected,
            "rejected_by_reason": dict(sorted(self.rejected_by_reason.items())),
            "values_set_missing": dict(sorted(self.values_set_missing.items())),
            "notes": dict(sorted(self.notes.items())),
        }


@dataclass
class CleanTable:
    clean: pd.DataFrame
    rejected: pd.DataFrame
    report: TableReport


def _quarantine(
    raw: pd.DataFrame, rules: list[tuple[str, pd.Series]], file: str
) -> tuple[pd.Series, pd.DataFrame, TableReport]:
    """Apply (reason, bad-row mask) rules in order; a row is rejected for the first rule it breaks."""
    report = TableReport(file=file, rows_read=len(raw))
    reason = pd.Series(pd.NA, index=raw.index, dtype="string")
    for name, bad in rules:
        newly = bad.fillna(False).astype(bool) & reason.isna()
        if newly.any():
            reason[newly] = name
            report.rejected_by_reason[name] = int(newly.sum())
    keep = reason.isna()
    rejected = raw.loc[~keep].copy()
    rejected.insert(0, "reason", reason[~keep].astype(str))
    rejected = rejected[["row", "line", "reason", *[c for c in raw.columns if c not in ("row", "line")]]]
    return keep, rejected.reset_index(drop=True), report


def normalise_isbn(values: pd.Series) -> pd.Series:
    return values.str.strip().str.upper()


def rating_keys(raw: pd.DataFrame, user_id_pattern: str = r"\d+") -> pd.DataFrame:
    """Per raw rating row: the reader, the normalised ISBN, and whether the row passes every rule
    that looks at the row alone (the pair's duplicates are found among such rows only)."""
    user_id = raw["User-ID"].str.strip()
    isbn = normalise_isbn(raw["ISBN"])
    rating = pd.to_numeric(raw["Book-Rating"].str.strip(), errors="coerce")
    valid = user_id.str.fullmatch(user_id_pattern) & (isbn != "") & rating.between(0, 10) & (rating % 1 == 0)
    return pd.DataFrame({"user_id": user_id, "isbn": isbn, "rating": rating, "valid": valid.fillna(False)})


def clean_ratings(
    raw: pd.DataFrame,
    known_user_ids: Collection[str] | pd.Series | None,
    file: str = "ratings",
    user_id_pattern: str = r"\d+",
    *,
    known: pd.Series | np.ndarray | None = None,
    duplicate: pd.Series | np.ndarray | None = None,
) -> CleanTable:
    """`raw` rows cleaned. Whole in memory, pass `known_user_ids`; one chunk of a larger file, pass
    the rules that need every row, found by the data engine: `known` (the reader is in the users
    file) and `duplicate` (an earlier valid row has the same pair), aligned with `raw`."""
    keys = rating_keys(raw, user_id_pattern)
    user_id, isbn, rating = keys["user_id"], keys["isbn"], keys["rating"]
    if known is None:
        known = user_id.isin(known_user_ids)
    if duplicate is None:
        duplicate = pd.Series(False, index=raw.index)
        duplicate[keys["valid"]] = keys[["user_id", "isbn"]][keys["valid"]].duplicated(keep="first")
    keep, rejected, report = _quarantine(
        raw,
        [
            (
                "user_id_not_a_number" if user_id_pattern == r"\d+" else "user_id_invalid",
                ~user_id.str.fullmatch(user_id_pattern),
            ),
            ("isbn_empty", isbn == ""),
            ("rating_not_an_integer_0_to_10", ~(rating.between(0, 10) & (rating % 1 == 0))),
            ("user_not_in_users_file", ~_aligned(known, raw)),
            ("duplicate_user_isbn_pair", _aligned(duplicate, raw)),
        ],
        file,
    )
    clean = pd.DataFrame(
        {"user_id": user_id[keep], "isbn": isbn[keep], "rating": rating[keep].astype("int8")}
    ).reset_index(drop=True)
    report.rows_written = len(clean)
    report.notes["isbn_not_isbn10_or_isbn13"] = int((~clean["isbn"].str.fullmatch(ISBN_PATTERN)).sum())
    report.notes["implicit_rows"] = int((clean["rating"] == 0).sum())
    report.notes["explicit_rows"] = int((clean["rating"] > 0).sum())
    return CleanTable(INTERIM_RATINGS.validate(clean), rejected, report)


def _aligned(flags: pd.Series | np.ndarray, raw: pd.DataFrame) -> pd.Series:
    return pd.Series(np.asarray(flags, dtype=bool), index=raw.index)


def user_keys(raw: pd.DataFrame) -> pd.DataFrame:
    """Per raw user row: the stripped id and whether it is a Book-Crossing id."""
    user_id = raw["User-ID"].str.strip()
    return pd.DataFrame({"user_id": user_id, "valid": user_id.str.fullmatch(r"\d+").fillna(False)})


def book_keys(raw: pd.DataFrame) -> pd.DataFrame:
    """Per raw book row: the normalised ISBN."""
    return pd.DataFrame({"isbn": normalise_isbn(raw["ISBN"])})


def clean_users(
    raw: pd.DataFrame,
    params: IngestParams,
    file: str = "users",
    *,
    duplicate: pd.Series | np.ndarray | None = None,
) -> CleanTable:
    """`raw` rows cleaned; for one chunk of a larger file, `duplicate` (an earlier row has the same
    id) comes from the data engine."""
    keys = user_keys(raw)
    user_id = keys["user_id"]
    keep, rejected, report = _quarantine(
        raw,
        [
            ("user_id_not_a_number", ~keys["valid"]),
            (
                "duplicate_user_id",
                user_id.duplicated(keep="first") if duplicate is None else _aligned(duplicate, raw),
            ),
        ],
        file,
    )
    age_text = raw.loc[keep, "Age"].str.strip()
    age_missing = age_text.str.upper().isin(["NULL", "", "NAN", "NA"])
    age = pd.to_numeric(age_text.where(~age_missing), errors="coerce")
    not_a_number = age.isna() & ~age_missing
    out_of_range = age.notna() & ~age.between(params.min_age, params.max_age)
    age = age.where(~out_of_range).round()
    report.values_set_missing["age_not_a_number"] = int(not_a_number.sum())
    report.values_set_missing[f"age_outside_{params.min_age}_{params.max_age}"] = int(out_of_range.sum())
    report.notes["age_given_as_null"] = int(age_missing.sum())
    location, report.notes["mojibake_repaired"] = repair_mojibake(raw.loc[keep, "Location"])
    places = split_location(location)
    report.notes["country_unknown"] = int(places["country"].isna().sum())
    clean = pd.DataFrame(
        {
            "user_id": user_id[keep],
            "age": age.astype("Int16"),
            "city": places["city"],
            "region": places["region"],
            "country": places["country"],
        }
    ).reset_index(drop=True)
    report.rows_written = len(clean)
    return CleanTable(INTERIM_USERS.validate(clean), rejected, report)


# Two latin-1 letters that are really one UTF-8 character (the dump mixes encodings within a file).
_MOJIBAKE_CANDIDATE = re.compile("[\u00c2-\u00f4][\u0080-\u00bf?]")


def _repair_one(text: str) -> str:
    # Double-encoded text lost a 0x83 byte to "?" on its way into the dump: put it back, then decode.
    repaired = ftfy.fix_encoding(text.replace("\u00c3?\u00c2", "\u00c3\u0083\u00c2"))
    return text if ("\ufffd" in repaired or "\u00c3" in repaired) else repaired


def repair_mojibake(values: pd.Series) -> tuple[pd.Series, int]:
    """UTF-8 stored as latin-1 ("CafÃ©") decoded back ("Café"); text that cannot be repaired whole is kept."""
    candidates = values.str.contains(_MOJIBAKE_CANDIDATE, na=False)
    repaired = values.copy()
    repaired[candidates] = values[candidates].map(_repair_one)
    return repaired, int((repaired[candidates] != values[candidates]).sum())


def _unescape_text(values: pd.Series) -> pd.Series:
    text = values.map(html.unescape, na_action="ignore").str.replace(r"\s+", " ", regex=True).str.strip()
    return text.where(text != "")


def clean_books(
    raw: pd.DataFrame,
    params: IngestParams,
    file: str = "books",
    *,
    duplicate: pd.Series | np.ndarray | None = None,
) -> CleanTable:
    """`raw` rows cleaned; for one chunk of a larger file, `duplicate` (an earlier row has the same
    non-empty ISBN) comes from the data engine."""
    isbn = book_keys(raw)["isbn"]
    if duplicate is None:
        duplicate = isbn.duplicated(keep="first") & (isbn != "")
    keep, rejected, report = _quarantine(
        raw,
        [
            ("isbn_empty", isbn == ""),
            ("duplicate_isbn_after_upper_casing", _aligned(duplicate, raw)),
        ],
        file,
    )
    kept = raw.loc[keep]
    year = pd.to_numeric(kept["Year-Of-Publication"].str.strip(), errors="coerce")
    year_not_a_number = year.isna()
    year_zero = year == 0
    year_future = year > params.max_publication_year
    year = year.where(~(year_zero | year_future))
    report.values_set_missing["year_not_a_number"] = int(year_not_a_number.sum())
    report.values_set_missing["year_zero"] = int(year_zero.sum())
    report.values_set_missing[f"year_after_{params.max_publication_year}"] = int(year_future.sum())
    entity = re.compile(r"&(?:[a-zA-Z]+|#\d+|#x[0-9a-fA-F]+);")
    text_columns = {"title": "Book-Title", "author": "Book-Author", "publisher": "Publisher"}
    report.notes["html_entities_unescaped"] = int(
        sum(kept[c].str.contains(entity, regex=True).sum() for c in text_columns.values())
    )
    repaired = {}
    report.notes["mojibake_repaired"] = 0
    for column, source in text_columns.items():
        repaired[column], count = repair_mojibake(_unescape_text(kept[source]))
        report.notes["mojibake_repaired"] += count
    clean = pd.DataFrame(
        {
            "isbn": isbn[keep],
            **{column: repaired[column] for column in ("title", "author")},
            "year": year.astype("Int16"),
            "publisher": repaired["publisher"],
            "image_url_s": kept["Image-URL-S"].str.strip().replace("", pd.NA),
            "image_url_m": kept["Image-URL-M"].str.strip().replace("", pd.NA),
            "image_url_l": kept["Image-URL-L"].str.strip().replace("", pd.NA),
        }
    ).reset_index(drop=True)
    report.notes["isbn_not_isbn10_or_isbn13"] = int((~clean["isbn"].str.fullmatch(ISBN_PATTERN)).sum())
    report.rows_written = len(clean)
    return CleanTable(INTERIM_BOOKS.validate(clean), rejected, report)


@dataclass
class IngestResult:
    ratings: CleanTable
    users: CleanTable
    books: CleanTable
    feedback: CleanTable | None = None
    added_books: CleanTable | None = None

    def tables(self) -> dict[str, CleanTable]:
        found = {"ratings": self.ratings, "users": self.users, "books": self.books}
        found |= {"feedback": self.feedback} if self.feedback is not None else {}
        return found | ({"added_books": self.added_books} if self.added_books is not None else {})

    def report(self) -> dict:
        return {role: table.report.as_dict() for role, table in self.tables().items()}


# Readers of the live service may have ids that Book-Crossing never issued.
FEEDBACK_USER_ID = r"[\w.-]+"


def clean_feedback(
    feedback_raw: pd.DataFrame, file: str, known_ids: Collection[str], in_book_crossing: pd.MultiIndex
) -> tuple[CleanTable, list[str]]:
    """The live-feedback rows cleaned, and the ids of the new readers they bring.

    `known_ids` holds (at least) the feedback's readers that the users file has; `in_book_crossing`
    (at least) its (user_id, isbn) pairs that Book-Crossing rated already: such a pair stays as
    Book-Crossing recorded it and the feedback row is rejected with its reason. New readers have
    unknown age and location."""
    ids = feedback_raw["User-ID"].str.strip()
    known = set(known_ids)
    new_ids = sorted({i for i in ids.dropna() if i not in known and re.fullmatch(FEEDBACK_USER_ID, i)})
    feedback = clean_ratings(feedback_raw, pd.Series([*known, *new_ids]), file, FEEDBACK_USER_ID)
    already = pd.MultiIndex.from_frame(feedback.clean[["user_id", "isbn"]]).isin(in_book_crossing)
    if already.any():
        moved = feedback.clean[already]
        keys = ids + "\x00" + normalise_isbn(feedback_raw["ISBN"])
        extra = feedback_raw[keys.isin(moved["user_id"] + "\x00" + moved["isbn"])].copy()
        extra.insert(0, "reason", "already_in_book_crossing")
        feedback.rejected = pd.concat(
            [feedback.rejected, extra[feedback.rejected.columns]], ignore_index=True
        )
        feedback.report.rejected_by_reason["already_in_book_crossing"] = int(already.sum())
        feedback.clean = feedback.clean[~already].reset_index(drop=True)
        feedback.report.rows_written = len(feedback.clean)
    return feedback, sorted(set(feedback.clean["user_id"]) - known)


def new_readers(ids: list[str], users: pd.DataFrame) -> pd.DataFrame:
    """Rows for readers known only from feedback, typed like `users` (age and location unknown)."""
    return INTERIM_USERS.validate(
        pd.DataFrame({"user_id": ids}).reindex(columns=users.columns).astype(users.dtypes.to_dict())
    )


def merge_feedback(
    ratings: CleanTable, users: CleanTable, feedback_raw: pd.DataFrame, file: str
) -> CleanTable:
    """Add the live-feedback interactions to `ratings` (and their new readers to `users`), in place."""
    in_book_crossing = pd.MultiIndex.from_frame(ratings.clean[["user_id", "isbn"]])
    feedback, added_ids = clean_feedback(feedback_raw, file, users.clean["user_id"], in_book_crossing)
    if added_ids:
        added = new_readers(added_ids, users.clean)
        users.clean = INTERIM_USERS.validate(pd.concat([users.clean, added], ignore_index=True))
        users.report.notes["readers_added_from_feedback"] = len(added_ids)
    ratings.clean = INTERIM_RATINGS.validate(pd.concat([ratings.clean, feedback.clean], ignore_index=True))
    ratings.report.notes["rows_added_from_feedback"] = len(feedback.clean)
    return feedback


BOOK_FIELDS = {"isbn": "ISBN", "title": "Book-Title", "year": "Year-Of-Publication"}


def check_added_books(raw: pd.DataFrame, params: IngestParams, file: str) -> pd.DataFrame:
    """Books to add to the serving catalog (raw rows in the dump's books format), cleaned by the dump's
    rules (`clean_books`). Stricter than a dump, since a person is adding them: a row the dump's
    rules would reject or alter (no ISBN, an ISBN given twice, a year that is not a plausible year),
    an ISBN that is neither ISBN-10 nor ISBN-13, or a book without a title raises an `IngestError`
    naming the file, line and field; nothing is returned for a file with any bad row."""
    if len(raw) == 0:
        raise IngestError(file, "the file has a header and no rows")
    isbn = book_keys(raw)["isbn"]
    year_text = raw["Year-Of-Publication"].str.strip()
    year = pd.to_numeric(year_text, errors="coerce")
    problems = [
        ("isbn", isbn == "", "no ISBN"),
        ("isbn", ~isbn.str.fullmatch(ISBN_PATTERN), "not an ISBN-10 or ISBN-13"),
        ("isbn", isbn.duplicated(keep="first"), "the same ISBN is given twice"),
        ("title", _unescape_text(raw["Book-Title"]).isna(), "no title"),
        (
            "year",
            (year_text != "") & ~(year.between(1, params.max_publication_year) & (year % 1 == 0)),
            f"not a year between 1 and {params.max_publication_year}",
        ),
    ]
    for column, bad, message in problems:
        for position in np.flatnonzero(bad.fillna(True).to_numpy()):
            row = raw.iloc[int(position)]
            found = row[BOOK_FIELDS[column]]
            raise IngestError(file, f"{message} (found {found!r})", line=int(row["line"]), field=BOOK_FIELDS[column])
    return clean_books(raw, params, file).clean


def clean_added_books(raw: pd.DataFrame, params: IngestParams, file: str, in_dump: pd.Index) -> CleanTable:
    """The books added to the serving catalog since the dump (the feedback export's books file), cleaned
    by the dump's rules; a book the dump lists already stays as the dump has it, and its added row is
    rejected with that reason."""
    added = clean_books(raw, params, file)
    already = added.clean["isbn"].isin(in_dump).to_numpy()
    if already.any():
        keys = book_keys(raw)["isbn"]
        extra = raw[keys.isin(added.clean["isbn"][already])].copy()
        extra.insert(0, "reason", "already_in_book_crossing")
        added.rejected = pd.concat([added.rejected, extra[added.rejected.columns]], ignore_index=True)
        added.report.rejected_by_reason["already_in_book_crossing"] = int(already.sum())
        added.clean = added.clean[~already].reset_index(drop=True)
        added.report.rows_written = len(added.clean)
    return added


def merge_added_books(books: CleanTable, added_raw: pd.DataFrame, params: IngestParams, file: str) -> CleanTable:
    """Add the books added since the dump to `books`, in place; their own cleaned table (lineage)."""
    added = clean_added_books(added_raw, params, file, pd.Index(books.clean["isbn"]))
    books.clean = INTERIM_BOOKS.validate(pd.concat([books.clean, added.clean], ignore_index=True))
    books.report.notes["rows_added_from_store"] = len(added.clean)
    return added


def ingest_tables(
    raw: Mapping[str, pd.DataFrame], files: Mapping[str, str], params: IngestParams
) -> IngestResult:
    for role in ("ratings", "users", "books"):  # the live feedback export may be empty; these may not
        if len(raw[role]) == 0:
            raise IngestError(files[role], "the file has a header and no rows")
    users = clean_users(raw["users"], params, files["users"])
    books = clean_books(raw["books"], params, files["books"])
    ratings = clean_ratings(raw["ratings"], users.clean["user_id"], files["ratings"])
    feedback = added = None
    if raw.get("feedback") is not None:
        feedback = merge_feedback(ratings, users, raw["feedback"], files["feedback"])
    if raw.get("added_books") is not None:
        added = merge_added_books(books, raw["added_books"], params, files["added_books"])
    return IngestResult(ratings=ratings, users=users, books=books, feedback=feedback, added_books=added)
