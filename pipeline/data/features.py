"""Side features: vocabularies fitted on the processed tables, and the one encoder used for training,
evaluation and serving (so a new reader at serving time is encoded exactly like a training user)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline.config import FeatureParams
from pipeline.data.catalog import normalise_name

UNKNOWN, OTHER = "<unknown>", "<other>"
USER_FEATURES = ("age_bucket", "country", "region")
ITEM_FEATURES = ("author", "publisher", "decade")
SOURCES = {
    "age_bucket": "users.age (ages outside the plausible range are unknown)",
    "country": "users.country, the last field of Location, normalised",
    "region": "users.country + users.region, the middle field(s) of Location",
    "author": "items.author, case- and space-normalised",
    "publisher": "items.publisher, case- and space-normalised",
    "decade": "items.year // 10",
}


def _region_key(country: pd.Series, region: pd.Series) -> pd.Series:
    return (country.astype("string") + "/" + region.astype("string")).where(country.notna() & region.notna())


def _frequent(values: pd.Series, min_count: int, top: int | None = None) -> list[str]:
    counts = values.dropna().value_counts()
    counts = counts[counts >= min_count]
    # Ties broken by name so that the vocabulary does not depend on row order.
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return [name for name, _ in ordered[:top]]


@dataclass(frozen=True)
class FeatureVocabulary:
    age_bucket_edges: tuple[int, ...]
    values: dict[str, tuple[str, ...]]  # feature -> labels; index 0 unknown, 1 other (except age, decade)

    @classmethod
    def fit(cls, users: pd.DataFrame, items: pd.DataFrame, params: FeatureParams) -> FeatureVocabulary:
        edges = tuple(params.age_bucket_edges)
        age_labels = [UNKNOWN, f"<{edges[0]}"]
        age_labels += [f"{lo}-{hi - 1}" for lo, hi in zip(edges, edges[1:], strict=False)]
        age_labels.append(f"{edges[-1]}+")
        years = pd.to_numeric(items["year"], errors="coerce").dropna()
        decades = sorted({int(y) // 10 * 10 for y in years})
        values = {
            "age_bucket": tuple(age_labels),
            "country": (UNKNOWN, OTHER, *_frequent(users["country"], 1, params.top_countries)),
            "region": (
                UNKNOWN,
                OTHER,
                *_frequent(_region_key(users["country"], users["region"]), params.min_region_users),
            ),
            "author": (UNKNOWN, OTHER, *_frequent(normalise_name(items["author"]), params.min_author_items)),
            "publisher": (
                UNKNOWN,
                OTHER,
                *_frequent(normalise_name(items["publisher"]), params.min_publisher_items),
            ),
            "decade": (UNKNOWN, *(f"{d}s" for d in decades)),
        }
        return cls(edges, values)

    def cardinality(self, feature: str) -> int:
        return len(self.values[feature])

    def _lookup(self, feature: str, labels: pd.Series, has_other: bool = True) -> np.ndarray:
        index = {label: i for i, label in enumerate(self.values[feature])}
        fallback = index[OTHER] if has_other else index[UNKNOWN]
        codes = labels.map(lambda v: index[UNKNOWN] if pd.isna(v) else index.get(v, fallback))
        return codes.to_numpy(dtype=np.int32)

    def encode_users(self, users: pd.DataFrame) -> pd.DataFrame:
        """Columns age, country, region (as ingest writes them) -> integer feature ids."""
        age = pd.to_numeric(users["age"], errors="coerce").to_numpy(dtype=float)
        bucket = np.where(
            np.isnan(age), 0, np.searchsorted(self.age_bucket_edges, np.nan_to_num(age), side="right") + 1
        )
        return pd.DataFrame(
            {
                "age_bucket": bucket.astype(np.int32),
                "country": self._lookup("country", users["country"]),
                "region": self._lookup("region", _region_key(users["country"], users["region"])),
            },
            index=users.index,
        )

    def encode_items(self, items: pd.DataFrame) -> pd.DataFrame:
        year = pd.to_numeric(items["year"], errors="coerce")
        decade = (year // 10 * 10).map(lambda d: pd.NA if pd.isna(d) else f"{int(d)}s")
        return pd.DataFrame(
            {
                "author": self._lookup("author", normalise_name(items["author"])),
                "publisher": self._lookup("publisher", normalise_name(items["publisher"])),
                "decade": self._lookup("decade", decade, has_other=False),
            },
            index=items.index,
        )

    def to_json(self) -> dict:
        return {
            "age_bucket_edges": list(self.age_bucket_edges),
            "values": {k: list(v) for k, v in self.values.items()},
        }

    @classmethod
    def from_json(cls, data: dict) -> FeatureVocabulary:
        return cls(tuple(data["age_bucket_edges"]), {k: tuple(v) for k, v in data["values"].items()})

    def spec(self) -> dict:
        """feature_spec.json: each feature, its entity, cardinality and source, and a hash of the whole set."""
        features = [
            {
                "name": name,
                "entity": "user" if name in USER_FEATURES else "item",
                "cardinality": self.cardinality(name),
                "source": SOURCES[name],
            }
            for name in (*USER_FEATURES, *ITEM_FEATURES)
        ]
        digest = hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()[:12]
        return {"features": features, "hash": digest}


def build_features(
    users: pd.DataFrame, items: pd.DataFrame, params: FeatureParams
) -> tuple[FeatureVocabulary, pd.DataFrame, pd.DataFrame]:
    vocabulary = FeatureVocabulary.fit(users, items, params)
    user_features = pd.concat([users[["user_idx"]], vocabulary.encode_users(users)], axis=1)
    item_features = pd.concat([items[["item_idx"]], vocabulary.encode_items(items)], axis=1)
    user_features["user_idx"] = user_features["user_idx"].astype("int32")
    item_features["item_idx"] = item_features["item_idx"].astype("int32")
    return vocabulary, user_features, item_features
