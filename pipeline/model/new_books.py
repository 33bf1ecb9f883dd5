"""Books that arrive between trainings (pure): a first representation from what the model learned, fold-in
from the readers who rate them, and a model and neighbourhood term grown by their rows, without retraining.

- **Side features.** A trained book's item vector is its id embedding plus its author, publisher and
  decade embeddings. A new book gets a zero id embedding, so its vectors are its side-feature
  embeddings alone (the vocabulary's unknown or <other> rows where it lacks a value), and the catalog's
  mean learned bias (the id's own bias row was never trained).
- **New editions.** A new edition of a known work (the catalog's work rule) takes that work's learned
  vectors: the id rows, feature ids, bias and history rows of the work's most-read edition.
- **Fold-in** is the item-side counterpart of the history term. A reader's vector adds |H|^-alpha times
  the sum of the history embeddings of the books they read; a new book's id rows (and bias, and
  history rows) become M (|R|^-alpha times the sum of its readers' vectors). M is a ridge regression
  fitted once per model on the trained catalog: inputs the same aggregate of each trained book's
  training readers, targets what training made of that book (its id rows, bias and history rows). So a
  book's readers move its vectors the way training moved the vectors of books read by such readers,
  and a book nobody has rated yet keeps its side-feature vectors. Readers' vectors rather than the
  books they co-read: the co-reads already feed the neighbourhood term.
- **Neighbourhood term.** The new book's BM25 ItemKNN similarities to every book from its readers'
  co-reads, weighted as the trained term was (BM25 over the training matrix), become its row (its
  `neighbours` best) and its column (where it would make a book's top `neighbours`); a new edition
  takes its trained edition's row and column.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
import torch

from pipeline.model.ncf import NCF, UserVectors
from pipeline.model.neighbourhood import Neighbourhood

RIDGES = (1e-3, 1e-2, 1e-1, 1.0, 10.0)  # candidate ridge strengths, times the inputs' mean square
FIT_HOLDOUT = 0.1  # share of trained books that chooses the ridge strength


class NewBookRows(NamedTuple):
    """What a grown model adds per new book (M rows)."""

    ids_gmf: torch.Tensor  # (M, gmf_dim) id-embedding rows of the item towers
    ids_mlp: torch.Tensor  # (M, mlp_dim)
    bias: torch.Tensor  # (M,)
    history_gmf: torch.Tensor  # (M, gmf_dim) history-embedding rows of the user towers
    history_mlp: torch.Tensor  # (M, mlp_dim)
    features: torch.Tensor  # (M, n_item_features) side-feature ids


@dataclass(frozen=True)
class FoldInMap:
    """The ridge map from a book's aggregated reader vectors to its id rows, bias and history rows."""

    weights: torch.Tensor  # (gmf_dim + mlp_dim, outputs)
    mean_bias: float
    alpha: float
    ridge: float  # the strength chosen on held-out trained books
    holdout_r2: float  # share of the held-out targets' variance it explains

    def predict(self, aggregate: torch.Tensor, config) -> tuple[torch.Tensor, ...]:
        """(ids_gmf, ids_mlp, bias, history_gmf, history_mlp) of books with these aggregates (M, d)."""
        out = aggregate @ self.weights
        gmf, mlp = config.gmf_dim, config.mlp_dim
        ids_gmf, ids_mlp, bias, history_gmf, history_mlp = out.split([gmf, mlp, 1, gmf, mlp], dim=1)
        return ids_gmf, ids_mlp, bias.squeeze(1) + self.mean_bias, history_gmf, history_mlp


def reader_aggregate(vectors: UserVectors, readers: sp.csr_matrix, alpha: float) -> torch.Tensor:
    """(M, gmf_dim + mlp_dim): |R|^-alpha times the sum of the vectors of each book's readers, from
    `readers` (M x R binary, R the rows of `vectors`); zero for a book with no reader."""
    readers = sp.csr_matrix(readers, dtype=np.float32)
    counts = np.diff(readers.indptr)
    scale = np.power(np.maximum(counts, 1), -alpha).astype(np.float32)
    table = torch.cat([vectors.gmf, vectors.mlp], dim=1).detach().numpy()
    summed = np.asarray(readers @ table, dtype=np.float32)
    return torch.from_numpy(summed * scale[:, None])


def _targets(model: NCF) -> tuple[torch.Tensor, float]:
    """(N, outputs) what training made of each book beyond its side features, and the mean bias."""
    n, config = model.config.n_items, model.config
    bias = model.item_bias.weight[:n, 0]
    mean_bias = float(bias.mean())
    history = (
        [model.user_gmf.history.weight, model.user_mlp.history.weight]
        if model.user_gmf.history is not None
        else [torch.zeros(n, config.gmf_dim), torch.zeros(n, config.mlp_dim)]
    )
    pieces = [model.item_gmf.ids.weight[:n], model.item_mlp.ids.weight[:n], (bias - mean_bias)[:, None]]
    return torch.cat([*pieces, *history], dim=1).detach(), mean_bias


def _ridge(x: torch.Tensor, y: torch.Tensor, strength: float) -> torch.Tensor:
    gram = x.T @ x
    gram += torch.eye(len(gram), dtype=gram.dtype) * strength
    return torch.linalg.solve(gram, x.T @ y)


def fit_fold_in(model: NCF, vectors: UserVectors, readers_by_book: sp.csr_matrix, seed: int = 0) -> FoldInMap:
    """The fold-in map of a trained model: `vectors` of its readers (R rows) and `readers_by_book`
    (n_items x R: who read each trained book in training). The ridge strength is the one of `RIDGES`
    that best predicts a seeded tenth of the books from a map fitted on the rest."""
    with torch.no_grad():
        alpha = model.config.history_alpha
        x = reader_aggregate(vectors, readers_by_book, alpha).double()
        targets, mean_bias = _targets(model)
        y = targets.double()
        held = np.random.default_rng(seed).random(len(x)) < FIT_HOLDOUT
        fit, test = torch.from_numpy(~held), torch.from_numpy(held)
        scale = float((x[fit] ** 2).sum(dim=1).mean()) or 1.0
        errors = {}
        for ridge in RIDGES:
            weights = _ridge(x[fit], y[fit], ridge * scale)
            errors[ridge] = float(((x[test] @ weights - y[test]) ** 2).sum())
        best = min(RIDGES, key=lambda r: (errors[r], -r))
        spread = float(((y[test] - y[fit].mean(dim=0)) ** 2).sum()) or 1.0
        weights = _ridge(x, y, best * scale).float()
    return FoldInMap(weights, mean_bias, alpha, best, 1.0 - errors[best] / spread)


def new_book_rows(
    model: NCF,
    item_features: torch.Tensor,
    fold_in: FoldInMap,
    features: torch.Tensor,
    aggregate: torch.Tensor,
    editions_of: np.ndarray,
) -> NewBookRows:
    """The rows of M new books: side-feature `features` (M, f) with the fold-in of their readers'
    `aggregate` (M, d; zero rows for books nobody rated), except where `editions_of` names a trained
    book (>= 0): a new edition takes that book's learned rows and feature ids whatever its readers."""
    with torch.no_grad():
        ids_gmf, ids_mlp, bias, history_gmf, history_mlp = fold_in.predict(aggregate, model.config)
        rows = NewBookRows(ids_gmf, ids_mlp, bias, history_gmf, history_mlp, features.clone())
        known = np.flatnonzero(np.asarray(editions_of) >= 0)
        if not len(known):
            return rows
        at, template = torch.as_tensor(known), torch.as_tensor(np.asarray(editions_of)[known])
        trained = NewBookRows(
            model.item_gmf.ids.weight[template],
            model.item_mlp.ids.weight[template],
            model.item_bias.weight[template, 0],
            *(
                (model.user_gmf.history.weight[template], model.user_mlp.history.weight[template])
                if model.user_gmf.history is not None
                else (history_gmf[at], history_mlp[at])
            ),
            item_features[template],
        )
        for mine, theirs in zip(rows, trained, strict=True):
            mine[at] = theirs.to(mine.dtype)
    return rows


def grown_model(model: NCF, rows: NewBookRows) -> NCF:
    """A copy of `model` whose catalog has `rows` appended (item n_items + m is new book m): the item
    towers' id rows (the unknown-id row stays last), the item bias and the history tables."""
    n, added = model.config.n_items, len(rows.bias)
    with torch.device("meta"):  # no memory and no random initialisation: every tensor is loaded below
        grown = type(model)(replace(model.config, n_items=n + added))
    state = {name: tensor.detach() for name, tensor in model.state_dict().items()}

    def inserted(table: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        return torch.cat([table[:n], new.to(table.dtype), table[n:]])

    state["item_gmf.ids.weight"] = inserted(state["item_gmf.ids.weight"], rows.ids_gmf)
    state["item_mlp.ids.weight"] = inserted(state["item_mlp.ids.weight"], rows.ids_mlp)
    state["item_bias.weight"] = inserted(state["item_bias.weight"], rows.bias.unsqueeze(1))
    for tower, new in (("user_gmf", rows.history_gmf), ("user_mlp", rows.history_mlp)):
        if f"{tower}.history.weight" in state:
            state[f"{tower}.history.weight"] = inserted(state[f"{tower}.history.weight"], new)
    grown.load_state_dict(state, assign=True)
    grown.eval()
    return grown


@dataclass(frozen=True)
class CoReads:
    """The trained neighbourhood term's BM25 weighting, to weigh a new book's readers the same way."""

    weighted: sp.csr_matrix  # (readers, n_items) BM25 weight of each training interaction
    idf: np.ndarray  # (readers,) log(n_items) - log(1 + books the reader read)
    average_length: float  # mean readers per trained book
    k1: float
    b: float
    neighbours: int
    kth: np.ndarray  # (n_items,) the smallest similarity a row keeps (0 where it keeps fewer)

    @classmethod
    def of(cls, train: sp.csr_matrix, similarity: sp.csr_matrix, k1: float, b: float, neighbours: int):
        """From the training matrix (readers x books, binary) and the trained similarity matrix."""
        train = sp.csr_matrix(train, dtype=np.float32)
        n_items = train.shape[1]
        idf = np.log(n_items) - np.log1p(np.diff(train.indptr))
        lengths = np.asarray(train.sum(axis=0), dtype=np.float64).ravel()
        average = float(lengths.mean()) if n_items else 1.0
        weighted = train.tocoo()
        norm = (1.0 - b) + b * lengths / average
        weighted.data = ((k1 + 1.0) / (k1 * norm[weighted.col] + 1.0) * idf[weighted.row]).astype(np.float32)
        similarity = similarity.tocsr()
        counts = np.diff(similarity.indptr)
        kth = np.zeros(n_items, dtype=np.float32)
        stored = np.flatnonzero(counts > 0)  # consecutive stored rows' data segments are the rows
        if len(stored):
            smallest = np.minimum.reduceat(similarity.data, similarity.indptr[stored])
            kth[stored] = np.where(counts[stored] >= neighbours, smallest, 0.0)
        return cls(weighted.tocsr(), idf.astype(np.float32), average, k1, b, neighbours, kth)

    def new_rows(self, readers: sp.csr_matrix) -> sp.csr_matrix:
        """(M, readers) BM25 weights of new books from their readers (M x readers, binary)."""
        readers = sp.csr_matrix(readers, dtype=np.float32)
        counts = np.diff(readers.indptr)
        norm = (1.0 - self.b) + self.b * counts / self.average_length
        rows = readers.tocoo()
        rows.data = ((self.k1 + 1.0) / (self.k1 * norm[rows.row] + 1.0) * self.idf[rows.col]).astype(
            np.float32
        )
        return rows.tocsr()


def _top_per_row(matrix: sp.csr_matrix, count: int) -> sp.csr_matrix:
    """Each row's `count` largest entries."""
    matrix = matrix.tocsr()
    rows, cols, values = [], [], []
    for row in range(matrix.shape[0]):
        start, end = matrix.indptr[row], matrix.indptr[row + 1]
        data, columns = matrix.data[start:end], matrix.indices[start:end]
        keep = np.argsort(-data, kind="stable")[:count]
        rows.append(np.full(len(keep), row)), cols.append(columns[keep]), values.append(data[keep])
    if not rows:
        return sp.csr_matrix(matrix.shape, dtype=np.float32)
    return sp.csr_matrix(
        (np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))), shape=matrix.shape
    )


def grown_neighbourhood(
    neighbourhood: Neighbourhood,
    co_reads: CoReads,
    readers: sp.csr_matrix,
    editions_of: np.ndarray | None = None,
) -> Neighbourhood:
    """The neighbourhood term with M new books appended: each one's similarities to every book from
    the co-reads of its `readers` (M x readers of the training matrix, binary); a new edition of a
    trained book (`editions_of` >= 0) takes that book's row and column instead."""
    similarity = neighbourhood.similarity.tocsr()
    n, added = similarity.shape[0], readers.shape[0]
    editions_of = np.full(added, -1) if editions_of is None else np.asarray(editions_of)
    own = sp.diags((editions_of < 0).astype(np.float32))  # (M, M): the books with co-reads of their own
    new = (own @ co_reads.new_rows(readers)).tocsr()  # (M, readers)
    to_old = (co_reads.weighted.T @ new.T).tocsr()  # (n, M): book i's similarity to new book j
    among_new = (new @ new.T).tocsr()  # (M, M)
    rows = _top_per_row(sp.hstack([to_old.T, among_new]).tocsr(), co_reads.neighbours)  # (M, n + M)
    column = to_old.tocoo()
    kept = column.data >= co_reads.kth[column.row]
    column = sp.csr_matrix((column.data[kept], (column.row[kept], column.col[kept])), shape=(n, added))
    edition = np.flatnonzero(editions_of >= 0)
    template = sp.csr_matrix(  # (M, n): a new edition's trained edition
        (np.ones(len(edition), np.float32), (edition, editions_of[edition])), shape=(added, n)
    )
    own_similarity = np.zeros(added, np.float32)  # an edition is as similar to itself as its trained one
    own_similarity[edition] = similarity.diagonal()[editions_of[edition]]
    rows = (rows + sp.hstack([template @ similarity, sp.diags(own_similarity)])).tocsr()
    column = (column + similarity @ template.T).tocsr()
    grown = sp.bmat([[similarity, column], [rows[:, :n], rows[:, n:]]], format="csr", dtype=np.float32)
    grown.eliminate_zeros()
    return Neighbourhood(grown, neighbourhood.weight)
