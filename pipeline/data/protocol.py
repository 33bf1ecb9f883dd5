"""Protocol bx-implicit-v2 in one place (pure): what counts as a positive, and the protocol's name.

v2 (docs/metrics.md) keeps v1's data (positives, 5-core) and ranks by serving's
rule: every book the reader is known to have interacted with, their explicit ratings 1-4, and every
other edition of those are excluded; a list holds one edition per work and at most
`serve.max_per_author` books by one author.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

PROTOCOL = "bx-implicit-v2"


def is_positive(ratings: int | np.ndarray | pd.Series, min_explicit_rating: int) -> bool | np.ndarray | pd.Series:
    """Implicit interactions (rating 0) and explicit ratings >= the threshold are positives; explicit
    ratings below it are dislikes. Works on scalars, numpy arrays and pandas Series."""
    ratings = np.asarray(ratings) if isinstance(ratings, list | tuple) else ratings
    return (ratings == 0) | (ratings >= min_explicit_rating)


RATING_VALUES = tuple(range(11))  # Book-Crossing's 0 (implicit) and 1..10


def positive_values(min_explicit_rating: int) -> tuple[int, ...]:
    """The rating values `is_positive` takes for positives (for engines that filter by value)."""
    return tuple(r for r in RATING_VALUES if is_positive(r, min_explicit_rating))
