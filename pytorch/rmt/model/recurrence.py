"""THE segment loop: the recurrent state carried between segments, and how gradients flow through it.

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

Two callers: `run_segments` processes the segments of one sample (the algorithmic tasks: fresh
state per sample), `stream_step` continues B endless rows of a corpus (language modelling: the
state travels from one optimiser step to the next in a `StreamState`).
"""
from __future__ import annotations

import contextlib
from collections import deque
from typing import NamedTuple, Sequence

import torch
from torch.utils.checkpoint import checkpoint


class MemoryState(NamedTuple):
    """Everything carried from one segment to the next. Each field is None, a tensor (B, ...) or
    a tuple of them; the methods below go over every field, so a new kind of memory is a new
    field here (and, if a memory ablation should replace it, a name in READ)."""

    mem: torch.Tensor | None = None  # (B, M, C)
    xl: tuple[torch.Tensor, ...] | None = None  # n_layer + 1 of (B, L, C)
    assoc: tuple[torch.Tensor, ...] | None = None  # associative memory (ARMT): per layer A (B, K, C), z (B, K)

    READ = ("mem", "assoc")  # what the next segment reads as memory (an ablation replaces it); xl is a cache

    def map(self, fn, fields: tuple[str, ...] | None = None) -> "MemoryState":
        """fn applied to every tensor of `fields` (default: all); None stays None."""
        def apply(name, value):
            if value is None or (fields is not None and name not in fields):
                return value
            return tuple(fn(t) for t in value) if isinstance(value, tuple) else fn(value)
        return MemoryState(*(apply(name, value) for name, value in zip(self._fields, self)))

    def detach(self) -> "MemoryState":
        return self.map(torch.Tensor.detach)

    def to(self, *args, **kwargs) -> "MemoryState":
        return self.map(lambda t: t.to(*args, **kwargs))

    def select(self, index: torch.Tensor | slice) -> "MemoryState":
        """Keep the batch rows `index` (e.g. one DDP shard or a subset of samples)."""
        return self.map(lambda t: t[index])

    @staticmethod
    def cat(states: "Sequence[MemoryState]") -> "MemoryState":
        """Join row chunks of a batch back into one state (the inverse of select)."""
        if len(states) == 1:
            return states[0]
        def join(values):
            if values[0] is None:
                return None
            if isinstance(values[0], tuple):
                return tuple(torch.cat(parts) for parts in zip(*values))
            return torch.cat(values)
        return MemoryState(*(join([s[i] for s in states]) for i in range(len(MemoryState._fields))))

    def to_dict(self) -> dict:
        """Plain tensors and lists by field name (a checkpoint loads it with weights_only)."""
        return {name: list(v) if isinstance(v, tuple) else v for name, v in zip(self._fields, self)}

    @classmethod
    def from_dict(cls, d: dict) -> "MemoryState":
        return cls(**{name: tuple(v) if isinstance(v, list) else v for name, v in d.items()})


class Segment(NamedTuple):
    x: torch.Tensor  # (B, T_in) input tokens
    y: torch.Tensor  # (B, T) targets
    state: MemoryState  # state before this segment, detached (or initial)


REPLAYS = ("correct", "original")  # how a truncated-BPTT step re-runs its stored segments


def forward_with_replay(model, x, y, state: MemoryState, history: Sequence[Segment], replay: str = "correct"):
    """Run segment (x, y) after re-running `history` (oldest first), so the current loss
    back-propagates through len(history) recomputed segments and stops there.

    replay "correct": the re-run starts from the memory stored with the oldest segment (the
    memory len(history) segments ago); each re-run segment uses its own stored XL cache and the
    current one `state.xl`. "original": the original LM script's procedure, whose reset to the
    stored memory assigned a tensor attribute and changed nothing: the re-run starts from the
    CURRENT memory `state.mem` (which has already read those segments), each re-run segment
    uses its stored cache, and the current segment the cache returned by the last re-run.
    Returns (nll (B, T), new_state, [nll of each replayed segment]).
    """
    if replay not in REPLAYS:
        raise ValueError(f"replay must be one of {REPLAYS}, got {replay!r}")
    replay_nll = []
    if history:  # every recurrent field (memory tokens, associative memory) chains; the cache is stored
        carried = state if replay == "original" else history[0].state
        for seg in history:
            nll, carried = model(seg.x, seg.y, carried._replace(xl=seg.state.xl))
            replay_nll.append(nll)
        state = carried if replay == "original" else carried._replace(xl=state.xl)
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
        first = state.mem is None  # the model tells a first segment by its memory None (write_mem_init)

        def segment(mem, xl, *assoc):  # associative memory's matrices as inputs of their own: differentiated
            nll, new = self.model(x, y, MemoryState(None if first else mem, xl, assoc or None))
            return (nll, new.mem, new.xl, *(new.assoc or ()))

        if not torch.is_grad_enabled():
            return self.model(x, y, state)
        mem = self.model.initial_memory(x.size(0)) if first else state.mem
        reentrant = any(t is not None and t.requires_grad for t in (mem, *(state.assoc or ())))
        nll, mem, xl, *assoc = checkpoint(segment, mem, state.xl, *(state.assoc or ()), use_reentrant=reentrant)
        if reentrant and xl is not None:  # the cache is never differentiated (the model detached
            xl = tuple(t.detach() for t in xl)  # it); reentrant outputs all look differentiable
        return nll, MemoryState(mem, xl, tuple(assoc) or None)


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


class Scored(NamedTuple):
    loss: torch.Tensor  # () mean NLL over the scored tokens
    nll: torch.Tensor  # (B, N - 1) per-token NLL of tokens[:, 1:]; 0 where not scored
    state: MemoryState  # the state after the last segment
    n_tokens: torch.Tensor  # () how many tokens were scored


def score(model, tokens: torch.Tensor, segment_len: int, state: MemoryState | None = None,
          depth: int | None = None, recompute: bool = False, loss_mask: torch.Tensor | None = None,
          lengths: torch.Tensor | None = None) -> Scored:
    """Language-model loss of whole sequences of any length, in one call.

    tokens (B, N): every row predicts tokens[:, 1:] from what precedes them. The N - 1 inputs are
    cut into segments of `segment_len` (the last padded with 0 to full length, so memory sees the
    segment shape it was trained on) and run through `run_segments` with memory and XL cache
    carried, under the gradient policy `depth` (None full BPTT, 0 detached, D truncated) and
    optional recomputation. Scored are the real targets: those before `lengths` (B,) per row
    (padding after them is ignored) and where `loss_mask` (B, N - 1) is true. Padding never
    changes a real token's NLL (attention is causal); it does reach the memory written by the
    segment that holds it, so `state` after a padded row is not the state of the unpadded row.
    """
    if tokens.dim() != 2 or tokens.size(1) < 2:
        raise ValueError(f"tokens must be (batch, length >= 2), got shape {tuple(tokens.shape)}")
    if not model.config.causal:
        raise ValueError("score is a language-model loss; a bidirectional model (causal False) sees its targets")
    if segment_len <= 0:
        raise ValueError(f"segment_len must be positive, got {segment_len}")
    b, n = tokens.size(0), tokens.size(1) - 1
    n_seg = -(-n // segment_len)
    pad = n_seg * segment_len - n
    x = torch.nn.functional.pad(tokens[:, :-1], (0, pad))
    y = torch.nn.functional.pad(tokens[:, 1:], (0, pad))
    scored = torch.ones(b, n, dtype=torch.bool, device=tokens.device)
    if lengths is not None:
        scored &= torch.arange(1, n + 1, device=tokens.device) < lengths.to(tokens.device).view(-1, 1)
    if loss_mask is not None:
        scored &= loss_mask.to(device=tokens.device, dtype=torch.bool)
    nlls, state = run_segments(model, x.split(segment_len, dim=1), y.split(segment_len, dim=1), state, depth,
                               recompute)
    nll = torch.where(scored, torch.cat(nlls, dim=1)[:, :n].float(), 0.0)
    count = scored.sum()
    return Scored(nll.sum() / count.clamp(min=1), nll, state, count)


class _Encoding:
    """The model as run_segments calls it, returning hidden states instead of a loss."""

    def __init__(self, model):
        if getattr(model, "assoc", None) is not None:  # its state is not among the checkpointed inputs
            raise ValueError("recomputed segments do not carry associative memory yet: train without "
                             "--recompute_segments")
        self.model = model

    def __call__(self, x, _y, state: MemoryState):
        return self.model.encode(x, state)

    def initial_memory(self, batch: int):
        return self.model.initial_memory(batch)


def classify(model, tokens: torch.Tensor, segment_len: int, state: MemoryState | None = None,
             depth: int | None = None, recompute: bool = False) -> tuple[torch.Tensor, MemoryState]:
    """Class logits (B, n_classes) of whole sequences (B, N), N a multiple of segment_len.

    The segments run in order with memory carried (gradient policy and recomputation as in
    run_segments); the head reads the final memory, averaged over its slots: with the
    bidirectional encoder (causal False) the memory of the last segment has seen all of it and,
    through the earlier memories, what came before. Without memory tokens the head reads the
    last segment's token states, averaged: such a model sees the last segment only.
    """
    if not model.config.n_classes:
        raise ValueError("the model has no classification head: build it with n_classes > 0")
    if tokens.dim() != 2 or tokens.size(1) % segment_len:
        raise ValueError(f"tokens must be (batch, a multiple of segment_len {segment_len}), got {tuple(tokens.shape)}")
    xs = tokens.split(segment_len, dim=1)
    hidden, state = run_segments(_Encoding(model), xs, [None] * len(xs), state, depth, recompute)
    pooled = state.mem.mean(1) if state.mem is not None else hidden[-1].mean(1)
    return model.cls_head(pooled), state


# ---- streams: the state of B corpus rows, carried from one optimiser step to the next -----------

def row_slices(n_rows: int, n_chunks: int) -> list[slice]:
    """`n_chunks` contiguous row ranges of sizes as torch.chunk gives them."""
    sizes = [len(c) for c in torch.arange(n_rows).chunk(n_chunks)]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    return [slice(s, s + n) for s, n in zip(starts, sizes)]


class StreamState:
    """What travels along the local rows of a corpus stream between steps: the memory state
    (memory tokens + XL cache, detached) and, for a backprop depth D, the last D segments with
    their input states, from which the next step recomputes."""

    def __init__(self, depth: int):
        self.depth = depth
        self.reset()

    def reset(self) -> None:
        """Epoch start: learned initial memory, empty cache and history (as the original)."""
        self.state = MemoryState()
        self.history: deque[Segment] = deque(maxlen=self.depth)

    def state_dict(self, gather=lambda t: t) -> dict:
        """Plain tensors (loadable with weights_only); `gather` joins the rows of all ranks."""
        def pack(s: MemoryState) -> dict:
            return s.map(gather).to_dict()
        return {"state": pack(self.state),
                "history": [{"x": gather(h.x), "y": gather(h.y), "state": pack(h.state)} for h in self.history]}

    def load_state_dict(self, d: dict, rows: slice = slice(None), device="cpu") -> None:
        """Restore this process's `rows` of a (gathered) state_dict onto `device`."""
        def unpack(p: dict) -> MemoryState:
            return MemoryState.from_dict(p).to(device).select(rows)
        self.state = unpack(d["state"])
        self.history = deque((Segment(h["x"][rows].to(device), h["y"][rows].to(device), unpack(h["state"]))
                              for h in d["history"]), maxlen=self.depth)


def stream_step(model, stream: StreamState, x: torch.Tensor, y: torch.Tensor, n_chunks: int = 1,
                bptt_bp: bool = False, backward=lambda loss: loss.backward(),
                autocast=contextlib.nullcontext, replay: str = "correct") -> torch.Tensor:
    """Forward and backward of one batch x (B, E+T), y (B, T), continuing `stream`'s rows.

    The gradient is that of the mean NLL per token, accumulated over `n_chunks` row chunks
    (each with its own rows' memory). With history, each chunk first re-runs the stored
    segments from the oldest stored memory (`forward_with_replay`), so the loss reaches the
    memory of len(history) segments ago and nothing older (replay "original": from the current
    memory, as the original LM script did). Returns the detached mean NLL of
    the current segments; `stream` then holds the new detached state and this segment.
    """
    state_in = stream.state.detach()
    b = x.size(0)
    new_states, mean_nll = [], torch.zeros((), device=x.device)
    for rows in row_slices(b, n_chunks):
        weight = (rows.stop - rows.start) / b  # chunk means, weighted by rows: the batch mean
        history = [Segment(h.x[rows], h.y[rows], h.state.select(rows)) for h in stream.history]
        with autocast():
            nll, state, replay_nll = forward_with_replay(model, x[rows], y[rows], state_in.select(rows), history,
                                                         replay)
            loss = nll.float().mean()
            if bptt_bp:  # the original's --bptt_bp: the re-run segments' losses count too
                loss = loss + sum(r.float().mean() for r in replay_nll)
        backward(loss * weight)
        mean_nll = mean_nll + nll.detach().float().mean() * weight
        new_states.append(state.detach())
    if stream.depth:
        stream.history.append(Segment(x, y, state_in))
    stream.state = MemoryState.cat(new_states)
    return mean_nll
