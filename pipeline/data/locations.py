"""Reader locations: "city, region, country" as Book-Crossing writes them, split and normalised (pure).

Used by ingest for the dump and by serving for a new reader's location, so both read a place the same way.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

# Place names that mean "not given".
_UNKNOWN_PLACES = frozenset(
    {
        "",
        "n/a",
        "na",
        "n.a.",
        "n.a",
        "none",
        "null",
        "nil",
        "-",
        "--",
        "?",
        "??",
        ".",
        "x",
        "xx",
        "xxx",
        "unknown",
        "not applicable",
        "no",
        "`",
        "\\n/a\\",
        "everywhere",
        "somewhere",
        "here",
        "far away",
    }
)

# Spellings of the most frequent countries that name the same place.
COUNTRY_ALIASES: Mapping[str, str] = {
    "us": "usa",
    "u.s.a.": "usa",
    "u.s.a": "usa",
    "u.s.": "usa",
    "united states": "usa",
    "united states of america": "usa",
    "america": "usa",
    "united state": "usa",
    "us of a": "usa",
    "uk": "united kingdom",
    "u.k.": "united kingdom",
    "england": "united kingdom",
    "scotland": "united kingdom",
    "wales": "united kingdom",
    "great britain": "united kingdom",
    "northern ireland": "united kingdom",
    "deutschland": "germany",
    "españa": "spain",
    "espaã±a": "spain",
    "italia": "italy",
    "la france": "france",
    "nederland": "netherlands",
    "the netherlands": "netherlands",
    "holland": "netherlands",
    "catalunya": "spain",
    "catalonia": "spain",
    "méxico": "mexico",
    "brasil": "brazil",
    "schweiz": "switzerland",
    "suisse": "switzerland",
    "österreich": "austria",
    "republic of ireland": "ireland",
    "eire": "ireland",
    "p.r.china": "china",
    "people's republic of china": "china",
    "the philippines": "philippines",
    "phillipines": "philippines",
    "new zeland": "new zealand",
    "nz": "new zealand",
}


def _normalise_place(values: pd.Series) -> pd.Series:
    text = values.str.replace(r"\s+", " ", regex=True).str.strip().str.strip("\"'.;:!/ ").str.lower()
    return text.where(~text.isin(_UNKNOWN_PLACES) & text.notna())


def split_location(location: pd.Series) -> pd.DataFrame:
    """'city, region, country' -> three normalised columns; extra commas stay in the region."""
    parts = location.fillna("").str.split(",")
    city = parts.str[0]
    country = parts.map(lambda p: p[-1] if len(p) > 1 else "")
    region = parts.map(lambda p: ",".join(p[1:-1]) if len(p) > 2 else "")
    country = _normalise_place(country)
    return pd.DataFrame(
        {
            "city": _normalise_place(city),
            "region": _normalise_place(region),
            "country": country.replace(dict(COUNTRY_ALIASES)),
        }
    )
