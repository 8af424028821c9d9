"""Recurrent state carried between segments, and how gradients flow through it.

Two things travel from one segment to the next (RMT §3):
- `mem`: the write-memory outputs (B, M, C), the next segment's memory tokens. None means
  "start from the learned initial memory" (the model expands its parameter).
- `xl`: the Transformer-XL cache, n_layer + 1 tensors (B, L, C), always detached. It covers the
  whole concatenated sequence, so it holds memory-token positions too (as the original did).

Gradient through memory is controlled by the caller, never by the model:
- full BPTT: pass the state on as it is;
- none: `state.detach()` before every segment;
- truncated to D segments: `forward_with_replay`, which recomputes the last D segments from the
  memory D segments back (the original task scripts' scheme; the LM script meant to do this too).
"""
from __future__ import annotations

from collections import deque
from typing import NamedTuple, Sequence

import torch
from torch.utils.checkpoint import checkpoint


class MemoryState(NamedTuple):
    mem: torch.Tensor | None = None  # (B, M, C)
    xl: tuple[torch.Tensor, ...] | None = None  # n_layer + 1 of (B, L, C)

    def detach(self) -> "MemoryState":
        mem = None if self.mem is None else self.mem.detach()
        xl = None if self.xl is None else tuple(t.detach() for t in self.xl)
        return MemoryState(mem, xl)

    def to(self, *args, **kwargs) -> "MemoryState":
        mem = None if self.mem is None else self.mem.to(*args, **kwargs)
        xl = None if self.xl is None else tuple(t.to(*args, **kwargs) for t in self.xl)
        return MemoryState(mem, xl)

    def select(self, index: torch.Tensor | slice) -> "MemoryState":
        """Keep the batch rows `index` (e.g. one DDP shard or a subset of samples)."""
        mem = None if self.mem is None else self.mem[index]
        xl = None if self.xl is None else tuple(t[index] for t in self.xl)
        return MemoryState(mem, xl)


class Segment(NamedTuple):
    x: torch.Tensor  # (B, T_in) input tokens
    y: torch.Tensor  # (B, T) targets
    state: MemoryState  # state before this segment, detached (or initial)


def forward_with_replay(model, x, y, state: MemoryState, history: Sequence[Segment]):
    """Run segment (x, y) after re-running `history` (oldest first) from its first stored memory.

    The current loss then back-propagates through len(history) recomputed segments and stops
    there. Each replayed segment uses its own stored XL cache; the current one uses `state.xl`.
    Returns (nll (B, T), new_state, [nll of each replayed segment]).
    """
    replay_nll = []
    if history:
        mem = history[0].state.mem
        for seg in history:
            nll, replayed = model(seg.x, seg.y, MemoryState(mem, seg.state.xl))
            mem = replayed.mem
            replay_nll.append(nll)
        state = MemoryState(mem, state.xl)
    nll, new_state = model(x, y, state)
    return nll, new_state, replay_nll


class Recomputed:
    """Calls `model` under activation checkpointing: a segment keeps only its inputs (memory,
    cache, tokens) and recomputes its activations in the backward pass, so BPTT over S segments
    holds one segment's activations at a time. Dropout masks and autocast are replayed exactly.

    When gradient flows through the memory (RMT under BPTT), the segment is one reentrant
    checkpoint: a single autograd node per segment. The non-reentrant kind keeps every op's
    node of every segment alive until backward (about 1 KB each, a few hundred per layer),
    which at the copy shape cost more than the memory states themselves. Reentrant needs an
    input that requires grad, so segments without one (Transformer-XL, detached memory) use the
    non-reentrant kind; both only ever run under `.backward()`, as the trainers do.
    """

    def __init__(self, model):
        self.model = model

    def __call__(self, x, y, state: MemoryState):
        def segment(mem, xl):
            nll, new = self.model(x, y, MemoryState(mem, xl))
            return nll, new.mem, new.xl

        if not torch.is_grad_enabled():
            return self.model(x, y, state)
        mem = self.model.initial_memory(x.size(0)) if state.mem is None else state.mem
        reentrant = mem is not None and mem.requires_grad
        nll, mem, xl = checkpoint(segment, mem, state.xl, use_reentrant=reentrant)
        if reentrant and xl is not None:  # the cache is never differentiated (the model detached
            xl = tuple(t.detach() for t in xl)  # it); reentrant outputs all look differentiable
        return nll, MemoryState(mem, xl)


def run_segments(model, xs, ys, state: MemoryState | None = None, depth: int | None = None,
                 recompute: bool = False):
    """Process a sequence of segments carrying memory and cache; returns ([nll per segment], state).

    depth None: full BPTT over all segments; 0: memory detached before every segment;
    D > 0: each segment's loss reaches exactly the memory of the D segments before it.
    recompute: activation checkpointing per segment (same gradients, memory of one segment).
    """
    state = MemoryState() if state is None else state
    model = Recomputed(model) if recompute else model
    nlls = []
    if depth is None:
        for x, y in zip(xs, ys):
            nll, state = model(x, y, state)
            nlls.append(nll)
        return nlls, state
    history: deque[Segment] = deque(maxlen=depth)
    for x, y in zip(xs, ys):
        inp = state.detach()
        nll, state, _ = forward_with_replay(model, x, y, inp, history)
        if depth:
            history.append(Segment(x, y, inp))
        nlls.append(nll)
    return nlls, state
