"""A hand-made catalog and model whose right answers are known, for the tests of books added between
trainings: three authors, each a direction of the GMF space; a book's vector is its author's direction,
a reader's is the mean of their books'. So a reader of one author prefers that author's books, and a
book with only side features (its author) is already close to its author's readers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from pipeline.config import FeatureParams
from pipeline.data.catalog import with_catalog_columns
from pipeline.data.features import build_features
from pipeline.evaluation.baselines import ItemKNNRecommender
from pipeline.model.ncf import NCF, NCFConfig
from pipeline.model.neighbourhood import Neighbourhood
from pipeline.serving.service import BookRecommender
from pipeline.storage.bundle import SPLIT_CODES, Bundle

AUTHORS = ("Jane Austen", "James Joyce", "Frank Herbert")
TITLES = {
    "Jane Austen": ("Emma", "Persuasion", "Mansfield Park", "Sense and Sensibility"),
    "James Joyce": ("Ulysses", "Dubliners", "Finnegans Wake", "Exiles"),
    "Frank Herbert": ("Dune", "Dune Messiah", "Children of Dune", "The Dosadi Experiment"),
}
GMF, MLP = 6, 2


def items_table() -> pd.DataFrame:
    rows = [
        (author, title, 1990 + 3 * i, f"Press {i % 2}")
        for author in AUTHORS
        for i, title in enumerate(TITLES[author])
    ]
    frame = pd.DataFrame(rows, columns=["author", "title", "year", "publisher"])
    frame.insert(0, "isbn", [f"00000000{i:02d}" for i in range(len(frame))])
    frame.insert(0, "item_idx", np.arange(len(frame), dtype=np.int32))
    for size in ("s", "m", "l"):
        frame[f"image_url_{size}"] = pd.NA
    return with_catalog_columns(frame.astype({"year": "Int16"}))


def users_table(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_idx": np.arange(n, dtype=np.int32),
            "user_id": [str(100 + u) for u in range(n)],
            "age": pd.array([30] * n, dtype="Int16"),
            "city": "x",
            "region": "y",
            "country": "z",
        }
    )


def reads() -> pd.DataFrame:
    """Readers 0-5 read Austen, 6-11 Joyce, 12-17 Herbert: three books each, one per reader left out."""
    rows = []
    for reader in range(18):
        author = reader // 6
        for position in range(4):
            if position != reader % 4:
                rows.append((reader, author * 4 + position))
    return pd.DataFrame(rows, columns=["user_idx", "item_idx"])


def handmade_bundle() -> Bundle:
    items, users = items_table(), users_table(18)
    params = FeatureParams(
        age_bucket_edges=(18, 25),
        top_countries=5,
        min_region_users=1,
        min_author_items=1,
        min_publisher_items=1,
    )
    vocabulary, user_features, item_features = build_features(users, items, params)
    config = NCFConfig(
        n_users=len(users),
        n_items=len(items),
        user_features={"age_bucket": 4, "country": vocabulary.cardinality("country"), "region": 3},
        item_features={name: vocabulary.cardinality(name) for name in ("author", "publisher", "decade")},
        gmf_dim=GMF,
        mlp_dim=MLP,
        mlp_layers=(2,),
        use_user_id=False,
        history_alpha=1.0,
    )
    model = NCF(config)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        model.output.weight[0, :GMF] = 1.0
        authors = vocabulary.values["author"]
        for a, name in enumerate(AUTHORS):
            column = authors.index(name.lower())
            model.item_gmf.features["author"].weight[column, a] = 1.0
        # each book a little of its own on top of its author (dimensions 3..5), and readers' history
        # embeddings the books' vectors: a reader is the mean of their books
        rng = np.random.default_rng(0)
        model.item_gmf.ids.weight[: len(items), 3:] = torch.from_numpy(
            rng.normal(0, 0.1, (len(items), 3))
        ).float()
        for item, author in enumerate(items["author"]):
            model.user_gmf.history.weight[item, AUTHORS.index(author)] = 1.0
            model.user_gmf.history.weight[item, 3:] = model.item_gmf.ids.weight[item, 3:]
    model.eval()
    interactions = reads().assign(split=np.int8(SPLIT_CODES["train"]))
    train = sp.csr_matrix(
        (np.ones(len(interactions), np.float32), (interactions["user_idx"], interactions["item_idx"])),
        shape=(len(users), len(items)),
    )
    similarity = ItemKNNRecommender("bm25", neighbours=5, k1=1.2, b=0.75).fit(train).similarity
    user_ids = user_features.drop(columns="user_idx").add_suffix("_id")
    item_ids = item_features.drop(columns="item_idx").add_suffix("_id")
    return Bundle(
        model=model,
        users=pd.concat([users, user_ids], axis=1),
        items=pd.concat([items, item_ids], axis=1),
        interactions=interactions,
        vocabulary=vocabulary,
        metadata={
            "min_explicit_rating": 5,
            "max_per_author": None,
            "train_params": {"neighbourhood": {"k1": 1.2, "b": 0.75, "neighbours": 5}},
        },
        history={},
        neighbourhood=Neighbourhood(similarity, 0.3),
    )


def handmade_recommender() -> BookRecommender:
    return BookRecommender(handmade_bundle())


def new_books(*rows: tuple[str, str, str, int | None, str]) -> pd.DataFrame:
    """Added books (isbn, title, author, year, publisher) in the store's layout."""
    frame = pd.DataFrame(rows, columns=["isbn", "title", "author", "year", "publisher"])
    for size in ("s", "m", "l"):
        frame[f"image_url_{size}"] = pd.NA
    return frame.astype({"year": "Int16"})
