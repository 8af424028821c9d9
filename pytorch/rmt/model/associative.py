"""Associative memory (ARMT; Rodkin, Kuratov, Bulatov, Burtsev, 2024): one layer's matrix memory,
its read and its delta-rule write. The Transformer-XL core (rmt.model.transformer, memory
"associative") and the Hugging Face wrapper (rmt.hf.associative) both use it.

With phi = DPFP-3 (x' = [relu(x), relu(-x)], then the concatenation over j = 1..3 of
x' * roll(x', j): d_key = 6 * d_mem), per layer, A (B, d_key, d_model) and z (B, d_key):

- read, into the layer's input h at every position:
      h <- h + A^T phi(W_q h) / (z . phi(W_q h) + 1e-5)
- write, from the layer's outputs m_i at the M write slots:
      k_i = phi(W_k m_i), v_i = W_v m_i, beta_i = sigmoid(W_beta m_i),
      vbar_i = A^T k_i / (z . k_i + 1e-5)                       (what A holds for k_i; 0 at first)
      A <- A + sum_i beta_i k_i (v_i - vbar_i)^T                (the delta rule)
      z <- z + sum_i gamma_i k_i, gamma_i = clip(1 - z . k_i / |k_i|^2, 0, 1), not differentiated
  All M writes of a segment use A and z as they were before it.

W_v starts at zero: a fresh memory stores zeros, so the model starts as if it had none.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-5


def dpfp(x: torch.Tensor, nu: int = 3) -> torch.Tensor:
    """Deterministic parameter-free projection (Schlag et al., 2021): (..., d) -> (..., 2 * nu * d), >= 0."""
    x = torch.cat([F.relu(x), F.relu(-x)], -1)
    return torch.cat([x * x.roll(j, dims=-1) for j in range(1, nu + 1)], -1)


class AssociativeMemory(nn.Module):
    """One layer's projections and its read and write (module docstring)."""

    def __init__(self, d_model: int, d_mem: int):
        super().__init__()
        self.q = nn.Linear(d_model, d_mem, bias=False)
        self.k = nn.Linear(d_model, d_mem, bias=False)
        self.v = nn.Linear(d_model, d_model, bias=False)
        self.beta = nn.Linear(d_model, 1)
        nn.init.zeros_(self.v.weight)  # a fresh memory stores zeros: the model starts as without one

    def read(self, h: torch.Tensor, A: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """h (B, N, C) plus what A recalls for its queries."""
        q = dpfp(self.q(h)).to(A.dtype)
        return h + (torch.einsum("bnk,bkc->bnc", q, A) / (q @ z.unsqueeze(-1) + EPS)).to(h.dtype)

    def write(self, m: torch.Tensor, A: torch.Tensor | None, z: torch.Tensor | None):
        """The new (A, z) after the write slots' outputs m (B, M, C); A, z None: empty memory."""
        k = dpfp(self.k(m)).float()
        v = self.v(m).float()
        beta = torch.sigmoid(self.beta(m)).float()
        if A is None:
            A = k.new_zeros(k.size(0), k.size(-1), m.size(-1))
            z = k.new_zeros(k.size(0), k.size(-1))
        zk = (k @ z.unsqueeze(-1)).squeeze(-1)  # (B, M)
        stored = torch.einsum("bmk,bkc->bmc", k, A) / (zk.unsqueeze(-1) + EPS)
        gamma = (1 - zk / (k * k).sum(-1).clamp(min=1e-12)).clamp(0, 1).detach()
        A = A + torch.einsum("bmk,bmc->bkc", k, beta * (v - stored))
        z = z + (gamma.unsqueeze(-1) * k).sum(1)
        return A, z


def read_all(memories, assoc: tuple | None) -> list:
    """Each layer's (A, z) of a MemoryState's `assoc` (A_0, z_0, A_1, z_1, ...); None: nothing to read yet."""
    if assoc is None:
        return [None] * len(memories)
    return [(assoc[2 * i], assoc[2 * i + 1]) for i in range(len(memories))]
