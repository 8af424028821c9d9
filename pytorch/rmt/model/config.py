"""The model's configuration: `ModelConfig`, the original `MemTransformerLM` constructor
arguments, validated (a bad value raises ValueError with one line). Its field names are the
original flag names, so a run's `config.json` maps one to one onto the shell flags (rmt.config
builds it from them) and onto the original code's constructor.
"""
from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass, field

ATTN_TYPES = {0: "relative (Transformer-XL)", 2: "absolute (Vaswani)", 4: "rotary (RoPE)"}
MEM_INITS = ("distinct", "identical")
# eager: explicit scores; fused: scaled_dot_product_attention with one additive bias;
# flex: FlexAttention, the position term as a score modification and the mask as a block mask.
ATTN_IMPLS = ("eager", "fused", "flex")
MEMORY_KINDS = ("tokens", "associative")  # what carries memory between segments (RMT, ARMT)
# What the write slots hold before the layers: the previous memory (the original), the learned
# memory, or the learned memory plus the previous one (its gradient stopped or not).
WRITE_INITS = ("memory", "learned", "learned+memory", "learned+detached")


@dataclass
class ModelConfig:
    n_token: int
    n_layer: int = 2
    n_head: int = 4
    d_model: int = 32
    d_head: int = 8
    d_inner: int = 64
    dropout: float = 0.0
    dropatt: float = 0.0
    tie_weight: bool = True
    d_embed: int | None = None  # None or <= 0: same as d_model
    div_val: int = 1
    tie_projs: list[bool] = field(default_factory=lambda: [False])
    pre_lnorm: bool = False
    tgt_len: int = 8
    ext_len: int = 0
    mem_len: int = 0  # Transformer-XL cache length (positions, memory tokens included)
    num_mem_tokens: int = 0  # RMT memory size M
    read_mem_from_cache: bool = False  # may memory tokens attend to the XL cache?
    mem_at_end: bool = True  # write memory after the segment; False = start-only ("MT") ablation
    cutoffs: list[int] = field(default_factory=list)
    same_length: bool = False
    attn_type: int = 0
    clamp_len: int = -1
    sample_softmax: int = -1  # kept for config compatibility; sampled softmax is not supported
    mem_init: str = "distinct"  # "identical" reproduces the original's M equal rows
    attn_impl: str = "eager"  # one of ATTN_IMPLS; fused and flex apply to attn_type 0 and 4
    causal: bool = True  # False: the bidirectional encoder (memory at the start only, mem_at_end False)
    n_classes: int = 0  # > 0: a sequence-classification head over the final memory (or tokens)
    memory: str = "tokens"  # "associative": per-layer matrices written through the write slots (ARMT)
    d_mem: int = 32  # associative memory: key width before the DPFP projection (keys of 6 * d_mem)
    read_memory_emb: bool = False  # a learned vector per read slot, added to the memory it reads
    write_mem_init: str = "memory"  # one of WRITE_INITS
    enhanced_xl_recurrence: bool = False  # layer l attends to its own output on the cached positions
    emb_gradient_frac: float = 1.0  # the token embeddings get this fraction of their gradient
    token_shift: bool = False  # attention and FF read half their channels from the previous token

    def __post_init__(self) -> None:
        if self.d_embed is None or self.d_embed <= 0:
            self.d_embed = self.d_model
        self.cutoffs = [int(c) for c in self.cutoffs]
        self.tie_projs = [bool(t) for t in self.tie_projs]
        self._validate()

    def _validate(self) -> None:
        def positive(*names: str) -> None:
            for name in names:
                value = getattr(self, name)
                if not isinstance(value, numbers.Integral) or value <= 0:
                    raise ValueError(f"{name} must be positive, got {value!r}")

        def non_negative(*names: str) -> None:
            for name in names:
                value = getattr(self, name)  # None (a config written by hand) would fail later as a TypeError
                if not isinstance(value, numbers.Integral) or value < 0:
                    raise ValueError(f"{name} must be >= 0, got {value!r}")

        positive("n_token", "n_layer", "n_head", "d_model", "d_head", "d_inner", "tgt_len", "div_val")
        non_negative("ext_len", "mem_len", "num_mem_tokens", "n_classes")
        for name in ("dropout", "dropatt"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.attn_type not in ATTN_TYPES:
            # Types 1 (Shaw) and 3 (Al-Rfou) were never used in the paper; type 3 would also need
            # n_head * d_head == d_model.
            raise ValueError(
                f"attn_type {self.attn_type} is not supported; use one of "
                + ", ".join(f"{k} ({v})" for k, v in ATTN_TYPES.items())
            )
        if self.attn_type == 4 and self.d_head % 2:
            raise ValueError(f"d_head must be even for rotary positions (attn_type 4), got {self.d_head}")
        if self.d_model % 2:
            raise ValueError(f"d_model must be even for the sinusoidal positions, got {self.d_model}")
        cuts = self.cutoffs
        if any(b <= a for a, b in zip(cuts, cuts[1:])) or (cuts and (cuts[0] <= 0 or cuts[-1] >= self.n_token)):
            raise ValueError(
                f"cutoffs must be strictly increasing and inside (0, n_token={self.n_token}), got {cuts}"
            )
        if self.d_embed // self.div_val ** len(cuts) < 1:
            raise ValueError(
                f"d_embed {self.d_embed} is too small for div_val {self.div_val} over {len(cuts)} cutoffs"
            )
        if len(self.tie_projs) > len(cuts) + 1:
            raise ValueError(f"tie_projs has {len(self.tie_projs)} entries for {len(cuts) + 1} clusters")
        if self.same_length and self.mem_len <= 0:
            raise ValueError("same_length needs mem_len > 0 (it sizes the attention window)")
        if self.ext_len and self.mem_len and self.num_mem_tokens and self.mem_at_end:
            # The cache stops ext_len positions before the end, which would drop the write memory and
            # keep the ext_len tokens that come back as the next prefix. The paper never sets ext_len.
            raise ValueError("ext_len > 0 does not combine with memory tokens and a cache (mem_len > 0); "
                             "set ext_len 0")
        if self.sample_softmax > 0:
            raise ValueError("sample_softmax is not supported (it was broken in the original code)")
        if self.attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {self.attn_impl!r}")
        if self.attn_impl == "flex" and self.dropatt > 0:
            raise ValueError("attn_impl 'flex' has no attention dropout; set --dropatt 0 or use eager/fused")
        if not self.causal:
            self._validate_encoder()
        if self.mem_init not in MEM_INITS:
            raise ValueError(f"mem_init must be one of {MEM_INITS}, got {self.mem_init!r}")
        self._validate_memory_options()
        if self.memory not in MEMORY_KINDS:
            raise ValueError(f"memory must be one of {MEMORY_KINDS}, got {self.memory!r}")
        if self.memory == "associative":
            positive("d_mem")
            if not (self.num_mem_tokens and self.mem_at_end and self.causal):
                raise ValueError("associative memory is written through the write slots: it needs num_mem_tokens "
                                 "> 0, mem_at_end and the causal model")

    def _validate_memory_options(self) -> None:
        if self.write_mem_init not in WRITE_INITS:
            raise ValueError(f"write_mem_init must be one of {WRITE_INITS}, got {self.write_mem_init!r}")
        tokens = self.num_mem_tokens > 0 and self.memory == "tokens"
        if self.read_memory_emb and not tokens:
            raise ValueError("read_memory_emb is added to the memory tokens' read slots: it needs num_mem_tokens > 0 "
                             "and memory 'tokens'")
        if self.write_mem_init != "memory" and not (tokens and self.mem_at_end):
            raise ValueError("write_mem_init sets what the write slots start from: it needs num_mem_tokens > 0, "
                             "mem_at_end and memory 'tokens'")
        if self.enhanced_xl_recurrence and not self.mem_len:
            raise ValueError("enhanced_xl_recurrence changes what the XL cache gives each layer: it needs mem_len > 0")
        if self.token_shift and self.d_model % 2:
            raise ValueError(f"token_shift moves half the channels: d_model must be even, got {self.d_model}")
        if not 0.0 < self.emb_gradient_frac <= 1.0:
            raise ValueError(f"emb_gradient_frac must be in (0, 1], got {self.emb_gradient_frac}")

    def _validate_encoder(self) -> None:
        if self.mem_at_end and self.num_mem_tokens:
            raise ValueError("the bidirectional encoder keeps memory at the start only (its slots see the whole "
                             "segment, so they read and write): set mem_at_end False (--no-mem_at_end)")
        if self.same_length:
            raise ValueError("same_length is a causal window; it does not apply to the bidirectional encoder")
        if self.attn_impl == "flex" and self.attn_type == 0:
            raise ValueError("attn_impl 'flex' supports causal relative attention only; use eager or fused")

    def least_bytes(self, rows: int, training: bool) -> tuple[int, str]:
        """A lower bound on the memory one forward (and backward) of `rows` segments needs, and the
        part that dominates it: the layers' and memory's float32 weights (with their gradients when
        training; embeddings and optimizer state left out) or one layer's attention scores. A size
        beyond the machine is refused before anything is allocated."""
        d = self.d_model
        weights = self.n_layer * (4 * d * self.n_head * self.d_head + 2 * d * self.d_inner) + self.num_mem_tokens * d
        weights *= 4 * (2 if training else 1)
        queries = self.tgt_len + 2 * self.num_mem_tokens
        scores = 4 * rows * self.n_head * queries * (queries + self.mem_len)
        return max((weights, "weights"), (scores, "attention over a segment"))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """Build from a dict, ignoring keys that are not model fields (e.g. a run's other flags)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
