"""MoSE: Mixture-of-Steering-Experts, the part that decides *how* to steer (DESIGN.md section 1).

Experts: the training deltas are normalised, reduced by PCA (<= 256 dims) and clustered with KMeans
for K in 4..10; K is chosen by the Calinski-Harabasz index and the prototype bank C holds the
cluster means (in the original space). The residual basis U is the top-k PCA of the centred deltas.
A router attends from the query state over the bank, and an MLP gives coefficients on U:

    q = W_q x + b_q,  Kc = W_k C + b_k,  Vc = W_v C + b_v,      x = input_scale * h
    a = softmax(q Kc^T / sqrt(d) / t),   beta = MLP(x)
    s = gamma * (a Vc + beta U^T)

trained with MSE against the delta (AdamW 5e-4, 100 warm-up steps then cosine floored at 0.7, batch
up to 136, at most 100 epochs, early stop on validation loss). ``input_scale`` (1 / median state norm)
is our addition: it keeps the MLP's inputs O(1) and folds into the exported matrices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import DataError

K_RANGE = range(4, 11)


@dataclass
class Experts:
    prototypes: np.ndarray
    """C (K, d)."""
    basis: np.ndarray
    """U (d, k)."""
    labels: np.ndarray
    ch_table: dict[int, float]
    sizes: list[int]


def build_experts(deltas: np.ndarray, *, k_basis: int = 10, k_range: range = K_RANGE, seed: int = 0) -> Experts:
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.metrics import calinski_harabasz_score

    n, d = deltas.shape
    if n < k_range.start + 1:
        raise DataError(
            f"MoSE needs more than {k_range.start} training targets to form {k_range.start}+ experts; got {n}"
        )
    x = deltas.astype(np.float64)
    unit = x / (np.linalg.norm(x, axis=1, keepdims=True) + 1e-12)
    reduced = PCA(n_components=min(256, n - 1, d), random_state=seed).fit_transform(unit)
    table: dict[int, float] = {}
    labelings: dict[int, np.ndarray] = {}
    for k in k_range:
        if k >= n:
            break
        labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(reduced)
        if len(set(labels)) < 2:
            continue
        table[k] = float(calinski_harabasz_score(reduced, labels))
        labelings[k] = labels
    if not table:
        raise DataError("KMeans could not form experts from these deltas (too few or identical examples)")
    best = max(table, key=lambda k: table[k])
    labels = labelings[best]
    protos = np.stack([unit[labels == c].mean(0) for c in range(best)])
    k_basis = min(k_basis, n - 1, d)
    basis = PCA(n_components=k_basis, random_state=seed).fit(x - x.mean(0)).components_.T
    sizes = [int((labels == c).sum()) for c in range(best)]
    return Experts(protos.astype(np.float32), basis.astype(np.float32), labels, table, sizes)


DEFAULT_MAX_HIDDEN = 1024
"""Default cap on the mixing MLP's hidden width. The released scripts use hidden = d; at d = 4096 that
matrix is 64 MiB of the head's 65 MiB and one read of it per query is ~3 ms (memory-bandwidth bound,
docs/BENCHMARKS.md section 2). Capped at 1024 the head is ~4x smaller and faster; for d <= 1024 (SmolLM2)
nothing changes. ``train --mlp-hidden`` overrides it."""


def make_module(d: int, prototypes: np.ndarray, basis: np.ndarray, *, hidden: int | None = None,
                gamma: float = 1.0, input_scale: float = 1.0):  # type: ignore[no-untyped-def]
    """The torch module (built lazily so importing this file needs no torch)."""
    import torch
    from torch import nn

    class MoSE(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            h = hidden or min(d, DEFAULT_MAX_HIDDEN)
            self.query = nn.Linear(d, d)
            self.key = nn.Linear(d, d)
            self.value = nn.Linear(d, d)
            self.mix = nn.Sequential(nn.Linear(d, h), nn.ReLU(), nn.Linear(h, basis.shape[1]))
            self.t = nn.Parameter(torch.tensor(1.0))
            self.gamma = nn.Parameter(torch.tensor(float(gamma)))
            self.register_buffer("C", torch.from_numpy(np.ascontiguousarray(prototypes, np.float32)))
            self.register_buffer("U", torch.from_numpy(np.ascontiguousarray(basis, np.float32)))
            self.register_buffer("input_scale", torch.tensor(float(input_scale)))

        def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            x = h * self.input_scale
            q = self.query(x)
            kc = self.key(self.C)
            vc = self.value(self.C)
            a = torch.softmax(q @ kc.T / math.sqrt(kc.shape[1]) / self.t, dim=-1)
            beta = self.mix(x)
            return self.gamma * (a @ vc + beta @ self.U.T), a

    return MoSE()


@dataclass
class TrainResult:
    module: Any
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    best_val: float = float("inf")
    stopped_early: bool = False


def train_mose(module: Any, h_train: np.ndarray, y_train: np.ndarray, h_val: np.ndarray, y_val: np.ndarray, *,
               lr: float = 5e-4, epochs: int = 100, batch: int = 136, warmup: int = 100, floor: float = 0.7,
               patience: int = 15, seed: int = 0, weight_decay: float = 0.01, w_train: np.ndarray | None = None,
               w_val: np.ndarray | None = None) -> TrainResult:
    """Weighted MSE(s(h), delta); keeps the parameters of the best validation epoch.

    ``w_train``/``w_val`` weight each row (default 1): negatives with a zero target and a small weight
    teach the head to propose little for prompts that should not be steered.
    """
    import copy

    import torch

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(h_train.astype(np.float32)), torch.from_numpy(y_train.astype(np.float32))
    xv, yv = torch.from_numpy(h_val.astype(np.float32)), torch.from_numpy(y_val.astype(np.float32))
    wt = torch.from_numpy((np.ones(len(xt)) if w_train is None else w_train).astype(np.float32))
    wv = torch.from_numpy((np.ones(len(xv)) if w_val is None else w_val).astype(np.float32))

    def mse(pred: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return torch.sum(w[:, None] * (pred - y) ** 2) / (torch.sum(w) * y.shape[1])

    n = xt.shape[0]
    bs = min(batch, n)
    steps_per_epoch = math.ceil(n / bs)
    total = max(1, epochs * steps_per_epoch)
    opt = torch.optim.AdamW(module.parameters(), lr=lr, weight_decay=weight_decay)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    result = TrainResult(module=module)
    best_state = copy.deepcopy(module.state_dict())
    bad = 0
    for epoch in range(1, epochs + 1):
        module.train()
        perm = torch.randperm(n, generator=gen)
        losses = []
        for i in range(0, n, bs):
            idx = perm[i : i + bs]
            pred, _ = module(xt[idx])
            loss = mse(pred, yt[idx], wt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        module.eval()
        with torch.no_grad():
            val = float(mse(module(xv)[0], yv, wv)) if len(xv) else float("nan")
        result.history.append({"epoch": epoch, "train_mse": float(np.mean(losses)), "val_mse": val,
                               "lr": float(sched.get_last_lr()[0])})
        if len(xv) == 0 or val < result.best_val:
            result.best_val, result.best_epoch = val, epoch
            best_state = copy.deepcopy(module.state_dict())
            bad = 0
        else:
            bad += 1
            if bad >= patience:
                result.stopped_early = True
                break
    module.load_state_dict(best_state)
    module.eval()
    return result
