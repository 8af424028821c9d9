"""Associative memory (ARMT; Rodkin, Kuratov, Bulatov, Burtsev, 2024) over a Hugging Face decoder.

    model = ARMTForCausalLM(AutoModelForCausalLM.from_pretrained(path), num_mem_tokens=16, segment_size=512,
                            d_mem=32)
    out = model(input_ids=ids, labels=ids)             # out.memory.assoc: per layer (A, z)

The segment recurrence of RMTForCausalLM, with what crosses segments stored in a matrix per
layer (rmt.model.associative: the read into every position's layer input, the delta-rule write
from the write slots' layer outputs) instead of in memory tokens. A segment is laid out
[tokens T | memory M]: the M write slots are the same learned vectors in every segment (nothing
is read through them).

W_v starts at zero, so a fresh ARMT writes nothing and reads nothing: each segment is the bare
backbone on its tokens. Shapes: A (B, d_key, d_model), z (B, d_key), per layer; the state
is `MemoryState(assoc=(A_0, z_0, A_1, z_1, ...))`, carried (and back-propagated through under
BPTT) like RMT's memory. The backbone is not modified: the read and write run in forward hooks
of its decoder layers, active only inside the wrapper's own calls, so the backbone saves, loads,
takes LoRA adapters and shards (FSDP) as it is.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn

from rmt.hf.modeling import RMTForCausalLM, decoder_layers
from rmt.model.associative import AssociativeMemory, read_all
from rmt.model.recurrence import MemoryState

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
        self._pass = _Pass(read_all(self.memories, assoc), write)
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
    # A stage may start from an RMT or plainly fine-tuned stage: the associative projections start
    # as built (W_v = 0: nothing is recalled until it learns). An RMT stage's weights lose the read
    # slots they were trained with before each segment, so they need not answer as they did.
    added_by_a_stage = RMTForCausalLM.added_by_a_stage + ("assoc.",)

    def __init__(self, backbone: nn.Module, num_mem_tokens: int, segment_size: int, bptt_depth: int | None = None,
                 recompute: bool = False, freeze_backbone: bool = False, d_mem: int = 32, **kwargs):
        if num_mem_tokens <= 0 or d_mem <= 0:
            raise ValueError(f"associative memory writes through memory tokens into keys of width d_mem: both must "
                             f"be positive, got num_mem_tokens {num_mem_tokens}, d_mem {d_mem}")
        if kwargs.pop("memory_norm", False) or kwargs.pop("memory_residual", False):
            raise ValueError("memory_norm and memory_residual map written memory tokens; associative memory writes none")
        super().__init__(backbone, num_mem_tokens, segment_size, bptt_depth, recompute, freeze_backbone, **kwargs)
        self.config.memory, self.config.d_mem = "associative", d_mem
        self.assoc = AssociativeLayers(decoder_layers(backbone), self.config.d_model, d_mem)

    @staticmethod
    def saved_options(cfg: dict) -> dict:
        return {"d_mem": cfg["d_mem"]}

    def segment(self, x, state: MemoryState, keep: torch.Tensor | None = None, **backbone_kwargs):
        b, t = x.ids.shape
        m = self.config.num_mem_tokens
        if keep is not None:
            backbone_kwargs["logits_to_keep"] = keep
        embeds = torch.cat([self.embed(x.ids), self.initial_memory(b)], 1)
        with self.assoc.active(state.assoc, write=slice(t, t + m)) as p:
            out = self.call_backbone(embeds, torch.cat([x.mask, x.mask.new_ones(b, m)], 1), **backbone_kwargs)
        new = self.assoc.state(p)
        old = state.assoc or tuple(torch.zeros_like(n) for n in new)  # a row with no token writes nothing
        has_tokens = x.mask.any(1)
        new = tuple(torch.where(has_tokens.view(-1, *[1] * (n.dim() - 1)), n, o) for n, o in zip(new, old))
        return out.logits if keep is not None else out.logits[:, :t], MemoryState(assoc=new)

    def segment_cache(self, state: MemoryState, batch: int):
        from rmt.hf.generation import AssociativeSegmentCache
        return AssociativeSegmentCache(self, state, batch)
