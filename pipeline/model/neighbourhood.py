"""The ItemKNN neighbourhood term next to the NCF (Koren 2008, "Factorization meets the neighborhood"):
score = z(NCF) + weight * z(sum of BM25 ItemKNN similarities of each book to the reader's books), both
standardised per reader. Pure numpy and scipy; the weight is chosen on validation
(`pipeline.evaluation.selection.choose_neighbourhood`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


def row_moments(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's mean and standard deviation (float64), from one sum and one sum of squares: no
    temporary the size of `scores` (serving standardises 35k scores per reader)."""
    n = scores.shape[1]
    mean = scores.sum(axis=1, dtype=np.float64) / n
    squares = np.einsum("ij,ij->i", scores, scores, dtype=np.float64) / n
    return mean, np.sqrt(np.maximum(squares - mean**2, 0.0))


def standardise_rows(scores: np.ndarray, shift: np.ndarray | None = None) -> np.ndarray:
    """Each row shifted to mean 0 and scaled to standard deviation 1 (a constant row becomes all zeros),
    then moved by `shift` (one value per row), in one pass into a new array."""
    mean, spread = row_moments(scores)
    inverse = np.divide(1.0, spread, out=np.zeros_like(spread), where=spread > 1e-12 * np.abs(mean).clip(1))
    offset = -mean * inverse + (0.0 if shift is None else shift)
    out = np.multiply(scores, inverse.astype(np.float32)[:, None])
    out += offset.astype(np.float32)[:, None]
    return out


@dataclass(frozen=True)
class Neighbourhood:
    """An item-item neighbourhood term next to a learned model (Koren 2008, "Factorization meets the
    neighborhood"): score = z(model) + weight * z(sum of similarities of each book to the reader's books),
    both standardised per reader so that one weight fits readers with short and long histories.

    The similarities are BM25-weighted ItemKNN fitted on the training split; the weight is chosen on
    validation. A reader with no history gets a constant neighbourhood row, so only the model ranks.
    """

    similarity: sp.csr_matrix  # (n_items, n_items), row j: the books similar to book j
    weight: float

    def scores(self, history_rows: sp.csr_matrix) -> sp.csr_matrix:
        """(B, n_items) sums of similarities to the books of each history row; sparse, as most are 0."""
        return (history_rows @ self.similarity).tocsr()

    def _scale_and_shift(self, neighbours: sp.csr_matrix, n_items: int) -> tuple[np.ndarray, np.ndarray]:
        """Per row, weight / spread and -weight * mean / spread of the neighbour scores over the catalog:
        z(neighbours) without densifying, as its mean and spread come from the non-zeros alone."""
        mean = np.asarray(neighbours.sum(axis=1), dtype=np.float64).ravel() / n_items
        squares = np.asarray(neighbours.multiply(neighbours).sum(axis=1), dtype=np.float64).ravel()
        spread = np.sqrt(np.maximum(squares / n_items - mean**2, 0.0))
        scale = np.divide(self.weight, spread, out=np.zeros_like(spread), where=spread > 0)
        return scale, -scale * mean

    def blend(self, model_scores: np.ndarray, history_rows: sp.csr_matrix) -> np.ndarray:
        if self.weight == 0:
            return model_scores
        neighbours = self.scores(history_rows)
        scale, shift = self._scale_and_shift(neighbours, model_scores.shape[1])
        blended = standardise_rows(model_scores, shift=shift)
        rows = np.repeat(np.arange(neighbours.shape[0]), np.diff(neighbours.indptr))
        blended[rows, neighbours.indices] += (scale[rows] * neighbours.data).astype(np.float32)
        return blended

    def blend_candidates(
        self,
        model_scores: np.ndarray,
        model_moments: tuple[np.ndarray, np.ndarray],
        neighbours: sp.csr_matrix,
        items: np.ndarray,
    ) -> np.ndarray:
        """`blend` at each row's own `items` (B, C; -1 pads) only, given the model scores there, their
        mean and spread over the catalog (estimated elsewhere), and `scores(history_rows)`."""
        if self.weight == 0:
            return model_scores
        mean, spread = model_moments
        inverse = np.divide(
            1.0, spread, out=np.zeros_like(spread), where=spread > 1e-12 * np.abs(mean).clip(1)
        )
        scale, shift = self._scale_and_shift(neighbours, neighbours.shape[1])
        blended = model_scores * inverse.astype(np.float32)[:, None]
        blended += (shift - mean * inverse).astype(np.float32)[:, None]
        return blended + scale.astype(np.float32)[:, None] * values_at(neighbours, items)


def values_at(matrix: sp.csr_matrix, columns: np.ndarray) -> np.ndarray:
    """(B, C) entries of a (B, N) sparse matrix at each row's own `columns` (-1 pads read 0)."""
    matrix = matrix.tocsr()
    matrix.sort_indices()
    n_rows, n_cols = matrix.shape
    stored = np.repeat(np.arange(n_rows, dtype=np.int64), np.diff(matrix.indptr)) * n_cols + matrix.indices
    wanted = np.arange(n_rows, dtype=np.int64)[:, None] * n_cols + columns
    if not len(stored):
        return np.zeros(columns.shape, dtype=np.float32)
    position = np.searchsorted(stored, wanted).clip(max=len(stored) - 1)
    found = (stored[position] == wanted) & (columns >= 0)
    return np.where(found, matrix.data[position], 0.0).astype(np.float32)


def history_rows(histories: list, n_items: int) -> sp.csr_matrix:
    """A binary (len(histories), n_items) matrix from lists of item indices."""
    lengths = np.fromiter((len(h) for h in histories), dtype=np.int64, count=len(histories))
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    indices = np.concatenate(histories).astype(np.int64) if len(histories) else np.empty(0, np.int64)
    return sp.csr_matrix(
        (np.ones(len(indices), dtype=np.float32), indices, indptr), shape=(len(histories), n_items)
    )
