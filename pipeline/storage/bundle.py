"""The trained model on disk (`models/ncf/`): weights as safetensors, config and metadata as JSON,
id maps, features and known interactions as Parquet. No pickles: everything loads with `weights_only`
semantics, and the same folder is what MLflow stores as the pyfunc's artifacts."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from pipeline import io
from pipeline.data.catalog import Catalog
from pipeline.data.features import ITEM_FEATURES, USER_FEATURES, FeatureVocabulary
from pipeline.model.ncf import NCF, NCFConfig
from pipeline.model.neighbourhood import Neighbourhood
from pipeline.model.recommender import NCFRecommender
from pipeline.model.retrieval import RetrievalSettings

WEIGHTS, CONFIG, METADATA = "weights.safetensors", "model_config.json", "metadata.json"
USERS, ITEMS, INTERACTIONS = "users.parquet", "items.parquet", "interactions.parquet"
VOCABULARY, FEATURE_SPEC, HISTORY = "vocabulary.json", "feature_spec.json", "history.json"
FILES = (WEIGHTS, CONFIG, METADATA, USERS, ITEMS, INTERACTIONS, VOCABULARY, FEATURE_SPEC, HISTORY)
NEIGHBOURHOOD = "neighbourhood.safetensors"  # optional: models trained without the ItemKNN term lack it
SPLIT_CODES = {"train": 0, "validation": 1, "test": 2, "dislike": 3}  # dislike: explicit rating 1-4
POSITIVES = ("train", "validation", "test")
KNOWN = (*POSITIVES, "dislike")


class BundleError(RuntimeError):
    """A model folder is incomplete or corrupt."""


def save_bundle(
    folder: Path,
    model: NCF,
    users: pd.DataFrame,
    items: pd.DataFrame,
    splits: dict[str, pd.DataFrame],
    vocabulary: FeatureVocabulary,
    history: dict,
    metadata: dict,
    neighbourhood: Neighbourhood | None = None,
) -> None:
    """Write every file into `folder` (the caller makes the folder swap atomic)."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS))
    if neighbourhood is not None:
        save_neighbourhood(folder / NEIGHBOURHOOD, neighbourhood)
    io.write_json(model.config.to_json(), folder / CONFIG)
    io.write_parquet(users, folder / USERS)
    io.write_parquet(items, folder / ITEMS)
    interactions = pd.concat(
        [
            frame[["user_idx", "item_idx"]].assign(split=np.int8(code))
            for name, frame in splits.items()
            for code in [SPLIT_CODES[name]]
        ],
        ignore_index=True,
    )
    io.write_parquet(interactions, folder / INTERACTIONS)
    io.write_json(vocabulary.to_json(), folder / VOCABULARY)
    io.write_json(vocabulary.spec(), folder / FEATURE_SPEC)
    io.write_json(history, folder / HISTORY)
    io.write_json(metadata, folder / METADATA)


def fingerprint(folder: Path) -> str:
    """Identity of a trained model: its weights, config and the interactions it knows."""
    digest = hashlib.sha256()
    for name in (WEIGHTS, CONFIG, INTERACTIONS, NEIGHBOURHOOD):
        if name != NEIGHBOURHOOD or (folder / name).is_file():
            digest.update(io.sha256_file(folder / name).encode())
    return digest.hexdigest()[:20]


@dataclass
class Bundle:
    model: NCF
    users: pd.DataFrame  # user_idx-ordered: user_id, age, city, region, country, <feature>_id
    items: pd.DataFrame  # item_idx-ordered: isbn, title, author, year, publisher, image urls, <feature>_id
    interactions: pd.DataFrame  # user_idx, item_idx, split
    vocabulary: FeatureVocabulary
    metadata: dict
    history: dict
    neighbourhood: Neighbourhood | None = None

    @property
    def n_users(self) -> int:
        return self.model.config.n_users

    @property
    def n_items(self) -> int:
        return self.model.config.n_items

    def feature_tensor(self, frame: pd.DataFrame, columns: tuple[str, ...]) -> torch.Tensor:
        """Feature ids (columns `<feature>_id`) plus the all-unknown row of cold-start readers."""
        values = frame[[f"{c}_id" for c in columns]].to_numpy(dtype=np.int64)
        return torch.from_numpy(np.vstack([values, np.zeros((1, len(columns)), dtype=np.int64)]))

    def user_feature_tensor(self) -> torch.Tensor:
        return self.feature_tensor(self.users, USER_FEATURES)

    def item_feature_tensor(self) -> torch.Tensor:
        return self.feature_tensor(self.items, ITEM_FEATURES)

    def matrix(self, splits: tuple[str, ...]) -> sp.csr_matrix:
        """Binary (users x items) of the interactions in `splits` (names of SPLIT_CODES)."""
        codes = [SPLIT_CODES[s] for s in splits]
        chosen = self.interactions[self.interactions["split"].isin(codes)]
        ones = np.ones(len(chosen), dtype=np.float32)
        matrix = sp.csr_matrix(
            (ones, (chosen["user_idx"], chosen["item_idx"])), shape=(self.n_users, self.n_items)
        )
        matrix.sum_duplicates()
        matrix.data[:] = 1.0
        return matrix

    def recommender(
        self,
        history: sp.csr_matrix,
        seen: sp.csr_matrix | None = None,
        neighbourhood: bool = True,
        two_stage: bool | None = None,
    ) -> NCFRecommender:
        """The bundle's network behind the recommender interface, reading `history` (users x items);
        with its ItemKNN term unless `neighbourhood` is False (the network alone); with two-stage
        retrieval as the bundle's settings say for its catalog size, unless `two_stage` forces it on
        (True) or off (False). Versions trained before two-stage retrieval rank in full."""
        return NCFRecommender(
            self.model,
            self.user_feature_tensor(),
            self.item_feature_tensor(),
            history,
            seen,
            self.neighbourhood if neighbourhood else None,
            RetrievalSettings.from_json(self.metadata.get("retrieval")),
            two_stage,
        )

    @cached_property
    def catalog(self) -> Catalog:
        return Catalog.from_items(self.items)

    def exclusion(self, splits: tuple[str, ...] = KNOWN) -> sp.csr_matrix:
        """The one exclusion rule: the interactions of `splits` (every known one by default, dislikes
        included) and every other edition of those books."""
        return self.catalog.with_editions(self.matrix(splits))


def load_bundle(folder: Path) -> Bundle:
    folder = Path(folder)
    missing = [name for name in FILES if not (folder / name).is_file()]
    if missing:
        raise BundleError(f"{folder}: incomplete model, missing {', '.join(missing)}")
    try:
        config = NCFConfig.from_json(io.read_json(folder / CONFIG))
        model = NCF(config)
        model.load_state_dict(load_file(str(folder / WEIGHTS)))
    except (json.JSONDecodeError, TypeError, KeyError, RuntimeError, OSError, Exception) as err:
        raise BundleError(
            f"{folder}: cannot load the weights or config ({type(err).__name__}: {err})"
        ) from err
    model.eval()
    users = io.read_parquet(folder / USERS).sort_values("user_idx", ignore_index=True)
    items = io.read_parquet(folder / ITEMS).sort_values("item_idx", ignore_index=True)
    if len(users) != config.n_users or len(items) != config.n_items:
        raise BundleError(
            f"{folder}: id maps ({len(users)} users, {len(items)} items) do not match the model "
            f"({config.n_users}, {config.n_items})"
        )
    return Bundle(
        model=model,
        neighbourhood=load_neighbourhood(folder / NEIGHBOURHOOD, config.n_items),
        users=users,
        items=items,
        interactions=io.read_parquet(folder / INTERACTIONS),
        vocabulary=FeatureVocabulary.from_json(io.read_json(folder / VOCABULARY)),
        metadata=io.read_json(folder / METADATA),
        history=io.read_json(folder / HISTORY),
    )


def save_neighbourhood(path: Path, neighbourhood: Neighbourhood) -> None:
    """The similarity matrix as CSR arrays and its weight as metadata, in one safetensors file."""
    similarity = neighbourhood.similarity.tocsr()
    save_file(
        {
            "indptr": torch.from_numpy(similarity.indptr.astype(np.int64)),
            "indices": torch.from_numpy(similarity.indices.astype(np.int64)),
            "values": torch.from_numpy(similarity.data.astype(np.float32)),
        },
        str(path),
        metadata={"weight": repr(float(neighbourhood.weight))},
    )


def load_neighbourhood(path: Path, n_items: int) -> Neighbourhood | None:
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as stored:
            weight = float(stored.metadata()["weight"])
            arrays = {name: stored.get_tensor(name).numpy() for name in ("indptr", "indices", "values")}
        similarity = sp.csr_matrix(
            (arrays["values"], arrays["indices"], arrays["indptr"]), shape=(n_items, n_items)
        )
    except Exception as err:
        raise BundleError(
            f"{path}: cannot load the neighbourhood term ({type(err).__name__}: {err})"
        ) from err
    return Neighbourhood(similarity, weight)
