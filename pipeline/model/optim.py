"""Optimizers whose step costs what the batch touched: the embedding tables take sparse gradients and an
optimizer that moves only the rows in them; the small dense part (the MLP and the output layer) takes
plain Adam.

`train.embedding_optimizer` chooses the tables' optimizer:
- `sparse_adam`: "lazy" Adam, the algorithm of torch's SparseAdam (only the touched rows' moments and
  weights move; two state values per weight), in fewer passes over the touched rows (`LazyAdam`:
  torch's implementation masks and adds sparse tensors, which cost more than the step's forward and
  backward together);
- `rowwise_adagrad`: Adagrad with one accumulator per row, as TorchRec's embedding tables (FBGEMM's
  row-wise Adagrad) train: one state value per row, so a catalog of millions of books costs no
  optimizer memory to speak of.
"""

from __future__ import annotations

import math

import torch
from torch import nn

EMBEDDING_OPTIMIZERS = ("sparse_adam", "rowwise_adagrad")


class LazyAdam(torch.optim.Optimizer):
    """torch.optim.SparseAdam's algorithm: Adam whose moments and weights move at the rows of the sparse
    gradient only (the step count and bias corrections are the table's). On the CPU one compiled
    pass over the touched rows (numba) updates moments and weights in place; torch's implementation
    (and the same update as torch index operations) gathers and scatters every row several times,
    which costs several times more than the step's forward and backward."""

    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for parameter in group["params"]:
                if parameter.grad is None:
                    continue
                rows, values = _rows_of(parameter.grad, "LazyAdam")
                state = self.state[parameter]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(parameter)
                    state["exp_avg_sq"] = torch.zeros_like(parameter)
                state["step"] += 1
                step = state["step"]
                size = group["lr"] * math.sqrt(1 - beta2**step) / (1 - beta1**step)
                tables = (parameter, state["exp_avg"], state["exp_avg_sq"])
                _lazy_adam_rows(*tables, rows, values, beta1, beta2, group["eps"], size)


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
                rows, values = _rows_of(parameter.grad, "RowwiseAdagrad")
                state = self.state[parameter]
                if "sum" not in state:
                    state["sum"] = parameter.new_zeros(parameter.shape[0])
                accumulated = state["sum"].index_select(0, rows).add_(values.pow(2).mean(dim=1))
                state["sum"].index_copy_(0, rows, accumulated)
                moved = parameter.index_select(0, rows)
                moved.addcdiv_(
                    values, accumulated.sqrt_().add_(group["eps"]).unsqueeze(1), value=-group["lr"]
                )
                parameter.index_copy_(0, rows, moved)


def _rows_of(grad: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The distinct rows of a sparse row gradient and their (summed) values. A step's gradients come
    with their rows sorted and distinct, but autograd's accumulation drops the coalesced mark: one
    pass that checks the order spares a sort and a copy of the values."""
    if not grad.is_sparse:
        raise ValueError(f"{name} takes the sparse gradients of embedding tables")
    rows = grad._indices()[0]
    if not grad.is_coalesced() and not bool((rows[1:] > rows[:-1]).all()):
        grad = grad.coalesce()
        rows = grad._indices()[0]
    return rows, grad._values()


def _lazy_adam_rows(weights, exp_avg, exp_avg_sq, rows, values, beta1, beta2, eps, size) -> None:
    """Adam's update of `rows` of the three tables, in place."""
    if weights.device.type == "cpu" and weights.dtype == torch.float32:
        import numba

        from pipeline.model.kernels import lazy_adam_rows

        numba.set_num_threads(min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
        arrays = (t.detach().numpy() for t in (weights, exp_avg, exp_avg_sq))
        lazy_adam_rows(*arrays, rows.numpy(), values.contiguous().numpy(), beta1, beta2, eps, size)
        return
    moment = exp_avg.index_select(0, rows).lerp_(values, 1 - beta1)
    square = exp_avg_sq.index_select(0, rows).mul_(beta2).addcmul_(values, values, value=1 - beta2)
    exp_avg.index_copy_(0, rows, moment)
    exp_avg_sq.index_copy_(0, rows, square)
    moved = weights.index_select(0, rows).addcdiv_(moment, square.sqrt_().add_(eps), value=-size)
    weights.index_copy_(0, rows, moved)


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
        sparse: torch.optim.Optimizer = LazyAdam(tables, lr=embedding_lr)
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
