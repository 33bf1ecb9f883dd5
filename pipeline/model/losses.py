"""Bayesian Personalized Ranking loss (Rendle et al., 2009)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bpr_loss(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Mean of -log sigmoid(s+ - s-); `positive` (B,), `negative` (B, n). logsigmoid keeps it finite
    for any score gap."""
    return -F.logsigmoid(positive.unsqueeze(1) - negative).mean()


def item_l2(*item_vectors: torch.Tensor) -> torch.Tensor:
    """L2 on the item vectors a batch uses: for each (B, 1 + n, d) tensor of positive and sampled negative
    vectors, the mean squared norm of the positives plus the mean squared norm of the negatives."""
    total = torch.zeros(())
    for vectors in item_vectors:
        squared = vectors.pow(2).sum(-1)
        total = total + squared[:, 0].mean() + squared[:, 1:].mean()
    return total
