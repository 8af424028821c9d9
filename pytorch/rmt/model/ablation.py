"""Memory ablations at evaluation: how much a trained model owes to the memory it carries.

    python3 -m rmt.train --eval_only --eval_checkpoint runs/<task run>/checkpoint_best.pt --memory_ablation reset
    python3 -m rmt.evaluate --checkpoint runs/<LM run>/checkpoint_best.pt --memory_ablation shuffle

`MemoryAblation(model, how)` stands in for the model wherever evaluation code calls it (the
segment loop, encode, the heads; a Hugging Face wrapper of rmt.hf through its `read_memory`).
The memory that reaches each segment after the first is replaced before the segment reads it:
- reset: by the learned initial memory, as if every segment were the first. What the model
  still gets right comes from the segment itself (and from the XL cache, which is left alone).
- shuffle: by the memory of another row of the same batch (a fixed derangement for each batch
  size, drawn from `seed`). Memory of the right shape and statistics, from another sample: a
  model that reads content from its memory falls to chance, one that uses it only as a bias
  does not.
The write side is untouched: every segment still writes as trained, so an ablation changes
what is read, never the model.
"""
from __future__ import annotations

import inspect

import torch

from rmt.model.recurrence import MemoryState

ABLATIONS = ("none", "reset", "shuffle")


def task_suffix(how: str) -> str:
    """What an ablated evaluation adds to its results rows' task name: "-mem_<how>", or ""."""
    return "" if how == "none" else f"-mem_{how}"


class MemoryAblation:
    def __init__(self, model, how: str, seed: int = 0):
        if how not in ABLATIONS[1:]:
            raise ValueError(f"memory ablation must be one of {', '.join(ABLATIONS[1:])}, got {how!r}")
        self.model, self.how, self.seed = model, how, seed
        self._derangements: dict[int, torch.Tensor] = {}
        # rmt.hf's wrappers run their own segment loop and take the ablation as `read_memory`
        self._reads_memory = "read_memory" in inspect.signature(model.forward).parameters

    def __getattr__(self, name):  # everything else (config, heads, eval(), parameters()) is the model's
        return getattr(self.model, name)

    def derangement(self, n: int) -> torch.Tensor:
        """A permutation of n rows that moves every row (n >= 2), the same for every call."""
        if n < 2:
            raise ValueError("the shuffle ablation needs batches of at least 2 rows (a row's memory goes to another)")
        if n not in self._derangements:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
            perm = torch.empty(n, dtype=torch.long)
            perm[order] = order.roll(-1)  # row order[i] reads the memory of row order[i + 1]
            self._derangements[n] = perm
        return self._derangements[n]

    def ablate(self, state: MemoryState | None) -> MemoryState | None:
        """The state with what the next segment reads as memory (MemoryState.READ) replaced; the
        rest (the XL cache) as it is."""
        read = [getattr(state, name) for name in MemoryState.READ] if state is not None else []
        if all(v is None for v in read):  # the first segment reads the initial memory anyway
            return state
        if self.how == "reset":
            return state._replace(**dict.fromkeys(MemoryState.READ))
        rows = next(v for v in read if v is not None)
        rows = rows[0] if isinstance(rows, tuple) else rows
        perm = self.derangement(rows.size(0)).to(rows.device)
        return state.map(lambda t: t[perm], fields=MemoryState.READ)

    def encode(self, x: torch.Tensor, state: MemoryState | None = None, **kwargs):
        return self.model.encode(x, self.ablate(state), **kwargs)

    def __call__(self, *args, **kwargs):
        if self._reads_memory:
            return self.model(*args, read_memory=self.ablate, **kwargs)
        return self.segment(*args, **kwargs)

    def segment(self, x: torch.Tensor, y: torch.Tensor, state: MemoryState | None = None):
        """This project's models: one segment, (x, y, state) -> (nll, new state)."""
        return self.model(x, y, self.ablate(state))
