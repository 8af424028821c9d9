"""Adaptive input embedding and projected adaptive log-softmax (Baevski & Auli; Grave et al.).

The vocabulary is split by `cutoffs` into clusters of decreasing frequency; cluster i gets
dimension d_embed // div_val**i. With no cutoffs both reduce to a plain embedding and softmax.
The vocabulary must be frequency-ordered for the clusters to make sense.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _cluster_bounds(cutoffs: list[int], n_token: int) -> list[tuple[int, int]]:
    ends = [0] + list(cutoffs) + [n_token]
    return list(zip(ends[:-1], ends[1:]))


def _projection(d_proj: int, d_emb: int) -> nn.Parameter:
    return nn.Parameter(torch.zeros(d_proj, d_emb))


class AdaptiveEmbedding(nn.Module):
    """Token ids (B, T) -> embeddings (B, T, d_proj), scaled by sqrt(d_proj) as in the original."""

    def __init__(self, n_token: int, d_embed: int, d_proj: int, cutoffs: list[int], div_val: int = 1):
        super().__init__()
        self.d_proj, self.div_val = d_proj, div_val
        self.bounds = _cluster_bounds(cutoffs, n_token)
        self.emb_scale = d_proj**0.5
        self.emb_layers = nn.ModuleList()
        self.emb_projs = nn.ParameterDict()  # keyed by cluster index; absent = no projection
        if div_val == 1:
            self.emb_layers.append(nn.Embedding(n_token, d_embed))
            if d_proj != d_embed:
                self.emb_projs["0"] = _projection(d_proj, d_embed)
        else:
            for i, (lo, hi) in enumerate(self.bounds):
                d_emb_i = d_embed // div_val**i
                self.emb_layers.append(nn.Embedding(hi - lo, d_emb_i))
                self.emb_projs[str(i)] = _projection(d_proj, d_emb_i)

    def _project(self, i: int, emb: torch.Tensor) -> torch.Tensor:
        return F.linear(emb, self.emb_projs[str(i)]) if str(i) in self.emb_projs else emb

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.div_val == 1:
            return self._project(0, self.emb_layers[0](tokens)) * self.emb_scale
        flat = tokens.reshape(-1)
        weight = self.emb_projs["0"]
        out = torch.zeros(flat.numel(), self.d_proj, dtype=weight.dtype, device=weight.device)
        for i, (lo, hi) in enumerate(self.bounds):
            idx = ((flat >= lo) & (flat < hi)).nonzero().squeeze(1)
            if idx.numel():
                out.index_copy_(0, idx, self._project(i, self.emb_layers[i](flat[idx] - lo)).to(out.dtype))
        return out.view(*tokens.shape, self.d_proj) * self.emb_scale


class ProjectedAdaptiveLogSoftmax(nn.Module):
    """Hidden (N, d_proj) -> per-token NLL (N,) in input order, or full log-probs (N, V).

    The head holds the shortlist plus one logit per tail cluster; tail cluster i reads head
    column -i (cluster_weight row n_clusters - i), the original's reversed but consistent order.
    """

    def __init__(self, n_token: int, d_embed: int, d_proj: int, cutoffs: list[int], div_val: int = 1):
        super().__init__()
        self.n_token, self.div_val = n_token, div_val
        self.bounds = _cluster_bounds(cutoffs, n_token)
        self.n_clusters = len(cutoffs)
        if self.n_clusters:
            self.cluster_weight = nn.Parameter(torch.zeros(self.n_clusters, d_embed))
            self.cluster_bias = nn.Parameter(torch.zeros(self.n_clusters))
        self.out_layers = nn.ModuleList()
        self.out_projs = nn.ParameterDict()
        if div_val == 1:
            self.out_layers.append(nn.Linear(d_embed, n_token))
            if d_proj != d_embed:
                for i in range(len(self.bounds)):
                    self.out_projs[str(i)] = _projection(d_proj, d_embed)
        else:
            for i, (lo, hi) in enumerate(self.bounds):
                d_emb_i = d_embed // div_val**i
                self.out_layers.append(nn.Linear(d_emb_i, hi - lo))
                self.out_projs[str(i)] = _projection(d_proj, d_emb_i)

    def _cluster_params(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.div_val == 1:
            lo, hi = self.bounds[i]
            weight, bias = self.out_layers[0].weight[lo:hi], self.out_layers[0].bias[lo:hi]
        else:
            weight, bias = self.out_layers[i].weight, self.out_layers[i].bias
        if i == 0 and self.n_clusters:
            weight = torch.cat([weight, self.cluster_weight], dim=0)
            bias = torch.cat([bias, self.cluster_bias], dim=0)
        return weight, bias

    def _logits(self, i: int, hidden: torch.Tensor) -> torch.Tensor:
        weight, bias = self._cluster_params(i)
        proj = self.out_projs[str(i)] if str(i) in self.out_projs else None
        if proj is not None:
            hidden = F.linear(hidden, proj.t())
        return F.linear(hidden, weight, bias)

    def forward(self, hidden: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """hidden (N, d_proj), target (N,) -> NLL (N,) in position order."""
        if not self.n_clusters:
            return -self._logits(0, hidden).log_softmax(-1).gather(1, target[:, None]).squeeze(1)
        head_logprob = self._logits(0, hidden).log_softmax(-1)  # (N, shortlist + clusters)
        nll = torch.zeros(target.shape, dtype=head_logprob.dtype, device=hidden.device)
        for i, (lo, hi) in enumerate(self.bounds):
            idx = ((target >= lo) & (target < hi)).nonzero().squeeze(1)
            if not idx.numel():
                continue
            t = (target[idx] - lo)[:, None]
            if i == 0:
                logprob = head_logprob[idx].gather(1, t).squeeze(1)
            else:
                tail = self._logits(i, hidden[idx]).log_softmax(-1)
                logprob = head_logprob[idx, -i] + tail.gather(1, t).squeeze(1)
            nll.index_copy_(0, idx, -logprob.to(nll.dtype))
        return nll

    def log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (N, d_proj) -> log-probabilities over the whole vocabulary (N, V)."""
        head_logprob = self._logits(0, hidden).log_softmax(-1)
        if not self.n_clusters:
            return head_logprob
        parts = [head_logprob[:, : self.bounds[0][1]]]
        for i in range(1, len(self.bounds)):
            parts.append(head_logprob[:, -i, None] + self._logits(i, hidden).log_softmax(-1))
        return torch.cat(parts, dim=-1)
