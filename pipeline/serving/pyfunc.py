"""The bookrec model as an MLflow pyfunc, logged with models-from-code: MLflow stores this file and the
model folder's files (safetensors, JSON, Parquet), never a pickle.

Input (one row per request): `user_id` (raw Book-Crossing User-ID, string) and `k`; for readers the
model has never seen, optionally `age`, `location` and `liked_isbns` (comma-separated). Output: one
row per recommendation, `user_id`, `rank` (1 = best), `isbn`, `score`.
Params: `exclude` = "all" (every book the reader is known to have read; default) or "train" (train and
validation only, which reproduces the test metrics); `mode` = "recommend" (default) or "similar"
(an `isbn` column in; out `isbn`, `rank`, `similar_isbn`, `score`); `max_per_author` = "default"
(the model's cap) or a number (0: no cap).
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

from pipeline.serving.contract import DEFAULT_PARAMS


class BookRecModel(PythonModel):
    """Loads the model folder once; every predict call is a batch of requests."""

    def load_context(self, context) -> None:
        from pipeline.serving.service import BookRecommender

        folder = Path(context.artifacts["weights"]).parent
        self.recommender = BookRecommender.from_folder(folder)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        from pipeline.serving.service import Reader

        params = {**DEFAULT_PARAMS, **(params or {})}
        cap = params["max_per_author"]
        rules = self.recommender.rules_for(cap if cap == "default" else int(cap))
        frame = pd.DataFrame(model_input)
        k_values = frame["k"] if "k" in frame else pd.Series(10, index=frame.index)
        if k_values.isna().any():
            k_values = k_values.fillna(10)
        if params["mode"] == "similar":
            if "isbn" not in frame:
                raise ValueError("mode 'similar' needs an 'isbn' column")
            parts = [
                self.recommender.similar_books([isbn], int(k), rules)
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
                self.recommender.recommend(
                    group["user_id"].astype(str).tolist(),
                    int(k),
                    exclude=params["exclude"],
                    readers=readers,
                    rules=rules,
                )
            )
        return pd.concat(parts, ignore_index=True)


mlflow.models.set_model(BookRecModel())
