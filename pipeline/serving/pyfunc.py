"""The bookrec model as an MLflow pyfunc, logged with models-from-code: MLflow stores this file and the
model folder's files (safetensors, JSON, Parquet), never a pickle.

Input (one row per request): `user_id` (raw Book-Crossing User-ID, string) and `k`; for readers the
model has never seen, optionally `age`, `location` and `liked_isbns` (comma-separated). Output: one
row per recommendation, `user_id`, `rank` (1 = best), `isbn`, `score`.
Params: `exclude` = "all" (every book the reader is known to have read; default) or "train" (train and
validation only, which reproduces the test metrics); `mode` = "recommend" (default) or "similar"
(an `isbn` column in; out `isbn`, `rank`, `similar_isbn`, `score`); `max_per_author` = "default"
(the model's cap) or a number (0: no cap).

A version carries the code it was trained with: the `pipeline` package is logged with it (MLflow
`code_paths`, under `code/`), and `load_context` builds the recommender from that copy even in a
process that has already imported another `pipeline` (the API serving a newer version, a newer
checkout), so a rollback serves exactly what was registered. This file imports no `pipeline` module
at import time for the same reason.
"""

from __future__ import annotations

import builtins
import sys
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

PACKAGE = "pipeline"


def _package_modules() -> dict:
    return {name: module for name, module in sys.modules.items() if name.split(".")[0] == PACKAGE}


@contextmanager
def own_code(code_dir: Path) -> Iterator[None]:
    """Imports of `pipeline` inside this block come from `code_dir` (this version's copy); every
    `pipeline` module imported before is put back afterwards, untouched. Without a logged copy (a
    version registered before versions carried their code), the installed package is used."""
    if not (code_dir / PACKAGE / "__init__.py").is_file():
        yield
        return
    # The process's code lock (pipeline/serving/codelock.py), when the loading process installed it:
    # held by the caller already (re-entrant), taken here too for a load that did not go through it.
    lock = getattr(builtins.__import__, "code_lock", None)
    with lock if lock is not None else nullcontext(), _swapped_in(code_dir):
        yield


@contextmanager
def _swapped_in(code_dir: Path) -> Iterator[None]:
    saved = _package_modules()
    for name in saved:
        del sys.modules[name]
    sys.path.insert(0, str(code_dir))
    try:
        yield
    finally:
        # MLflow prepends the same folder when it loads a version with code: take that out too, so
        # that nothing imported later in this process comes from a version's copy by accident.
        sys.path[:] = [entry for entry in sys.path if entry != str(code_dir)]
        for name in _package_modules():
            del sys.modules[name]
        sys.modules.update(saved)


class BookRecModel(PythonModel):
    """Loads the model folder once; every predict call is a batch of requests."""

    def load_context(self, context) -> None:
        folder = Path(context.artifacts["weights"]).parent  # <model>/artifacts
        with own_code(folder.parent / "code"):
            from pipeline.serving.catalog_growth import CatalogGrowth
            from pipeline.serving.contract import DEFAULT_PARAMS
            from pipeline.serving.service import BookRecommender, Reader

            self.recommender = BookRecommender.from_folder(folder)
        self.defaults, self.reader, self.growth_of = dict(DEFAULT_PARAMS), Reader, CatalogGrowth
        self.growth = None  # found at the first prediction: loading a version touches no store

    def grown(self):
        """The recommender with the books added to the serving store (when `BOOKREC_FEEDBACK_URL` or
        `BOOKREC_ROOT` names one), as every other service serves them."""
        if self.growth is None:
            self.growth = self.growth_of.from_environment() or False
        return self.growth.current(self.recommender) if self.growth else self.recommender

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        Reader = self.reader
        recommender = self.grown()
        params = {**self.defaults, **(params or {})}
        cap = params["max_per_author"]
        rules = recommender.rules_for(cap if cap == "default" else int(cap))
        frame = pd.DataFrame(model_input)
        k_values = frame["k"] if "k" in frame else pd.Series(10, index=frame.index)
        if k_values.isna().any():
            k_values = k_values.fillna(10)
        if params["mode"] == "similar":
            if "isbn" not in frame:
                raise ValueError("mode 'similar' needs an 'isbn' column")
            parts = [
                recommender.similar_books([isbn], int(k), rules)
                for isbn, k in zip(frame["isbn"], k_values, strict=True)
            ]
            return (
                pd.concat(parts, ignore_index=True)
                if parts
                else pd.DataFrame(columns=["isbn", "rank", "similar_isbn", "score"])
            )
        if params["mode"] != "recommend":
            raise ValueError(f"mode must be 'recommend' or 'similar', not {params['mode']!r}")
        if "user_id" not in frame:
            raise ValueError("mode 'recommend' needs a 'user_id' column")
        readers = {}
        for row in frame.itertuples(index=False):
            liked = getattr(row, "liked_isbns", None)
            readers[str(row.user_id).strip()] = Reader(
                age=getattr(row, "age", None),
                location=getattr(row, "location", None),
                liked_isbns=tuple(i.strip() for i in str(liked).split(",") if i.strip())
                if isinstance(liked, str)
                else (),
            )
        parts = []
        for k, group in frame.groupby(k_values.astype(int), sort=False):
            parts.append(
                recommender.recommend(
                    group["user_id"].astype(str).tolist(),
                    int(k),
                    exclude=params["exclude"],
                    readers=readers,
                    rules=rules,
                )
            )
        return pd.concat(parts, ignore_index=True)


mlflow.models.set_model(BookRecModel())
