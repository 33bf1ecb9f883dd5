"""Bayesian Personalized Ranking loss (Rendle et al., 2009)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bpr_loss(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Mean of -log sigmoid(s+ - s-); `positive` (B,), `negative` (B, n). logsigmoid keeps it finite
    for any score gap."""
    return -F.logsigmoid(positive.unsqueeze(1) - negative).mean()


def l2_penalty(*tensors: torch.Tensor) -> torch.Tensor:
    """Sum of squares of the given (batch) embeddings, divided by the batch size."""
    batch = tensors[0].shape[0]
    return sum(t.pow(2).sum() for t in tensors) / batch
