"""Book cards as HTML: the cover, with a generated placeholder beneath it, and escaped text.

Book-Crossing's cover URLs point at an old image host; many no longer resolve. Each card stacks two
CSS background layers, the real cover over a generated SVG card (title and author on a colour
taken from the ISBN), so a cover that fails to load simply leaves the placeholder visible. No
script is needed, and every title goes through html.escape: it is shown as text, never as HTML.
"""

from __future__ import annotations

import base64
import hashlib
import html
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass
from xml.sax.saxutils import escape as xml_escape

import pandas as pd


@dataclass(frozen=True)
class Card:
    isbn: str
    title: str
    author: str
    year: str = ""
    publisher: str = ""
    cover_url: str = ""
    note: str = ""  # score, reason ...


def _text(value) -> str:
    return (
        "" if value is None or (isinstance(value, float) and pd.isna(value)) or value is pd.NA else str(value)
    )


def placeholder_svg(title: str, author: str, isbn: str) -> str:
    hue = int(hashlib.sha256(isbn.encode()).hexdigest()[:4], 16) % 360
    lines = textwrap.wrap(title, 14)[:6] or ["(untitled)"]
    title_svg = "".join(
        f'<text x="60" y="{40 + 16 * i}" font-size="12" font-weight="bold" text-anchor="middle" fill="#fff">'
        f"{xml_escape(line)}</text>"
        for i, line in enumerate(lines)
    )
    author_svg = "".join(
        f'<text x="60" y="{150 + 14 * i}" font-size="11" text-anchor="middle" fill="#f5f5f5">{xml_escape(line)}</text>'
        for i, line in enumerate(textwrap.wrap(author, 17)[:2])
    )
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" width="120" height="180" viewBox="0 0 120 180">'
        f'<rect width="120" height="180" rx="6" fill="hsl({hue},45%,38%)"/>'
        f'<rect x="8" y="8" width="104" height="164" rx="4" fill="none" stroke="hsl({hue},45%,70%)"/>'
        f"{title_svg}{author_svg}</svg>"
    )


def placeholder_uri(title: str, author: str, isbn: str) -> str:
    svg = placeholder_svg(title, author, isbn)
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")


def card_html(card: Card) -> str:
    placeholder = placeholder_uri(card.title, card.author, card.isbn)
    layers = f"url('{placeholder}')"
    if card.cover_url.startswith(("http://", "https://")):
        # A quote or parenthesis in a URL cannot break out of the CSS url(''): percent-encode them.
        safe = card.cover_url.replace("'", "%27").replace('"', "%22").replace("(", "%28").replace(")", "%29")
        layers = f"url('{safe}'), {layers}"
    details = " · ".join(html.escape(x) for x in (card.year, card.publisher) if x)
    return (
        '<div class="bookrec-card" data-isbn="' + html.escape(card.isbn) + '">'
        f'<div class="bookrec-cover" role="img" aria-label="cover of {html.escape(card.title)}" '
        f'style="background-image: {layers};"></div>'
        f'<div class="bookrec-title">{html.escape(card.title)}</div>'
        f'<div class="bookrec-author">{html.escape(card.author)}</div>'
        f'<div class="bookrec-details">{details}</div>'
        + (f'<div class="bookrec-note">{html.escape(card.note)}</div>' if card.note else "")
        + "</div>"
    )


STYLE = """
<style>
.bookrec-grid { display: flex; flex-wrap: wrap; gap: 14px; }
.bookrec-card { width: 132px; font-family: sans-serif; }
.bookrec-cover { width: 120px; height: 180px; border-radius: 6px; background-size: cover, cover;
  background-position: center; background-repeat: no-repeat; box-shadow: 0 1px 4px rgba(0,0,0,.3); }
.bookrec-title { font-weight: 600; font-size: 13px; margin-top: 6px; line-height: 1.25; }
.bookrec-author { font-size: 12px; color: #555; }
.bookrec-details, .bookrec-note { font-size: 11px; color: #777; }
.bookrec-note { color: #2b6cb0; }
</style>
"""


def grid_html(cards: Iterable[Card]) -> str:
    return STYLE + '<div class="bookrec-grid">' + "".join(card_html(c) for c in cards) + "</div>"


def cards_from(books: pd.DataFrame, notes: list[str] | None = None) -> list[Card]:
    notes = notes or [""] * len(books)
    cards = []
    for (_, book), note in zip(books.iterrows(), notes, strict=True):
        year = _text(book.get("year"))
        cards.append(
            Card(
                isbn=_text(book.get("isbn")),
                title=_text(book.get("title")) or "(untitled)",
                author=_text(book.get("author")),
                year=year,
                publisher=_text(book.get("publisher")),
                cover_url=_text(book.get("image_url_m")),
                note=note,
            )
        )
    return cards
