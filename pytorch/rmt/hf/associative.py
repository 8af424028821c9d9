"""Associative memory (ARMT; Rodkin, Kuratov, Bulatov, Burtsev, 2024) over a Hugging Face decoder.

    model = ARMTForCausalLM(AutoModelForCausalLM.from_pretrained(path), num_mem_tokens=16, segment_size=512,
                            d_mem=32)
    out = model(input_ids=ids, labels=ids)             # out.memory.assoc: per layer (A, z)

The segment recurrence of RMTForCausalLM, with what crosses segments stored in a matrix per
layer instead of in memory tokens. A segment is laid out [tokens T | memory M]: the M write
slots are the same learned vectors in every segment (nothing is read through them). Around
every decoder layer l, with phi = DPFP-3 (x' = [relu(x), relu(-x)], then the concatenation over
j = 1..3 of x' * roll(x', j): d_key = 6 * d_mem):

- read, into the layer's input h at every position (from the second segment on):
      h <- h + A^T phi(W_q h) / (z . phi(W_q h) + 1e-5)
- write, from the layer's outputs m_i at the M write slots, into A (d_key, d_model) and z (d_key):
      k_i = phi(W_k m_i), v_i = W_v m_i, beta_i = sigmoid(W_beta m_i),
      vbar_i = A^T k_i / (z . k_i + 1e-5)                       (what A holds for k_i; 0 at first)
      A <- A + sum_i beta_i k_i (v_i - vbar_i)^T                (the delta rule)
      z <- z + sum_i gamma_i k_i, gamma_i = clip(1 - z . k_i / |k_i|^2, 0, 1), not differentiated
  All M writes of a segment use A and z as they were before it.

W_v starts at zero, so a fresh ARMT writes nothing and reads nothing: each segment is the bare
backbone on its tokens. Shapes here: A (B, d_key, d_model), z (B, d_key), per layer; the state
is `MemoryState(assoc=(A_0, z_0, A_1, z_1, ...))`, carried (and back-propagated through under
BPTT) like RMT's memory. The backbone is not modified: the read and write run in forward hooks
of its decoder layers, active only inside the wrapper's own calls, so the backbone saves, loads,
takes LoRA adapters and shards (FSDP) as it is.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from rmt.hf.modeling import RMTForCausalLM, decoder_layers
from rmt.model.recurrence import MemoryState

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
        nn.init.zeros_(self.v.weight)  # a fresh memory stores zeros: the model starts as the backbone

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


@dataclass
class _Pass:
    """What the hooks of one backbone call see: each layer's (A, z) to read (None: nothing to
    read), where the write slots are (None: no write in this call) and the new (A, z) per layer."""
    read: list = field(default_factory=list)
    write: slice | None = None
    written: dict = field(default_factory=dict)


class AssociativeLayers(nn.Module):
    """The memories of every decoder layer of a backbone, hooked around its layers."""

    def __init__(self, layers: list[nn.Module], d_model: int, d_mem: int):
        super().__init__()
        if not layers:
            raise ValueError("associative memory needs the backbone's decoder layers (its _no_split_modules)")
        self.memories = nn.ModuleList(AssociativeMemory(d_model, d_mem) for _ in layers)
        self._pass: _Pass | None = None
        for i, layer in enumerate(layers):
            layer.register_forward_pre_hook(self._reader(i), with_kwargs=True)
            layer.register_forward_hook(self._writer(i))

    def _reader(self, i: int):
        def hook(module, args, kwargs):
            p = self._pass
            if p is None or p.read[i] is None:
                return None
            A, z = p.read[i]
            if args:
                return (self.memories[i].read(args[0], A, z), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": self.memories[i].read(kwargs["hidden_states"], A, z)}
        return hook

    def _writer(self, i: int):
        def hook(module, args, output):
            p = self._pass
            if p is not None and p.write is not None:
                h = output[0] if isinstance(output, tuple) else output
                before = p.read[i] or (None, None)
                p.written[i] = self.memories[i].write(h[:, p.write], *before)
        return hook

    @contextlib.contextmanager
    def active(self, assoc: tuple | None, write: slice | None):
        """Hooks on for one backbone call: read from `assoc` (None: nothing yet), write from the
        slots at `write`. Yields the _Pass whose `written` holds each layer's new (A, z)."""
        n = len(self.memories)
        read = [None] * n if assoc is None else [(assoc[2 * i], assoc[2 * i + 1]) for i in range(n)]
        self._pass = _Pass(read, write)
        try:
            yield self._pass
        finally:
            self._pass = None

    def state(self, p: _Pass) -> tuple:
        return tuple(t for i in range(len(self.memories)) for t in p.written[i])


class ARMTForCausalLM(RMTForCausalLM):
    """RMTForCausalLM with associative memory (module docstring): segments [tokens | write slots],
    state MemoryState(assoc=...), the same loss, read, generate, save and load."""

    kind = "causal-lm-associative"

    def __init__(self, backbone: nn.Module, num_mem_tokens: int, segment_size: int, bptt_depth: int | None = None,
                 recompute: bool = False, freeze_backbone: bool = False, d_mem: int = 32, **kwargs):
        if num_mem_tokens <= 0 or d_mem <= 0:
            raise ValueError(f"associative memory writes through memory tokens into keys of width d_mem: both must "
                             f"be positive, got num_mem_tokens {num_mem_tokens}, d_mem {d_mem}")
        if recompute:
            raise ValueError("recompute does not carry associative memory yet: train without it")
        if kwargs.pop("memory_norm", False):
            raise ValueError("memory_norm rescales written memory tokens; associative memory writes none")
        super().__init__(backbone, num_mem_tokens, segment_size, bptt_depth, recompute, freeze_backbone, **kwargs)
        self.config.memory, self.config.d_mem = "associative", d_mem
        self.assoc = AssociativeLayers(decoder_layers(backbone), self.config.d_model, d_mem)

    @staticmethod
    def saved_options(cfg: dict) -> dict:
        return {"d_mem": cfg["d_mem"]}

    def segment(self, x, state: MemoryState, **backbone_kwargs):
        b, t = x.ids.shape
        m = self.config.num_mem_tokens
        embeds = torch.cat([self.embed(x.ids), self.initial_memory(b)], 1)
        with self.assoc.active(state.assoc, write=slice(t, t + m)) as p:
            out = self.call_backbone(embeds, torch.cat([x.mask, x.mask.new_ones(b, m)], 1), **backbone_kwargs)
        new = self.assoc.state(p)
        old = state.assoc or tuple(torch.zeros_like(n) for n in new)  # a row with no token writes nothing
        keep = x.mask.any(1)
        new = tuple(torch.where(keep.view(-1, *[1] * (n.dim() - 1)), n, o) for n, o in zip(new, old))
        return out.logits[:, :t], MemoryState(assoc=new)

    def segment_cache(self, state: MemoryState, batch: int):
        from rmt.hf.generation import AssociativeSegmentCache
        return AssociativeSegmentCache(self, state, batch)
