"""The pyfunc's contract, shared by the model file (pyfunc.py) and the code that logs it (tracking.py),
so that importing it has no side effect (pyfunc.py registers itself with MLflow when loaded)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from mlflow.models import ModelSignature

DEFAULT_PARAMS = {"exclude": "all", "mode": "recommend", "max_per_author": "default"}


def bundle_artifacts(folder: Path) -> dict[str, str]:
    """Every file of the model folder as one named artifact (they all land in one directory)."""
    from pipeline.storage.bundle import FILES, NEIGHBOURHOOD

    present = [*FILES, *([NEIGHBOURHOOD] if (Path(folder) / NEIGHBOURHOOD).is_file() else [])]
    return {Path(name).stem: str(Path(folder) / name) for name in present}


def model_signature() -> tuple[ModelSignature, pd.DataFrame]:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema(
        [
            ColSpec("string", "user_id", required=False),
            ColSpec("long", "k", required=False),
            ColSpec("double", "age", required=False),
            ColSpec("string", "location", required=False),
            ColSpec("string", "liked_isbns", required=False),
            ColSpec("string", "isbn", required=False),
        ]
    )
    outputs = Schema(
        [
            ColSpec("string", "user_id"),
            ColSpec("long", "rank"),
            ColSpec("string", "isbn"),
            ColSpec("double", "score"),
        ]
    )
    params = ParamSchema([ParamSpec(name, "string", default) for name, default in DEFAULT_PARAMS.items()])
    example = pd.DataFrame({"user_id": ["0"], "k": [5]})
    return ModelSignature(inputs=inputs, outputs=outputs, params=params), example
