"""A small Book-Crossing look-alike with planted structure, written in the original dump's format.

Readers belong to taste groups decided by their country and age; each group reads mostly its own
shelf of books. So the right answer is known: a model should recommend a reader's own shelf, and a
reader's country and age alone should point at it. Every twelfth book is another edition of the
book before it ("... (Paperback)"), and each shelf's books come from six authors. The files carry the dump's quirks (latin-1,
backslash-escaped quotes, a CRLF inside a Location, NULL and implausible ages, HTML entities,
lower-case ISBN check digits, year 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

GROUPS = (  # (country, city, region, ages)
    ("usa", "portland", "oregon", (25, 34)),
    ("canada", "toronto", "ontario", (35, 44)),
    ("germany", "berlin", "berlin", (18, 24)),
    ("spain", "madrid", "madrid", (55, 64)),
)


@dataclass(frozen=True)
class SyntheticBX:
    folder: Path
    n_users: int
    n_books: int
    group_of_user: dict[str, int]  # raw User-ID -> group
    shelf_of_book: dict[str, int]  # ISBN (upper case) -> group
    editions: tuple[tuple[str, str], ...] = ()  # pairs of ISBNs that are editions of one work


def _isbn(i: int) -> str:
    base = f"{100000000 + i:09d}"
    return base + ("x" if i % 37 == 0 else str(i % 10))


def _quote(value: str) -> str:
    return '"' + value.replace('"', '\\"') + '"'


def write_synthetic_bx(
    folder: Path,
    n_users: int = 240,
    books_per_group: int = 60,
    seed: int = 7,
    reads_per_user: tuple[int, int] = (12, 30),
    own_shelf_share: float = 0.9,
) -> SyntheticBX:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    n_groups = len(GROUPS)
    n_books = books_per_group * n_groups
    shelf = np.repeat(np.arange(n_groups), books_per_group)

    editions: list[tuple[str, str]] = []
    book_lines = [
        '"ISBN";"Book-Title";"Book-Author";"Year-Of-Publication";"Publisher";'
        '"Image-URL-S";"Image-URL-M";"Image-URL-L"'
    ]
    for i in range(n_books):
        g = int(shelf[i])
        title = f"Tale {i} of the {GROUPS[g][0].title()} Shelf"
        if i == 1:
            title = 'The Word "Desire" &amp; Other Stories'
        if i == 2:
            title = "Caf\u00e9 Stories \u00e0 Paris"
        author = f"Author {g}-{i % 6}"
        if i % 12 == 11:  # another edition of the book before it, as the dump lists many
            title = f"Tale {i - 1} of the {GROUPS[g][0].title()} Shelf (Paperback)"
            author = f"Author {g}-{(i - 1) % 6}"
            editions.append((_isbn(i - 1).upper(), _isbn(i).upper()))
        year = "0" if i == 3 else str(1960 + (i * 7) % 45)
        publisher = "Penguin &amp; Sons" if i % 5 == 0 else f"Press {g}"
        isbn = _isbn(i)
        urls = [f"http://images.example.invalid/{isbn}.{size}.jpg" for size in ("S", "M", "L")]
        book_lines.append(";".join(_quote(v) for v in (isbn, title, author, year, publisher, *urls)))

    user_lines = ['"User-ID";"Location";"Age"']
    group_of_user: dict[str, int] = {}
    for u in range(n_users):
        user_id = str(1000 + u)
        g = u % n_groups
        group_of_user[user_id] = g
        country, city, region, (lo, hi) = GROUPS[g]
        location = f"{city}, {region}, {country}"
        if u == 5:
            location = f"{city} s\r\n, {region}, {country}"
        age = f'"{rng.integers(lo, hi + 1)}"'
        if u % 11 == 0:
            age = "NULL"
        if u == 7:
            age = '"0"'
        if u == 8:
            age = '"244"'
        user_lines.append(f"{_quote(user_id)};{_quote(location)};{age}")
    # Users with no ratings, as in the real file.
    for extra in range(20):
        user_lines.append(f'"{900000 + extra}";"nowhere, n/a, n/a";NULL')

    rating_lines = ['"User-ID";"ISBN";"Book-Rating"']
    popularity = 1.0 / np.arange(1, books_per_group + 1) ** 0.6
    popularity /= popularity.sum()
    for user_id, g in group_of_user.items():
        n_reads = int(rng.integers(*reads_per_user))
        n_own = int(round(n_reads * own_shelf_share))
        own = rng.choice(books_per_group, size=n_own, replace=False, p=popularity) + g * books_per_group
        others = rng.choice(np.flatnonzero(shelf != g), size=n_reads - n_own, replace=False)
        for i in np.concatenate([own, others]):
            rating = 0 if rng.random() < 0.6 else int(rng.integers(5, 11))
            if rng.random() < 0.03:
                rating = int(rng.integers(1, 5))
            isbn = _isbn(int(i))
            rating_lines.append(f"{_quote(user_id)};{_quote(isbn)};{_quote(str(rating))}")
    rating_lines.append(f'"1000";"{_isbn(10**6)}";"8"')  # a book not in the catalog

    for name, lines in (
        ("BX-Books.csv", book_lines),
        ("BX-Users.csv", user_lines),
        ("BX-Book-Ratings.csv", rating_lines),
    ):
        (folder / name).write_bytes(("\r\n".join(lines) + "\r\n").encode("latin-1"))
    return SyntheticBX(
        folder=folder,
        n_users=n_users,
        n_books=n_books,
        group_of_user=group_of_user,
        shelf_of_book={_isbn(i).upper(): int(shelf[i]) for i in range(n_books)},
        editions=tuple(editions),
    )
