"""Optimizers whose step costs what the batch touched: the embedding tables take sparse gradients and an
optimizer that moves only the rows in them; the small dense part (the MLP and the output layer) takes
plain Adam.

`train.embedding_optimizer` chooses the tables' optimizer:
- `sparse_adam`: torch's SparseAdam ("lazy" Adam): two state values per weight, only the touched
  rows' moments and weights move;
- `rowwise_adagrad`: Adagrad with one accumulator per row, as TorchRec's embedding tables (FBGEMM's
  row-wise Adagrad) train: one state value per row, so a catalog of millions of books costs no
  optimizer memory to speak of.
"""

from __future__ import annotations

import torch
from torch import nn

EMBEDDING_OPTIMIZERS = ("sparse_adam", "rowwise_adagrad")


class RowwiseAdagrad(torch.optim.Optimizer):
    """Adagrad with one accumulator per table row: a touched row r with gradient g_r adds mean(g_r^2)
    to its accumulator G_r and moves by -lr * g_r / (sqrt(G_r) + eps). Rows outside the (sparse)
    gradient and their accumulators are left exactly as they were."""

    def __init__(self, params, lr: float, eps: float = 1e-8):
        super().__init__(params, {"lr": lr, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for parameter in group["params"]:
                if parameter.grad is None:
                    continue
                if not parameter.grad.is_sparse:
                    raise ValueError("RowwiseAdagrad takes the sparse gradients of embedding tables")
                grad = parameter.grad.coalesce()
                rows, values = grad.indices()[0], grad.values()
                state = self.state[parameter]
                if "sum" not in state:
                    state["sum"] = parameter.new_zeros(parameter.shape[0])
                state["sum"].index_add_(0, rows, values.pow(2).mean(dim=1))
                scale = state["sum"][rows].sqrt_().add_(group["eps"])
                parameter.index_add_(0, rows, values / scale.unsqueeze(1), alpha=-group["lr"])


def split_parameters(model: nn.Module) -> tuple[list[nn.Parameter], dict[str, list[nn.Parameter]]]:
    """The embedding tables' weights, and the dense parameters by group: `mlp` (weight decay) and
    `other` (the output layer)."""
    tables = [module.weight for module in model.modules() if isinstance(module, nn.Embedding)]
    table_ids = {id(weight) for weight in tables}
    dense: dict[str, list[nn.Parameter]] = {"mlp": [], "other": []}
    for name, parameter in model.named_parameters():
        if id(parameter) not in table_ids:
            dense["mlp" if name.startswith("mlp.") else "other"].append(parameter)
    return tables, dense


def optimizers(
    model: nn.Module,
    lr: float,
    embedding_lr: float,
    embedding_optimizer: str,
    mlp_weight_decay: float,
) -> list[torch.optim.Optimizer]:
    """[the tables' optimizer, Adam for the dense part]; L2 on the tables is in the loss (on the rows a
    batch uses), weight decay only on the MLP."""
    tables, dense = split_parameters(model)
    if embedding_optimizer == "sparse_adam":
        sparse: torch.optim.Optimizer = torch.optim.SparseAdam(tables, lr=embedding_lr)
    elif embedding_optimizer == "rowwise_adagrad":
        sparse = RowwiseAdagrad(tables, lr=embedding_lr)
    else:
        raise ValueError(
            f"embedding_optimizer must be one of {EMBEDDING_OPTIMIZERS}, not {embedding_optimizer!r}"
        )
    groups = [
        {"params": dense["mlp"], "weight_decay": mlp_weight_decay},
        {"params": dense["other"], "weight_decay": 0.0},
    ]
    return [sparse, torch.optim.Adam([g for g in groups if g["params"]], lr=lr, fused=True)]
