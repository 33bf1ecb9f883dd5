"""Serving helpers that need no trained model."""

from __future__ import annotations

import pandas as pd

from pipeline.serving.service import other_editions


def test_other_editions_link_isbns_of_the_same_book():
    items = pd.DataFrame(
        {
            "title": ["The Hobbit", "The Hobbit (Paperback)", "the hobbit!", "The Hobbit", None, None],
            "author": ["J.R.R. Tolkien", "J.R.R. Tolkien", "j.r.r. tolkien", "Someone Else", "A", "A"],
        }
    )
    links = other_editions(items)
    assert set(links[0].indices) == {0, 1, 2}
    assert links[3].nnz == 0  # same title, another author: another book, with no other edition
    assert links[4].nnz == 0 and links[5].nnz == 0  # books without a title are never linked
