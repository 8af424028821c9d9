"""MemTransformerLM: Transformer-XL with RMT memory tokens, one segment per call.

One segment is laid out as [read memory | tokens | write memory] (RMT §3, Fig. 1c): the read
copy sits before the segment, the write copy after it (`mem_at_end`), and the final-layer
outputs at the write positions become the next segment's memory. Memory is a value:

    nll, state = model(x, y, state)      # x (B, T), y (B, T) -> nll (B, T), MemoryState

Legend: B batch, T tokens, M memory tokens, L cached length, Q = M + T (+ M), K = L + Q, C d_model.
"""
from __future__ import annotations

import functools

import torch
from torch import nn

from rmt.model.associative import AssociativeMemory, read_all
from rmt.model.config import ModelConfig
from rmt.model import generation
from rmt.model.adaptive import AdaptiveEmbedding, ProjectedAdaptiveLogSoftmax
from rmt.model.layers import (
    AbsoluteAttention,
    DecoderLayer,
    FlexMask,
    PositionalEmbedding,
    PositionwiseFF,
    RelPartialLearnableAttention,
    Rotary,
    RotaryAttention,
    token_shift,
)
from rmt.model.recurrence import MemoryState


@functools.lru_cache(maxsize=64)
def _attn_mask(n_tokens, num_mem, mlen, mem_at_end, read_mem_from_cache, same_length, mem_len, causal, device,
               read_slots=True):
    n_write = num_mem if mem_at_end else 0
    q_len = num_mem + n_tokens + n_write
    k_len = mlen + q_len
    ones = torch.ones(q_len, k_len, dtype=torch.bool, device=device)
    # causal: query i sees the cache and current keys <= i; bidirectional: every key
    mask = ones.triu(1 + mlen) if causal else ~ones
    if same_length:
        # Transformer-XL same-length window: every query sees the same number of keys.
        mask_len = k_len - mem_len
        shift = q_len - mask_len if mask_len > 0 else q_len
        mask |= ones.tril(-shift)
    if num_mem:
        # RMT mask rules (the original applied them only without same_length; here they always
        # hold, and override the same-length window, which limits segment tokens alone).
        m = num_mem
        mask[:m] = True
        mask[:m, mlen : mlen + m] = False  # read memory attends to itself in both directions
        mask[:m, :mlen] = not read_mem_from_cache
        mask[m:, mlen : mlen + m] = False  # everything after it reads the memory
        if mem_at_end:
            mask[-m:] = False  # write memory sees read memory, the whole segment and itself
            mask[-m:, :mlen] = not read_mem_from_cache
        if not causal:  # the encoder: memory (at the start only) reads and writes the whole segment
            mask[:m, mlen + m :] = False
        if not read_slots:  # [tokens | write memory] (associative memory): the same rules without the read rows
            keep = torch.cat([torch.arange(mlen, device=device), torch.arange(mlen + m, k_len, device=device)])
            mask = mask[m:][:, keep].contiguous()
    return mask


def build_attn_mask(n_tokens, num_mem, mlen, *, mem_at_end, read_mem_from_cache, same_length=False, mem_len=0,
                    causal=True, device=None, read_slots=True) -> torch.Tensor:
    """Boolean (Q, K) mask, True = blocked. Causal: read tokens never see the segment; tokens
    never see the write memory; write tokens see everything in the segment. Bidirectional
    (causal False, memory at the start only): everything sees the segment and the memory, and
    the memory sees the cache only with read_mem_from_cache. read_slots False: the segment is
    [tokens | write memory] (associative memory). Built once per shape."""
    # Cached per shape and device: no host-to-device copy per segment. Callers must not modify it.
    return _attn_mask(n_tokens, num_mem, mlen, bool(mem_at_end and num_mem), read_mem_from_cache, same_length,
                      mem_len, causal, torch.device(device) if device is not None else torch.device("cpu"),
                      read_slots)


@torch.compiler.disable  # a graph break per segment: compiled graphs get the mask as an input
@functools.lru_cache(maxsize=64)
def flex_mask(*args, **kwargs) -> FlexMask:
    """build_attn_mask's mask (same arguments) prepared for FlexAttention, once per shape."""
    return FlexMask(build_attn_mask(*args, **kwargs))


class _Associative:
    """The layers of a model with associative memory, as run_layers calls them: each reads its
    matrix into its input first and, when `written` is a list, appends the (A, z) its write
    slots' outputs give. The layer inputs run_layers returns (and the XL cache keeps) are those
    before the read."""

    def __init__(self, model, assoc: tuple | None, written: list | None):
        self.model, self.before, self.written = model, read_all(model.assoc, assoc), written

    def __iter__(self):
        m = self.model.config.num_mem_tokens
        for layer, memory, before in zip(self.model.layers, self.model.assoc, self.before):
            def call(core, *args, layer=layer, memory=memory, before=before, **kwargs):
                out = layer(core if before is None else memory.read(core, *before), *args, **kwargs)
                if self.written is not None:
                    self.written.append(memory.write(out[:, -m:], *(before or (None, None))))
                return out
            yield call


class MemTransformerLM(nn.Module):
    """Accepts the original constructor arguments (see `ModelConfig`)."""

    def __init__(self, n_token: int, n_layer: int, n_head: int, d_model: int, d_head: int, d_inner: int,
                 dropout: float = 0.0, dropatt: float = 0.0, **kwargs):
        super().__init__()
        cfg = ModelConfig(n_token, n_layer, n_head, d_model, d_head, d_inner, dropout, dropatt, **kwargs)
        self.config = cfg
        self.word_emb = AdaptiveEmbedding(n_token, cfg.d_embed, d_model, cfg.cutoffs, cfg.div_val)
        self.drop = nn.Dropout(dropout)
        def attention():
            if cfg.attn_type == 0:
                return RelPartialLearnableAttention(n_head, d_model, d_head, dropout, dropatt, cfg.pre_lnorm,
                                                    impl=cfg.attn_impl)
            if cfg.attn_type == 4:
                return RotaryAttention(n_head, d_model, d_head, dropout, dropatt, cfg.pre_lnorm, impl=cfg.attn_impl)
            return AbsoluteAttention(n_head, d_model, d_head, dropout, dropatt, cfg.pre_lnorm)

        self.layers = nn.ModuleList(
            DecoderLayer(attention(),
                         PositionwiseFF(d_model, d_inner, dropout, cfg.pre_lnorm))
            for _ in range(n_layer)
        )
        self.pos_emb = PositionalEmbedding(d_model)
        if cfg.attn_type == 4:
            self.rotary = Rotary(d_head)
        if cfg.attn_type == 0:
            # One pair of global biases shared by all layers, as in the original (TXL's u and v).
            self.r_w_bias = nn.Parameter(torch.zeros(n_head, d_head))
            self.r_r_bias = nn.Parameter(torch.zeros(n_head, d_head))
        self.crit = ProjectedAdaptiveLogSoftmax(n_token, cfg.d_embed, d_model, cfg.cutoffs, cfg.div_val)
        self._tie(cfg)
        if cfg.n_classes:  # sequence classification (rmt.model.recurrence.classify)
            self.cls_head = nn.Linear(d_model, cfg.n_classes)
        if cfg.num_mem_tokens:
            mem = torch.randn(cfg.num_mem_tokens, d_model)  # N(0, 1), unscaled, as the original
            if cfg.mem_init == "identical":
                mem = mem[:1].expand_as(mem).clone()  # the original's [randn(1, d)] * M
            self.mem_tokens = nn.Parameter(mem)  # (M, C)
        else:
            self.mem_tokens = None
        if cfg.read_memory_emb:  # a learned vector per read slot (small, as the token embeddings)
            self.read_mem_emb = nn.Parameter(torch.randn(cfg.num_mem_tokens, d_model) * 0.02)
        # ARMT: a matrix memory per layer, read at every position, written from the write slots
        self.assoc = nn.ModuleList(AssociativeMemory(d_model, cfg.d_mem) for _ in range(n_layer)) \
            if cfg.memory == "associative" else None

    @classmethod
    def from_config(cls, cfg: ModelConfig | dict) -> "MemTransformerLM":
        d = cfg.to_dict() if isinstance(cfg, ModelConfig) else ModelConfig.from_dict(cfg).to_dict()
        return cls(**d)

    def _tie(self, cfg: ModelConfig) -> None:
        if cfg.tie_weight:
            for out, emb in zip(self.crit.out_layers, self.word_emb.emb_layers):
                out.weight = emb.weight
        for i, tie in enumerate(cfg.tie_projs):
            if not tie or str(i) not in self.crit.out_projs:
                continue
            src = "0" if cfg.div_val == 1 else str(i)
            if src in self.word_emb.emb_projs:
                self.crit.out_projs[str(i)] = self.word_emb.emb_projs[src]

    def reset_length(self, tgt_len: int, ext_len: int, mem_len: int) -> None:
        """Change segment/cache lengths for evaluation (e.g. a longer cache, as Transformer-XL does)."""
        self.config.tgt_len, self.config.ext_len, self.config.mem_len = tgt_len, ext_len, mem_len

    def initial_memory(self, batch: int) -> torch.Tensor | None:
        """The learned memory a sequence starts from, (B, M, C); None without memory tokens."""
        return None if self.mem_tokens is None else self.mem_tokens.unsqueeze(0).expand(batch, -1, -1)

    # ---- one segment ------------------------------------------------------------------------

    def encode(self, x: torch.Tensor, state: MemoryState | None = None, return_attention: bool = False):
        """x (B, T) -> token hidden states (B, T, C) after the final dropout, and the new state.

        return_attention: also return each layer's attention probabilities (B, H, Q, K) over
        [XL cache | read memory | tokens | write memory], computed by the eager path whatever
        attn_impl is (nothing is kept when not asked for).
        """
        cfg = self.config
        state = MemoryState() if state is None else state
        m = cfg.num_mem_tokens
        associative = self.assoc is not None
        h = self.segment_input(x, state.mem)
        cache = state.xl if cfg.mem_len > 0 else None
        mlen = cache[0].size(1) if cache else 0
        mask = self.segment_mask(x.size(1), mlen, x.device, flex=not return_attention)
        maps = [] if return_attention else None
        written = [] if associative else None
        hids = self.run_layers(h, cache, mask, maps, state.assoc, written)
        core = self.drop(hids[-1])  # final dropout, also on the write outputs that become memory

        new_xl = self._update_cache(hids, cache, mlen, h.size(1)) if cfg.mem_len > 0 else None
        if associative:  # nothing carried in the slots: the layers' matrices are the memory
            new_state = MemoryState(None, new_xl, tuple(t for pair in written for t in pair))
            tokens = core[:, :-m]
        elif not m:
            tokens, new_state = core, MemoryState(None, new_xl)
        elif cfg.mem_at_end:
            # A compact copy: a view would keep the whole (B, Q, C) output alive as long as the state
            # lives, which is every segment's output under recomputed BPTT and across LM steps.
            tokens, new_state = core[:, m:-m], MemoryState(core[:, -m:].contiguous(), new_xl)
        else:
            # Start-only memory: the read outputs never see the segment, so nothing is written.
            tokens, new_state = core[:, m:], MemoryState(core[:, :m].contiguous(), new_xl)
        return (tokens, new_state, maps) if return_attention else (tokens, new_state)

    # ---- the pieces of a segment, shared by encode and incremental decoding (model.generation) ----

    def segment_input(self, x: torch.Tensor, mem: torch.Tensor | None) -> torch.Tensor:
        """Embedded [read memory | tokens | write memory] (B, Q, C); the same memory in both slots.
        Associative memory: [tokens | write memory], the learned memory in every segment."""
        cfg = self.config
        emb = self.word_emb(x)  # (B, T, C)
        if cfg.emb_gradient_frac < 1:  # the same value; a fraction of the gradient reaches the embeddings
            emb = emb * cfg.emb_gradient_frac + emb.detach() * (1 - cfg.emb_gradient_frac)
        m = cfg.num_mem_tokens
        if not m:
            return emb
        learned = self.initial_memory(x.size(0)).to(emb.dtype)
        if self.assoc is not None:
            return torch.cat([emb, learned], dim=1)
        read = learned if mem is None else mem.to(emb.dtype)
        if not cfg.mem_at_end:
            return torch.cat([self._read_slots(read), emb], dim=1)
        if cfg.write_mem_init == "memory":  # the original: the write slots start from the memory read
            write = read
        elif cfg.write_mem_init == "learned" or mem is None:
            write = learned
        else:  # the learned memory plus the previous one, its gradient stopped or not
            write = learned + (read.detach() if cfg.write_mem_init == "learned+detached" else read)
        return torch.cat([self._read_slots(read), emb, write], dim=1)

    def _read_slots(self, mem: torch.Tensor) -> torch.Tensor:
        return mem + self.read_mem_emb.to(mem.dtype) if self.config.read_memory_emb else mem

    def layer_cache(self, cache, i: int):
        """The cached positions layer i attends to: its input on them (Transformer-XL), or with
        enhanced_xl_recurrence its own output on them (the next layer's input)."""
        if not cache:
            return None
        return cache[i + 1] if self.config.enhanced_xl_recurrence else cache[i]

    @property
    def read_slots(self) -> int:
        """How many memory positions precede the segment's tokens (none under associative memory)."""
        return self.config.num_mem_tokens if self.assoc is None else 0

    def segment_mask(self, n_tokens: int, mlen: int, device, flex: bool = True):
        """The (Q, K) mask of a segment of n_tokens after mlen cached positions (a FlexMask for
        attn_impl flex unless flex=False)."""
        cfg = self.config
        masking = flex_mask if flex and cfg.attn_impl == "flex" and cfg.attn_type in (0, 4) else build_attn_mask
        return masking(n_tokens, cfg.num_mem_tokens, mlen, mem_at_end=cfg.mem_at_end,
                       read_mem_from_cache=cfg.read_mem_from_cache, same_length=cfg.same_length,
                       mem_len=cfg.mem_len, causal=cfg.causal, device=device, read_slots=self.assoc is None)

    def positions(self, k_len: int, device, dtype, future: int = 0) -> torch.Tensor:
        """Sinusoids (K + future, C) for distances K-1 .. -future: memory tokens occupy positions
        like any other token; negative distances (keys after the query) for the bidirectional mode."""
        pos_seq = torch.arange(k_len - 1, -future - 1, -1.0, device=device, dtype=dtype)
        if self.config.clamp_len > 0:
            pos_seq = pos_seq.clamp(min=-self.config.clamp_len, max=self.config.clamp_len)
        return self.pos_emb(pos_seq)

    def run_layers(self, h: torch.Tensor, cache, mask, maps: list | None = None, assoc: tuple | None = None,
                   written: list | None = None) -> list[torch.Tensor]:
        """h (B, Q, C) -> the input of every layer and the last output, n_layer + 1 of (B, Q, C),
        before the final dropout. maps: a list that receives each layer's attention probabilities.
        Associative memory: every layer's input reads `assoc` (None: nothing written yet), and
        `written` (a list) receives each layer's new (A, z) from its write slots' outputs."""
        layers = self.layers if self.assoc is None else _Associative(self, assoc, written)
        mlen = cache[0].size(1) if cache else 0
        q_len = h.size(1)
        shift = None
        if self.config.token_shift:  # the tokens lie between the read slots and the write slots
            n_write = self.config.num_mem_tokens if self.config.mem_at_end else 0
            shift = functools.partial(token_shift, start=self.read_slots, stop=q_len - n_write)
        # (K, C); bidirectional relative attention also needs the Q - 1 negative distances
        future = q_len - 1 if self.config.attn_type == 0 and not self.config.causal else 0
        pos_emb = self.positions(mlen + q_len, h.device, h.dtype, future)
        if self.config.attn_type == 0:
            core = self.drop(h)  # dropout reaches the memory vectors too, as in the original
            pos_emb = self.drop(pos_emb)
            hids = [core]
            for i, layer in enumerate(layers):
                core = layer(core, pos_emb, self.r_w_bias, self.r_r_bias, mask, self.layer_cache(cache, i),
                             probs=maps, shift=shift)
                hids.append(core)
            return hids
        if self.config.attn_type == 4:
            # Rotary: key j sits at position j of [cache | segment], query i at mlen + i; scores
            # depend on the difference only, so a memory token is as far from a segment token as
            # their slots are apart (read memory just before the tokens, write memory just after).
            rope = self.rotary(torch.arange(mlen + q_len, device=h.device))
            core = self.drop(h)
            hids = [core]
            for i, layer in enumerate(layers):
                core = layer(core, mask, self.layer_cache(cache, i), rope=rope, probs=maps, shift=shift)
                hids.append(core)
            return hids
        core = self.drop(h + pos_emb[-q_len:])
        hids = [core]
        for i, layer in enumerate(layers):
            layer_cache = self.layer_cache(cache, i)
            if layer_cache is not None and i == 0:
                layer_cache = layer_cache + pos_emb[:mlen]  # the original added this in place
            core = layer(core, mask, layer_cache, probs=maps, shift=shift)
            hids.append(core)
        return hids

    def _update_cache(self, hids, cache, mlen: int, q_len: int):
        # Keep the last mem_len positions of [cache ; segment], stopping ext_len before the end.
        # (The original passed mlen and qlen in swapped order; equal results only when ext_len = 0.)
        end = mlen + max(0, q_len - self.config.ext_len)
        beg = max(0, end - self.config.mem_len)
        # Contiguous, so the cache has the same strides whatever the segment: no recompiles.
        with torch.no_grad():
            if cache is None:
                return tuple(h[:, beg:end].detach().contiguous() for h in hids)
            return tuple(torch.cat([c, h], dim=1)[:, beg:end].detach().contiguous() for c, h in zip(cache, hids))

    def nll(self, hidden: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-token NLL in nats, (B, T), for the last y.size(1) positions of `hidden`."""
        hidden = hidden[:, -y.size(1):]
        b, t = y.shape
        return self.crit(hidden.reshape(b * t, -1), y.reshape(-1)).view(b, t)

    def log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> log-probabilities over the vocabulary (B, T, V), for decoding."""
        b, t, c = hidden.shape
        return self.crit.log_probs(hidden.reshape(b * t, c)).view(b, t, -1)

    def generate(self, prompt: torch.Tensor, max_new_tokens: int, **kwargs) -> torch.Tensor:
        """prompt (B, P) -> (B, max_new_tokens) new tokens; see rmt.model.generation.generate."""
        return generation.generate(self, prompt, max_new_tokens, **kwargs)

    def forward(self, x: torch.Tensor, y: torch.Tensor, state: MemoryState | None = None):
        """One segment: x (B, T_in), y (B, T) -> (nll (B, T), new MemoryState)."""
        hidden, new_state = self.encode(x, state)
        return self.nll(hidden, y), new_state


def init_weights(model: MemTransformerLM, init: str = "normal", init_std: float = 0.02, init_range: float = 0.1,
                 proj_init_std: float = 0.01) -> None:
    """The original training scripts' initialisation; memory tokens keep N(0, 1)."""

    def fill(p: torch.Tensor) -> None:
        if init == "uniform":
            nn.init.uniform_(p, -init_range, init_range)
        elif init == "normal":
            nn.init.normal_(p, 0.0, init_std)
        else:
            raise ValueError(f"init must be 'normal' or 'uniform', got {init!r}")

    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Embedding)):
            fill(module.weight)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.normal_(module.weight, 1.0, init_std)
            nn.init.zeros_(module.bias)
        elif isinstance(module, (AdaptiveEmbedding, ProjectedAdaptiveLogSoftmax)):
            projs = module.emb_projs if isinstance(module, AdaptiveEmbedding) else module.out_projs
            for p in projs.values():
                nn.init.normal_(p, 0.0, proj_init_std)
            if isinstance(module, ProjectedAdaptiveLogSoftmax) and module.n_clusters:
                fill(module.cluster_weight)
                nn.init.zeros_(module.cluster_bias)
    if model.config.attn_type == 0:
        fill(model.r_w_bias)
        fill(model.r_r_bias)
    for memory in model.assoc or ():
        nn.init.zeros_(memory.v.weight)  # a fresh associative memory stores zeros (rmt.model.associative)
