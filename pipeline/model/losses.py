"""Bayesian Personalized Ranking loss (Rendle et al., 2009)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bpr_loss(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Mean of -log sigmoid(s+ - s-); `positive` (B,), `negative` (B, n). logsigmoid keeps it finite
    for any score gap."""
    return -F.logsigmoid(positive.unsqueeze(1) - negative).mean()


def item_l2(table, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """L2 on the item vectors a batch uses: the mean squared norm of the positives' vectors plus the
    mean squared norm of the sampled negatives' (every drawn negative, hardest or not), summed over
    the vector tables of `table` (an `ItemVectors`; its bias is not regularised). `positive` (B,) and
    `negative` (B, n) are rows of `table`: in training, the batch's distinct books.

    Computed on the table's rows with each row's weight = how often the batch drew it, which is the
    same sum as over the gathered (B, 1 + n, d) vectors without gathering them; rows the batch did not
    draw get no gradient at all."""
    n_rows = len(table.gmf)
    weights = (
        torch.bincount(positive, minlength=n_rows) / positive.numel()
        + torch.bincount(negative.flatten(), minlength=n_rows) / negative.numel()
    )
    squared = sum(vectors.pow(2).sum(-1) for vectors in (table.gmf, table.mlp))
    return (weights * squared).sum()
