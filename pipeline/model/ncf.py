"""NeuMF with side features and a history-based user representation (pure PyTorch).

He et al. (2017) fuse a GMF tower (element-wise product of user and item vectors) with an MLP tower
(an MLP over the concatenated user and item vectors). Here both towers see

    user  = free embedding of the user id
          + mean of the embeddings of the books the user read (|H|^-alpha weighted; FISM/SVD++)
          + embeddings of age bucket, country and region
    item  = free embedding of the book + embeddings of author, publisher and decade

so a reader's age and location move the GMF product and the MLP input, and therefore change the
scores of different books differently (a per-user additive term would cancel in BPR). The history
term is what makes fold-in possible: a reader unknown at training time, or one who just rated a
book, gets a representation from the books they read without retraining.

Scoring all items for a batch of users is a matrix product for GMF plus, for the MLP, the item half
of the first layer precomputed once (`item_cache`), so serving never runs the item tower per request.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.model.rows import TowerKeys, TrainingRows, distinct_rows, gathered


@dataclass(frozen=True)
class NCFConfig:
    n_users: int
    n_items: int
    user_features: dict[str, int] = field(default_factory=dict)  # feature name -> cardinality
    item_features: dict[str, int] = field(default_factory=dict)
    gmf_dim: int = 64
    mlp_dim: int = 32
    mlp_layers: tuple[int, ...] = (64,)  # hidden sizes of the MLP tower
    dropout: float = 0.0
    use_history: bool = True
    use_user_id: bool = True  # a free embedding per known reader, on top of history and side features
    use_side_features: bool = True
    history_alpha: float = 0.5  # history sum is divided by |H| ** alpha
    init_std: float = 0.01

    def to_json(self) -> dict:
        data = asdict(self)
        data["mlp_layers"] = list(self.mlp_layers)
        return data

    @classmethod
    def from_json(cls, data: dict) -> NCFConfig:
        return cls(**{**data, "mlp_layers": tuple(data["mlp_layers"])})


class HistoryTerms(NamedTuple):
    """The history part of the user vectors, one row per scored user."""

    gmf: torch.Tensor  # (B, gmf_dim)
    mlp: torch.Tensor  # (B, mlp_dim)


class UserVectors(NamedTuple):
    gmf: torch.Tensor  # (B, gmf_dim)
    mlp: torch.Tensor  # (B, mlp_dim)


class ItemVectors(NamedTuple):
    gmf: torch.Tensor  # (N, gmf_dim)
    mlp: torch.Tensor  # (N, mlp_dim)
    bias: torch.Tensor  # (N,)

    def take(self, items: torch.Tensor) -> ItemVectors:
        """The rows of `items` (any shape) of a table of every item's vectors."""
        return ItemVectors(self.gmf[items], self.mlp[items], self.bias[items])


class ItemCache(NamedTuple):
    """Everything about the items that does not depend on the user, for full-catalog scoring."""

    gmf_weighted: torch.Tensor  # (gmf_dim, N): item GMF vectors times the output weights, transposed
    mlp_first: torch.Tensor  # (h1, N): item half of the first MLP layer, bias included, transposed
    bias: torch.Tensor  # (N,)


class CandidateRows(NamedTuple):
    """The item-side terms of `ItemCache` for each reader's own candidates, items on the middle axis."""

    gmf_weighted: torch.Tensor  # (B, C, gmf_dim)
    mlp_first: torch.Tensor  # (B, C, h1)
    bias: torch.Tensor  # (B, C)


class Tower(nn.Module):
    """Free id embedding + side-feature embeddings (+ weighted history) summed into one vector per row.

    In training (`keys` given) every table is read once per distinct row and gets a sparse gradient
    of those rows only (see `pipeline.model.train`); the side features are summed by one
    EmbeddingBag over the distinct rows of their tables side by side."""

    def __init__(
        self,
        n_ids: int,
        features: dict[str, int],
        dim: int,
        history_items: int | None,
        std: float,
        with_ids: bool = True,
    ):
        super().__init__()
        # The last id row is the "unknown id" of cold-start readers.
        self.ids = nn.Embedding(n_ids + 1, dim, sparse=True) if with_ids else None
        self.features = nn.ModuleDict(
            {name: nn.Embedding(size, dim, sparse=True) for name, size in features.items()}
        )
        self.history = nn.Embedding(history_items, dim, sparse=True) if history_items else None
        for module in [*self.features.values(), *(m for m in (self.ids, self.history) if m is not None)]:
            nn.init.normal_(module.weight, std=std)
        if self.ids is not None:
            with torch.no_grad():
                self.ids.weight[-1].zero_()
        self.dim = dim

    def forward(
        self,
        ids: torch.Tensor,
        features: torch.Tensor | None,
        history: torch.Tensor | None = None,
        keys: TowerKeys | None = None,
    ) -> torch.Tensor:
        if self.ids is None:
            vector = torch.zeros((*ids.shape, self.dim), device=ids.device)
        else:
            vector = self.ids(ids) if keys is None else gathered(self.ids, keys.ids)
        if features is not None and len(self.features):
            vector = vector + (self._features(features) if keys is None else self._distinct_features(keys))
        if history is not None:
            vector = vector + history
        return vector

    def _features(self, features: torch.Tensor) -> torch.Tensor:
        tables = list(self.features.values())
        return sum(table(features[..., column]) for column, table in enumerate(tables))

    def _distinct_features(self, keys: TowerKeys) -> torch.Tensor:
        rows = [
            distinct_rows(table, key.values)
            for table, key in zip(self.features.values(), keys.features, strict=True)
        ]
        starts = torch.tensor([0, *(len(r) for r in rows[:-1])], device=rows[0].device).cumsum(0)
        bags = torch.stack([key.places() for key in keys.features], dim=-1) + starts  # (..., features)
        summed = F.embedding_bag(bags.reshape(-1, len(rows)), torch.cat(rows), mode="sum")
        return summed.view(*bags.shape[:-1], self.dim)


class NCF(nn.Module):
    def __init__(self, config: NCFConfig):
        super().__init__()
        self.config = config
        user_features = config.user_features if config.use_side_features else {}
        item_features = config.item_features if config.use_side_features else {}
        history = config.n_items if config.use_history else None
        ids = config.use_user_id
        self.user_gmf = Tower(config.n_users, user_features, config.gmf_dim, history, config.init_std, ids)
        self.item_gmf = Tower(config.n_items, item_features, config.gmf_dim, None, config.init_std)
        self.user_mlp = Tower(config.n_users, user_features, config.mlp_dim, history, config.init_std, ids)
        self.item_mlp = Tower(config.n_items, item_features, config.mlp_dim, None, config.init_std)
        sizes = [2 * config.mlp_dim, *config.mlp_layers]
        self.mlp = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes, sizes[1:], strict=False))
        self.output = nn.Linear(config.gmf_dim + sizes[-1], 1, bias=False)
        self.item_bias = nn.Embedding(config.n_items + 1, 1, sparse=True)
        nn.init.zeros_(self.item_bias.weight)
        # GMF starts as a plain dot product; the MLP tower starts near silent and earns its weight.
        with torch.no_grad():
            self.output.weight[0, : config.gmf_dim] = 1.0
            nn.init.normal_(self.output.weight[:, config.gmf_dim :], std=0.01)

    @property
    def device(self) -> torch.device:
        return self.output.weight.device

    # -- representations -------------------------------------------------------------------------

    def history_terms(self, rows: sp.csr_matrix) -> HistoryTerms | None:
        """History part of the user vectors for readers given as binary CSR rows over the items:
        one weighted EmbeddingBag per tower, |H| ** -alpha per reader."""
        if not self.config.use_history:
            return None
        indptr = torch.from_numpy(np.asarray(rows.indptr, dtype=np.int64)).to(self.device)
        flat = torch.from_numpy(np.asarray(rows.indices, dtype=np.int64)).to(self.device)
        lengths = indptr[1:] - indptr[:-1]
        weights = torch.repeat_interleave(
            lengths.clamp(min=1).float().pow(-self.config.history_alpha), lengths
        )
        return HistoryTerms(
            *(
                F.embedding_bag(
                    flat, tower.history.weight, indptr[:-1], mode="sum", per_sample_weights=weights
                )
                for tower in (self.user_gmf, self.user_mlp)
            )
        )

    def training_history_terms(
        self,
        rows: TrainingRows,
        users: torch.Tensor,
        positives: torch.Tensor,
        most: int = 0,
        generator: torch.Generator | None = None,
    ) -> HistoryTerms | None:
        """History terms for training rows (user, positive), each with its own positive left out of the
        user's history, so that the model cannot learn to find an item in its own user's history.

        Only the batch's distinct readers are summed (one EmbeddingBag over their rows of the training
        matrix, then each positive alone as its own bag): the cost and the (sparse) gradient follow
        the batch's histories, never the catalog. With `most` > 0 a longer history is summed over a
        random sample of `most` of its books, scaled to the whole (`TrainingRows.of`): a batch of a
        large data set holds thousands of distinct readers, and the longest histories would otherwise
        make most of a step's work.
        """
        if not self.config.use_history:
            return None
        distinct, inverse = torch.unique(users, return_inverse=True)
        flat, offsets, weights = rows.of(distinct, most, generator)
        flat = torch.cat([flat, positives])
        ones = torch.arange(len(positives), device=flat.device)  # each positive is a bag of its own
        offsets = torch.cat([offsets, len(flat) - len(positives) + ones])
        scale = (rows.counts[users] - 1).clamp(min=1).float().pow(-self.config.history_alpha).unsqueeze(1)
        # the bags read the distinct books' rows, each looked up once (the tables' sparse gradients
        # have a row per distinct book), of both towers side by side (one pass, one sort backwards)
        books, position = torch.unique(flat, return_inverse=True)
        towers = (self.user_gmf.history, self.user_mlp.history)
        read = torch.cat([distinct_rows(table, books) for table in towers], dim=1)
        bags = F.embedding_bag(position, read, offsets, mode="sum")
        readers = bags[: len(distinct)] if most <= 0 else bags[: len(distinct)] * weights.unsqueeze(1)
        terms = (readers[inverse] - bags[len(distinct) :]) * scale
        return HistoryTerms(*terms.split([self.config.gmf_dim, self.config.mlp_dim], dim=1))

    def user_vectors(
        self, users: torch.Tensor, features: torch.Tensor | None, history: HistoryTerms | None
    ) -> UserVectors:
        """`users` may hold n_users (the unknown-user id) for cold-start readers."""
        if not self.config.use_side_features:
            features = None
        keys = TowerKeys.of(users, features) if torch.is_grad_enabled() else None
        return UserVectors(
            self.user_gmf(users, features, history.gmf if history else None, keys),
            self.user_mlp(users, features, history.mlp if history else None, keys),
        )

    def item_vectors(self, items: torch.Tensor, features: torch.Tensor | None) -> ItemVectors:
        if not self.config.use_side_features:
            features = None
        if not torch.is_grad_enabled():
            return ItemVectors(
                self.item_gmf(items, features),
                self.item_mlp(items, features),
                self.item_bias(items).squeeze(-1),
            )
        keys = TowerKeys.of(items, features)
        return ItemVectors(
            self.item_gmf(items, features, None, keys),
            self.item_mlp(items, features, None, keys),
            gathered(self.item_bias, keys.ids).squeeze(-1),
        )

    # -- scoring ----------------------------------------------------------------------------------

    def _mlp_tail(self, hidden: torch.Tensor) -> torch.Tensor:
        hidden = F.dropout(F.relu(hidden), self.config.dropout, self.training)
        for layer in self.mlp[1:]:
            hidden = F.dropout(F.relu(layer(hidden)), self.config.dropout, self.training)
        return hidden

    def score(self, user: UserVectors, item: ItemVectors) -> torch.Tensor:
        """Scores of aligned users and items; item tensors may carry extra leading dims (B, n, d)."""
        expand = (slice(None),) + (None,) * (item.gmf.dim() - user.gmf.dim())
        out = self.output.weight[0]
        # GMF's share of the output layer as one batched dot product: no (B, n, gmf_dim) intermediate
        weighted = user.gmf * out[: self.config.gmf_dim]
        if item.gmf.dim() > user.gmf.dim():
            gmf = (item.gmf @ weighted.unsqueeze(-1)).squeeze(-1)
        else:
            gmf = (item.gmf * weighted).sum(-1)
        first = self.mlp[0]
        w_user, w_item = first.weight[:, : self.config.mlp_dim], first.weight[:, self.config.mlp_dim :]
        hidden = (user.mlp @ w_user.T)[expand] + item.mlp @ w_item.T + first.bias
        return gmf + self._mlp_tail(hidden) @ out[self.config.gmf_dim :] + item.bias

    def forward(self, users, user_features, history, items, item_features) -> torch.Tensor:
        """Pure training forward: scores of `items` (B,) or (B, n) for `users` (B,)."""
        return self.score(
            self.user_vectors(users, user_features, history), self.item_vectors(items, item_features)
        )

    @torch.no_grad()
    def item_cache(self, item_features: torch.Tensor) -> ItemCache:
        items = torch.arange(self.config.n_items, device=self.device)
        vectors = self.item_vectors(items, item_features.to(self.device))
        out_gmf = self.output.weight[0, : self.config.gmf_dim]
        first = self.mlp[0]
        mlp_first = vectors.mlp @ first.weight[:, self.config.mlp_dim :].T + first.bias
        return ItemCache((vectors.gmf * out_gmf).T.contiguous(), mlp_first.T.contiguous(), vectors.bias)

    @torch.no_grad()
    def score_all_items(self, user: UserVectors, cache: ItemCache, chunk: int = 1) -> torch.Tensor:
        """(B, N) scores of every item, from precomputed item-side terms.

        Items run along the last axis of every intermediate, so a reader's MLP hidden layer is one
        contiguous (h1, N) block: broadcasting it against the reader's half of the first layer and
        reducing over h1 reads memory in order (a (N, h1) layout cost about five times as much for one
        reader). One reader at a time by default: the block (2.3 MB at 16 x 35k) stays in cache, where
        16 readers at once (36 MB) went to memory and cost five times as much per reader."""
        scores = torch.addmm(cache.bias, user.gmf, cache.gmf_weighted)
        first = self.mlp[0]
        user_first = user.mlp @ first.weight[:, : self.config.mlp_dim].T  # (B, h1)
        out_mlp = self.output.weight[0, self.config.gmf_dim :]
        for start in range(0, len(user_first), chunk):
            hidden = (cache.mlp_first.unsqueeze(0) + user_first[start : start + chunk].unsqueeze(2)).relu_()
            if len(self.mlp) == 1:  # (h1,) @ (b, h1, N): a reduction over h1 in memory order
                scores[start : start + chunk] += out_mlp @ hidden
            else:  # deeper towers: the layers act on h1, so items go back to the middle axis
                scores[start : start + chunk] += self._mlp_tail_after_relu(hidden.transpose(1, 2)) @ out_mlp
        return scores

    @torch.no_grad()
    def score_candidates(self, user: UserVectors, rows: CandidateRows) -> torch.Tensor:
        """(B, C) scores of each reader's own C items, from their rows of the item-side terms (what
        `score_all_items` computes, for those items only: two-stage retrieval's second stage)."""
        scores = (rows.gmf_weighted @ user.gmf.unsqueeze(-1)).squeeze(-1) + rows.bias
        first = self.mlp[0]
        user_first = user.mlp @ first.weight[:, : self.config.mlp_dim].T  # (B, h1)
        hidden = self._mlp_tail_after_relu((rows.mlp_first + user_first.unsqueeze(1)).relu_())
        return scores + hidden @ self.output.weight[0, self.config.gmf_dim :]

    def _mlp_tail_after_relu(self, hidden: torch.Tensor) -> torch.Tensor:
        for layer in self.mlp[1:]:
            hidden = F.relu(layer(hidden))
        return hidden
