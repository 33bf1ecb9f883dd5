"""Optimizers whose step costs what the batch touched: the embedding tables take sparse gradients and an
optimizer that moves only the rows in them; the small dense part (the MLP and the output layer) takes
plain Adam.

`train.embedding_optimizer` chooses the tables' optimizer:
- `adam` (`DeferredAdam`): Adam's own trajectory, with the work of the rows a step did not touch
  deferred. Dense Adam keeps moving a row for steps after its gradient (its momentum decays with
  beta1, its second moment with beta2); here that tail of skipped steps is applied in closed form just
  before a step reads the row, and to every row at the end of an epoch (`catch_up`), so every read
  and every validation sees dense Adam's weights (up to eps in the skipped steps) while a step costs
  O(touched rows). Two state values per weight and one per row.
- `lazy_adam` (`LazyAdam`): torch's SparseAdam algorithm, moments and weights moving only when
  touched; a rare book then moves about a tenth of what dense Adam moves it, which costs accuracy.
- `rowwise_adagrad`: Adagrad with one accumulator per row, as TorchRec's embedding tables (FBGEMM's
  row-wise Adagrad) train: one state value per row, so a catalog of millions of books costs no
  optimizer memory to speak of.
- `auto`: `adam` while its state (two values per weight of the tables) fits
  `train.optimizer_state_gib`, `rowwise_adagrad` beyond.

On the CPU the row updates are compiled loops (`pipeline.model.kernels`, numba): torch's index
operations gather and scatter every row several times, which cost more than the step's forward and
backward together; on a GPU they are torch operations.
"""

from __future__ import annotations

import math
import weakref

import numpy as np
import torch
from torch import nn

from pipeline.model.rows import before_training_reads

EMBEDDING_OPTIMIZERS = ("auto", "adam", "lazy_adam", "rowwise_adagrad")
TAIL_STEPS = 300  # skipped steps whose momentum is summed: beta1 / sqrt(beta2) ** 300 is about 2e-14


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


def _compiled(tensor: torch.Tensor) -> bool:
    """Whether the compiled CPU loops apply (and numba's threads match torch's)."""
    if tensor.device.type != "cpu" or tensor.dtype != torch.float32:
        return False
    import numba

    numba.set_num_threads(min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    return True


class _Tails:
    """For a table's Adam: the size of the momentum tail a row owes for the steps it skipped.

    A row last touched at step t0 and not at steps t0+1 .. t-1 would have moved, under dense Adam, by
    sum_j scale[t0 + j] * rho**j * m / sqrt(v) (m, v its moments at t0; rho = beta1 / sqrt(beta2);
    scale[s] = lr_s * sqrt(1 - beta2**s) / (1 - beta1**s)). The sums for the last TAIL_STEPS values of
    t0 come from one backward recursion per step; older ones were stored when they left that window
    (their later terms are below float precision)."""

    def __init__(self, beta1: float, beta2: float):
        self.rho = beta1 / math.sqrt(beta2)
        self.beta1, self.beta2 = beta1, beta2
        self.scales = np.zeros(1024)  # scales[s] of step s (1-based)
        self.settled = np.zeros(1024)  # the full tail of each t0 that left the window
        self.steps = 0

    def record(self, lr: float) -> None:
        """Step `steps + 1` happened with learning rate `lr`."""
        self.steps += 1
        s = self.steps
        if s >= len(self.scales):
            self.scales = np.concatenate([self.scales, np.zeros(len(self.scales))])
            self.settled = np.concatenate([self.settled, np.zeros(len(self.settled))])
        self.scales[s] = lr * math.sqrt(1 - self.beta2**s) / (1 - self.beta1**s)

    def window(self, now: int) -> tuple[np.ndarray, int]:
        """Tails owed at step `now` by rows last touched at t0 = start .. now - 1: (sums, start). Also
        settles the tail of t0 = start, whose sum is complete."""
        start = now - 1 - TAIL_STEPS
        sums = np.zeros(TAIL_STEPS + 1)
        for i in range(TAIL_STEPS - 1, -1, -1):  # t0 = start + i, from now - 2 down
            t0 = start + i
            if t0 + 1 >= 1:
                sums[i] = self.rho * (self.scales[t0 + 1] + sums[i + 1])
        if start >= 1:
            self.settled[start] = sums[0]
        return sums, start


class DeferredAdam(torch.optim.Optimizer):
    """Adam with the work of untouched rows deferred (see the module's docstring). After `catch_up()`
    the weights and moments are those of torch's Adam over every step, up to eps in the skipped steps;
    between two catch-ups a row the batches did not touch is left exactly as it was."""

    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})
        self.tails = _Tails(*betas)
        for parameter in self.param_groups[0]["params"]:  # rows a step reads first catch up
            before_training_reads(parameter, _reader(self, parameter))

    def release(self) -> None:
        """Training is over: reads no longer catch up (the callbacks hold no reference that would
        keep this optimizer's state alive, but they cost a lookup)."""
        for parameter in self.param_groups[0]["params"]:
            before_training_reads(parameter, None)

    def _state(self, parameter: torch.Tensor) -> dict:
        state = self.state[parameter]
        if not state:
            state["exp_avg"] = torch.zeros_like(parameter)
            state["exp_avg_sq"] = torch.zeros_like(parameter)
            state["last"] = torch.zeros(len(parameter), dtype=torch.long, device=parameter.device)
        return state

    @torch.no_grad()
    def step(self, closure=None):
        (group,) = self.param_groups  # one learning rate for every table
        now = self.tails.steps + 1
        sums, start = self.tails.window(now)
        beta1, beta2 = group["betas"]
        correction = math.sqrt(1 - beta2**now)
        size = group["lr"] * correction / (1 - beta1**now)
        for parameter in group["params"]:
            if parameter.grad is None:
                continue
            rows, values = _rows_of(parameter.grad, "DeferredAdam")
            tables = (parameter, *(self._state(parameter)[k] for k in ("exp_avg", "exp_avg_sq", "last")))
            owed = (now, sums, start, self.tails.settled, beta1, beta2, group["eps"])
            _deferred_adam(*tables, rows, values, owed, size, group["eps"] * correction)
        self.tails.record(group["lr"])

    @torch.no_grad()
    def _catch_up_rows(self, parameter: torch.Tensor, rows: torch.Tensor) -> None:
        """`rows` of `parameter` owe nothing more (as of the last step): what a step reads is then
        what dense Adam would read, and its own update owes no tail."""
        if not self.tails.steps or parameter not in self.state:
            return
        (group,) = self.param_groups
        now = self.tails.steps + 1
        sums, start = self.tails.window(now)
        state = self.state[parameter]
        tables = (parameter, state["exp_avg"], state["exp_avg_sq"], state["last"])
        owed = (now, sums, start, self.tails.settled, *group["betas"], group["eps"])
        _deferred_adam(*tables, rows, None, owed, 0.0, 0.0)

    @torch.no_grad()
    def catch_up(self) -> None:
        """Every row owes nothing more: apply the tails of the steps each row skipped since it was
        last touched (what dense Adam did at those steps), as of the last step."""
        (group,) = self.param_groups
        if not self.tails.steps:
            return
        now = self.tails.steps + 1
        sums, start = self.tails.window(now)
        beta1, beta2 = group["betas"]
        for parameter in group["params"]:
            if parameter not in self.state:
                continue
            tables = (parameter, *(self.state[parameter][k] for k in ("exp_avg", "exp_avg_sq", "last")))
            owed = (now, sums, start, self.tails.settled, beta1, beta2, group["eps"])
            _deferred_adam(
                *tables, torch.arange(len(parameter), device=parameter.device), None, owed, 0.0, 0.0
            )


def _reader(optimizer: DeferredAdam, parameter: torch.Tensor):
    """A read callback that keeps neither the optimizer nor the parameter alive."""
    optimizer_ref, parameter_ref = weakref.ref(optimizer), weakref.ref(parameter)

    def catch_up(rows: torch.Tensor) -> None:
        owner, table = optimizer_ref(), parameter_ref()
        if owner is not None and table is not None:
            owner._catch_up_rows(table, rows)

    return catch_up


def _deferred_adam(weights, exp_avg, exp_avg_sq, last, rows, values, owed, size, eps_hat) -> None:
    """The tails the distinct `rows` owe, then Adam's step `now` with their gradient `values` (values
    None: the rows only catch up to step now - 1)."""
    now, sums, start, settled, beta1, beta2, eps = owed
    if _compiled(weights):
        from pipeline.model.kernels import deferred_adam_rows

        arrays = [t.detach().numpy() for t in (weights, exp_avg, exp_avg_sq, last)]
        stepping = values is not None
        gradient = values.contiguous().numpy() if stepping else np.zeros((0, weights.shape[1]), np.float32)
        deferred_adam_rows(
            *arrays,
            rows.numpy(),
            gradient,
            stepping,
            now,
            sums,
            start,
            settled,
            beta1,
            beta2,
            eps,
            size,
            eps_hat,
        )
        return
    chosen = rows
    t0 = last.index_select(0, chosen)
    skipped = (now - 1 - t0).clamp(min=0)
    owing = (t0 > 0) & (skipped > 0)
    window = torch.from_numpy(sums).to(weights.device)
    old = torch.from_numpy(settled[: max(now, 1)]).to(weights.device)
    tail = (
        torch.where(t0 >= start, window[(t0 - start).clamp(0, TAIL_STEPS)], old[t0.clamp(0, len(old) - 1)])
        * owing
    )
    decay = skipped.double()
    moment, square = exp_avg.index_select(0, chosen), exp_avg_sq.index_select(0, chosen)
    moved = weights.index_select(0, chosen)
    moved -= (tail.float().unsqueeze(1) * moment) / (square.sqrt() + eps)
    moment *= torch.where(owing, beta1**decay, 1.0).float().unsqueeze(1)
    square *= torch.where(owing, beta2**decay, 1.0).float().unsqueeze(1)
    if values is not None:
        moment.lerp_(values, 1 - beta1)
        square.mul_(beta2).addcmul_(values, values, value=1 - beta2)
        moved.addcdiv_(moment, square.sqrt().add_(eps_hat), value=-size)
        last.index_fill_(0, chosen, now)
    else:
        last.index_copy_(0, chosen, torch.where(t0 > 0, now - 1, t0))
    for table, rows_of_table in ((weights, moved), (exp_avg, moment), (exp_avg_sq, square)):
        table.index_copy_(0, chosen, rows_of_table)


class LazyAdam(torch.optim.Optimizer):
    """torch.optim.SparseAdam's algorithm: Adam whose moments and weights move at the rows of the sparse
    gradient only (the step count and bias corrections are the table's)."""

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


def _lazy_adam_rows(weights, exp_avg, exp_avg_sq, rows, values, beta1, beta2, eps, size) -> None:
    """Adam's update of `rows` of the three tables, in place."""
    if _compiled(weights):
        from pipeline.model.kernels import lazy_adam_rows

        arrays = (t.detach().numpy() for t in (weights, exp_avg, exp_avg_sq))
        lazy_adam_rows(*arrays, rows.numpy(), values.contiguous().numpy(), beta1, beta2, eps, size)
        return
    moment = exp_avg.index_select(0, rows).lerp_(values, 1 - beta1)
    square = exp_avg_sq.index_select(0, rows).mul_(beta2).addcmul_(values, values, value=1 - beta2)
    exp_avg.index_copy_(0, rows, moment)
    exp_avg_sq.index_copy_(0, rows, square)
    moved = weights.index_select(0, rows).addcdiv_(moment, square.sqrt_().add_(eps), value=-size)
    weights.index_copy_(0, rows, moved)


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


def table_optimizer(tables: list[nn.Parameter], choice: str, state_gib: float) -> str:
    """The tables' optimizer `choice` resolved: `auto` is `adam` while its two state values per weight
    fit `state_gib`, `rowwise_adagrad` beyond."""
    if choice != "auto":
        return choice
    state = 2 * sum(t.numel() * t.element_size() for t in tables)
    return "adam" if state <= state_gib * 2**30 else "rowwise_adagrad"


def optimizers(
    model: nn.Module,
    lr: float,
    embedding_lr: float,
    embedding_optimizer: str,
    mlp_weight_decay: float,
    state_gib: float = float("inf"),
) -> list[torch.optim.Optimizer]:
    """[the tables' optimizer, Adam for the dense part]; L2 on the tables is in the loss (on the rows a
    batch uses), weight decay only on the MLP."""
    tables, dense = split_parameters(model)
    choice = table_optimizer(tables, embedding_optimizer, state_gib)
    if choice == "adam":
        sparse: torch.optim.Optimizer = DeferredAdam(tables, lr=embedding_lr)
    elif choice == "lazy_adam":
        sparse = LazyAdam(tables, lr=embedding_lr)
    elif choice == "rowwise_adagrad":
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
