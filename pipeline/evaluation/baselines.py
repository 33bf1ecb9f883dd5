"""Baselines behind the recommender interface: random, popularity, ItemKNN (cosine, BM25), RP3beta,
EASE and ALS.

ItemKNN and ALS are fitted by `implicit`, the field's standard implementation; RP3beta and EASE have no
maintained package that fits this stack, so they are written here, short and tested against their
closed forms. Scoring and the masking of read books go through the same `Recommender.recommend` as
every other model. A `grid` classmethod fits one model per grid point and shares what the points have
in common (the co-occurrence products), for tuning on validation (`pipeline.evaluation.tuning`).
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from pipeline.model.recommender import Recommender


class RandomRecommender(Recommender):
    name = "random"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def fit(self, train: sp.csr_matrix) -> RandomRecommender:
        self.seen, self.n_items = train.tocsr(), train.shape[1]
        return self

    def score_users(self, users: np.ndarray) -> np.ndarray:
        # Seeded by the users in the batch, so a user's scores do not depend on how users are batched.
        scores = np.empty((len(users), self.n_items), dtype=np.float32)
        for row, user in enumerate(users):
            scores[row] = np.random.default_rng((self.seed, int(user))).random(self.n_items, dtype=np.float32)
        return scores


class PopularityRecommender(Recommender):
    name = "popularity"

    def fit(self, train: sp.csr_matrix) -> PopularityRecommender:
        self.seen = train.tocsr()
        self.popularity = np.bincount(self.seen.indices, minlength=train.shape[1]).astype(np.float32)
        return self

    def score_users(self, users: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.popularity, (len(users), len(self.popularity)))


class SimilarityRecommender(Recommender):
    """score(u, i) = sum of similarity(j, i) over the books j that u read; `similarity` is a sparse
    items x items matrix holding at most `neighbours` entries per row (a book's nearest neighbours)."""

    similarity: sp.csr_matrix

    def score_users(self, users: np.ndarray) -> np.ndarray:
        return (self.seen[users] @ self.similarity).toarray()

    def candidate_scores(self, users: np.ndarray, extra: int) -> tuple[np.ndarray, None]:
        return fresh(self.score_users(users)), None

    def _with(self, train: sp.csr_matrix, similarity: sp.csr_matrix) -> SimilarityRecommender:
        self.seen, self.similarity = train.tocsr().astype(np.float32), similarity.tocsr()
        return self


def fresh(scores: np.ndarray) -> np.ndarray:
    """Scores to rank, which the ranking masks in place: `scores` itself when this model built them
    just now (float32, row-major, its own), else a copy (`Recommender.candidate_scores`)."""
    return np.require(scores, np.float32, ["C_CONTIGUOUS", "WRITEABLE", "OWNDATA"])


def binary(train: sp.csr_matrix) -> sp.csr_matrix:
    """The interactions as a float32 CSR matrix of ones."""
    matrix = train.tocsr().astype(np.float32)
    matrix.data[:] = 1.0
    return matrix


def best_per_row(matrix: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """The `k` largest entries of each row (ties: the lower column), the rest dropped: a similarity
    fitted with more neighbours, cut down to fewer, is the one fitted with fewer."""
    matrix = matrix.tocsr()
    lengths = np.diff(matrix.indptr)
    width = int(lengths.max(initial=0))
    if width <= k:
        return matrix
    if not matrix.has_sorted_indices:
        matrix = matrix.sorted_indices()
    # each row's entries side by side, padded with -inf, sorted by a stable sort: a block of rows at a time
    position = np.arange(matrix.nnz) - np.repeat(matrix.indptr[:-1], lengths)
    kept = np.zeros(matrix.nnz, dtype=bool)
    step = max(1, SIMILARITY_BLOCK // width)
    for start in range(0, matrix.shape[0], step):
        first, last = matrix.indptr[start], matrix.indptr[min(start + step, matrix.shape[0])]
        rows = np.repeat(np.arange(min(step, matrix.shape[0] - start)), lengths[start : start + step])
        padded = np.full((rows[-1] + 1 if len(rows) else 0, width), np.inf, dtype=np.float64)
        padded[rows, position[first:last]] = -matrix.data[first:last]
        best = np.argsort(padded, axis=1, kind="stable")[:, :k]
        chosen = np.zeros(padded.shape, dtype=bool)
        np.put_along_axis(chosen, best, True, axis=1)
        kept[first:last] = chosen[rows, position[first:last]]
    return sp.csr_matrix(
        (matrix.data[kept], matrix.indices[kept], np.r_[0, np.cumsum(np.minimum(lengths, k))]),
        shape=matrix.shape,
    )


class ItemKNNRecommender(SimilarityRecommender):
    """Item-based k-nearest neighbours: score(u, i) = sum of similarities of i to the items u read."""

    def __init__(self, weighting: str = "bm25", neighbours: int = 100, k1: float = 1.2, b: float = 0.75):
        from implicit.nearest_neighbours import BM25Recommender, CosineRecommender

        self.name = f"itemknn_{weighting}"
        if weighting == "bm25":
            self._model = BM25Recommender(K=neighbours, K1=k1, B=b)
        elif weighting == "cosine":
            self._model = CosineRecommender(K=neighbours)
        else:
            raise ValueError(f"unknown ItemKNN weighting {weighting!r}; use 'bm25' or 'cosine'")

    def fit(self, train: sp.csr_matrix) -> ItemKNNRecommender:
        seen = train.tocsr().astype(np.float32)
        with warnings.catch_warnings():
            # implicit converts its own BM25-weighted COO matrix to CSR and warns about it.
            warnings.simplefilter("ignore")
            self._model.fit(seen, show_progress=False)
        self._with(train, self._model.similarity.astype(np.float32))
        return self

    @classmethod
    def bm25_grid(
        cls, train: sp.csr_matrix, k1: Sequence[float], b: Sequence[float], neighbours: Sequence[int]
    ) -> Iterator[tuple[dict, ItemKNNRecommender]]:
        """BM25 ItemKNN at every grid point, fitted once per (k1, b) with the most neighbours and cut
        down to fewer (`best_per_row`)."""
        for k1_value, b_value in itertools.product(k1, b):
            widest = cls("bm25", max(neighbours), k1_value, b_value).fit(train)
            for count in sorted(neighbours, reverse=True):
                model = cls("bm25", count, k1_value, b_value)._with(
                    train, best_per_row(widest.similarity, count)
                )
                yield {"k1": k1_value, "b": b_value, "neighbours": count}, model


class RP3betaRecommender(SimilarityRecommender):
    """RP3beta (Paudel et al. 2016, as Dacrema et al. 2019 run it): a random walk item -> reader -> item
    over the training graph, each step's transition probabilities raised to `alpha`, the arrival item's
    probability divided by its popularity ** `beta`; each book keeps its `neighbours` best arrivals."""

    name = "rp3beta"

    def __init__(self, alpha: float = 1.0, beta: float = 0.5, neighbours: int = 100):
        self.alpha, self.beta, self.neighbours = alpha, beta, neighbours

    def fit(self, train: sp.csr_matrix) -> RP3betaRecommender:
        similarity = rp3beta_similarities(train, self.alpha, [self.beta], self.neighbours)[self.beta]
        return self._with(train, similarity)

    @classmethod
    def grid(
        cls, train: sp.csr_matrix, alpha: Sequence[float], beta: Sequence[float], neighbours: Sequence[int]
    ) -> Iterator[tuple[dict, RP3betaRecommender]]:
        """RP3beta at every grid point: one walk per alpha, penalised for every beta, with the most
        neighbours, cut down to fewer (`best_per_row`)."""
        for alpha_value in alpha:
            by_beta = rp3beta_similarities(train, alpha_value, beta, max(neighbours))
            for beta_value in beta:
                for count in sorted(neighbours, reverse=True):
                    model = cls(alpha_value, beta_value, count)
                    model._with(train, best_per_row(by_beta[beta_value], count))
                    yield {"alpha": alpha_value, "beta": beta_value, "neighbours": count}, model


SIMILARITY_BLOCK = 1 << 22  # walk entries (sparse) or padded top-k candidates held at a time


def transition(matrix: sp.csr_matrix, alpha: float) -> sp.csr_matrix:
    """Row-stochastic transition probabilities along `matrix`'s rows, each raised to `alpha`."""
    counts = np.diff(matrix.indptr)
    probabilities = matrix.copy()
    probabilities.data = (1.0 / np.repeat(np.maximum(counts, 1), counts)).astype(np.float32) ** alpha
    return probabilities


def rp3beta_similarities(
    train: sp.csr_matrix, alpha: float, betas: Sequence[float], neighbours: int
) -> dict[float, sp.csr_matrix]:
    """For each beta: W[i, j] = sum over readers u of P(i -> u) P(u -> j) / popularity(j) ** beta, the
    diagonal zeroed, the `neighbours` largest entries of each row kept. The walk is computed sparse, for
    a block of books at a time whose walks hold at most SIMILARITY_BLOCK entries: memory and time follow
    the co-reading pairs, never books x books."""
    readers_of = binary(train).T.tocsr()  # items x readers
    item_to_reader = transition(readers_of, alpha)
    reader_to_item = transition(binary(train), alpha)
    popularity = np.diff(readers_of.indptr).astype(np.float64)
    penalties = {
        beta: np.where(popularity > 0, np.maximum(popularity, 1) ** -beta, 0).astype(np.float32)
        for beta in betas
    }
    # a bound on the length of each book's walk: its readers' reading counts, summed
    bound = readers_of @ np.diff(reader_to_item.indptr).astype(np.int64)
    kept: dict[float, list[sp.csr_matrix]] = {beta: [] for beta in betas}
    for start, end in contiguous_blocks(bound, SIMILARITY_BLOCK):
        walk = (item_to_reader[start:end] @ reader_to_item).tocsr()
        rows = np.repeat(np.arange(start, end), np.diff(walk.indptr))
        walk.data[walk.indices == rows] = 0.0  # a book is not its own neighbour
        for beta, penalty in penalties.items():
            scaled = sp.csr_matrix((walk.data * penalty[walk.indices], walk.indices, walk.indptr), walk.shape)
            kept[beta].append(largest_per_row(scaled, neighbours))
    return {beta: sp.vstack(parts, format="csr") for beta, parts in kept.items()}


def contiguous_blocks(sizes: np.ndarray, budget: int) -> Iterator[tuple[int, int]]:
    """[start, end) ranges covering `sizes` in order, each summing to at most `budget` (or one row)."""
    start, total = 0, np.cumsum(sizes)
    while start < len(sizes):
        before = total[start - 1] if start else 0
        end = max(start + 1, int(np.searchsorted(total, before + budget, side="right")))
        yield start, end
        start = end


def largest_per_row(matrix: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """The `k` largest positive entries of each row (among entries tied at the k-th place, torch's
    partial sort picks). Rows are taken shortest first, padded with -inf to the longest of a group of
    at most SIMILARITY_BLOCK candidates, so the work follows the entries, not the columns."""
    import torch

    lengths = np.diff(matrix.indptr)
    order = np.argsort(lengths, kind="stable")
    rows, columns, values = [], [], []
    start = 0
    while start < len(order):
        # rows of similar length together: a group's padding is set by its last (longest) row
        window = lengths[order[start : start + SIMILARITY_BLOCK // max(lengths[order[start]], 1) + 1]]
        end = start + max(1, int(np.sum(np.arange(1, len(window) + 1) * window <= SIMILARITY_BLOCK)))
        group = order[start:end]
        width = int(lengths[group].max(initial=0))
        if width:
            part = matrix[group]
            offsets = np.arange(part.nnz) - np.repeat(part.indptr[:-1], np.diff(part.indptr))
            line = np.repeat(np.arange(len(group)), np.diff(part.indptr))
            padded = np.full((len(group), width), -np.inf, dtype=np.float32)
            padded[line, offsets] = part.data
            best, at = torch.topk(torch.from_numpy(padded), min(k, width), dim=1, sorted=False)
            best, at = best.numpy(), at.numpy()
            keep = best > 0
            where = np.repeat(np.arange(len(group)), keep.sum(axis=1))
            rows.append(group[where])
            columns.append(part.indices[part.indptr[where] + at[keep]])
            values.append(best[keep])
        start = end
    if not rows:
        return sp.csr_matrix(matrix.shape, dtype=np.float32)
    triples = (np.concatenate(values), (np.concatenate(rows), np.concatenate(columns)))
    return sp.csr_matrix(triples, shape=matrix.shape, dtype=np.float32)


class EASERecommender(Recommender):
    """EASE (Steck 2019): B = argmin |X - XB|^2 + l2 |B|^2 with a zero diagonal, in closed form
    B = I - P / diag(P), P = (X'X + l2 I)^-1, dense items x items.

    With fewer readers than books the same B is reached through the readers x readers matrix (Woodbury):
    M = (XX' + l2 I)^-1 gives XP = MX and diag(P) = (1 - diag(X'MX)) / l2, so the scores XB are
    X - l2 MX / (1 - diag(X'MX)) and no items x items matrix is formed. Either way one dense
    min(readers, books)^2 matrix is inverted (Cholesky, float32): `dense_bytes` says what that costs.
    Scores only the readers of the training matrix (by index), as every baseline here."""

    name = "ease"

    def __init__(self, l2: float = 500.0):
        self.l2 = l2

    @staticmethod
    def dense_bytes(n_readers: int, n_items: int) -> int:
        """Memory of a fit (the inverted matrix and its Gram matrix, float32) while another is held."""
        return 2 * 4 * min(n_readers, n_items) ** 2

    @classmethod
    def grid(
        cls, train: sp.csr_matrix, l2: Sequence[float], max_gib: float
    ) -> Iterator[tuple[dict, EASERecommender]]:
        """EASE at every `l2`, or `Unaffordable` (raised here, before any work) when a fit needs more
        than `max_gib` GiB: dense min(readers, books)^2 matrices cannot be had on a large catalog."""
        needed = cls.dense_bytes(*train.shape) / 2**30
        if needed > max_gib:
            raise Unaffordable(
                f"EASE skipped: {train.shape[0]:,} readers x {train.shape[1]:,} books need two dense "
                f"{min(train.shape):,} x {min(train.shape):,} float32 matrices, {needed:.1f} GiB, above "
                f"evaluate.ease.max_gib = {max_gib:g} GiB"
            )
        return (({"l2": value}, cls(value).fit(train)) for value in l2)

    def fit(self, train: sp.csr_matrix) -> EASERecommender:
        self.seen = binary(train)
        self.by_readers = train.shape[0] < train.shape[1]
        x = self.seen
        inverse = inverse_of_gram(x @ x.T if self.by_readers else x.T @ x, self.l2)
        if self.by_readers:
            self.readers_of = x.T.tocsr()  # items x readers
            self.readers_inverse = inverse  # M
            self.scale = (self.l2 / (1.0 - quadratic_forms(inverse, self.readers_of))).astype(np.float32)
        else:
            inverse *= -1.0 / np.diag(inverse)[None, :]  # B = I - P / diag(P): -P_ij / P_jj off the diagonal
            np.fill_diagonal(inverse, 0.0)
            self.weights = inverse  # B
        return self

    def score_users(self, users: np.ndarray) -> np.ndarray:
        history = self.seen[users]
        if not self.by_readers:
            return np.asarray(history @ self.weights)
        product = (self.readers_of @ self.readers_inverse[users].T).T  # (MX)[users]
        return history.toarray() - product * self.scale

    def candidate_scores(self, users: np.ndarray, extra: int) -> tuple[np.ndarray, None]:
        return fresh(self.score_users(users)), None


def inverse_of_gram(gram: sp.spmatrix, l2: float) -> np.ndarray:
    """(gram + l2 I)^-1, dense float32, by Cholesky in place (LAPACK's potrf and potri)."""
    from scipy.linalg import lapack

    dense = gram.toarray().astype(np.float32, copy=False)
    dense[np.diag_indices_from(dense)] += np.float32(l2)
    # LAPACK works in Fortran order: the transposed view of the symmetric matrix is that, so nothing
    # is copied and the factor and the inverse overwrite `dense`.
    factor, info = lapack.spotrf(dense.T, lower=1, overwrite_a=1, clean=0)
    if info == 0:
        factor, info = lapack.spotri(factor, lower=1, overwrite_c=1)
    if info != 0:
        raise np.linalg.LinAlgError(
            f"EASE: the Gram matrix plus {l2} I is not positive definite (LAPACK {info})"
        )
    symmetric_from_lower(factor)
    return factor.T


def symmetric_from_lower(matrix: np.ndarray, block: int = 1024) -> None:
    """Copy the lower triangle of a square matrix onto its upper triangle, in place, a block at a time."""
    n = len(matrix)
    for start in range(0, n, block):
        end = min(start + block, n)
        matrix[start:end, end:] = matrix[end:, start:end].T
        rows = matrix[start:end, start:end]
        rows[np.triu_indices(end - start, 1)] = rows.T[np.triu_indices(end - start, 1)]


def quadratic_forms(matrix: np.ndarray, columns: sp.csr_matrix) -> np.ndarray:
    """x' A x for each row x of `columns` (binary, CSR): the sum of A over the pairs of x's nonzeros.
    Costs the number of such pairs (sum of squared row lengths), not a matrix product."""
    out = np.empty(columns.shape[0], dtype=np.float64)
    for row in range(columns.shape[0]):
        ids = columns.indices[columns.indptr[row] : columns.indptr[row + 1]]
        out[row] = matrix[np.ix_(ids, ids)].sum(dtype=np.float64)
    return out


class ALSRecommender(Recommender):
    """Implicit-feedback matrix factorisation (Hu, Koren, Volinsky 2008), fitted by `implicit`."""

    name = "als"

    def __init__(
        self,
        factors: int = 256,
        regularization: float = 10.0,
        alpha: float = 20.0,
        iterations: int = 15,
        seed: int = 42,
    ):
        from implicit.cpu.als import AlternatingLeastSquares

        with threadpool_limits(1, "blas"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # implicit's BLAS-threads advice, followed in fit
            self._model = AlternatingLeastSquares(
                factors=factors,
                regularization=regularization,
                alpha=alpha,
                iterations=iterations,
                random_state=seed,
                calculate_training_loss=False,
            )

    def fit(self, train: sp.csr_matrix) -> ALSRecommender:
        self.seen = train.tocsr().astype(np.float32)
        # implicit's BLAS calls are single-threaded by design; it parallelises over users itself.
        with threadpool_limits(1, "blas"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # implicit's BLAS-threads advice, followed above
            self._model.fit(self.seen, show_progress=False)
        self.user_factors = np.asarray(self._model.user_factors, dtype=np.float32)
        self.item_factors = np.asarray(self._model.item_factors, dtype=np.float32)
        return self

    def score_users(self, users: np.ndarray) -> np.ndarray:
        return self.user_factors[users] @ self.item_factors.T

    def item_vectors(self) -> np.ndarray:
        return self.item_factors


class Unaffordable(Exception):
    """A baseline that this catalog puts out of reach (the message says why and names the budget)."""


def baseline_grid(name: str, train: sp.csr_matrix, **grid) -> Iterator[tuple[dict, Recommender]]:
    """(values, model fitted on `train`) for every point of a tuned baseline's grid, fitted lazily."""
    grids = {
        "itemknn_bm25_tuned": ItemKNNRecommender.bm25_grid,
        "rp3beta": RP3betaRecommender.grid,
        "ease": EASERecommender.grid,
    }
    if name not in grids:
        raise ValueError(f"unknown tuned baseline {name!r}; choose from {', '.join(grids)}")
    return grids[name](train, **grid)


def make_baseline(name: str, **options) -> Recommender:
    factories = {
        "random": RandomRecommender,
        "popularity": PopularityRecommender,
        "itemknn_bm25": lambda **o: ItemKNNRecommender("bm25", **o),
        "itemknn_cosine": lambda **o: ItemKNNRecommender("cosine", **o),
        "rp3beta": RP3betaRecommender,
        "ease": EASERecommender,
        "als": ALSRecommender,
    }
    if name not in factories:
        raise ValueError(f"unknown baseline {name!r}; choose from {', '.join(factories)}")
    return factories[name](**options)
