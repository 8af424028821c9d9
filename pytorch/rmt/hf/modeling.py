"""Recurrent memory over a Hugging Face `transformers` model: any causal LM or encoder.

    model = RMTForCausalLM(AutoModelForCausalLM.from_pretrained(path), num_mem_tokens=16, segment_size=512)
    out = model(input_ids=ids, attention_mask=mask, labels=ids)   # out.loss, out.logits (B, N, V), out.memory

A long input is cut into segments of `segment_size` tokens that run in order through the
project's one segment loop (`rmt.model.recurrence.run_segments`: the same gradient policies and
per-segment recomputation as the Transformer-XL models). Memory is M learned vectors fed to the
backbone as `inputs_embeds`, never as token ids:

- decoders (RMTForCausalLM): [read memory M | segment T | write memory M]. Causal attention lets
  the read slots carry the previous segment into every token and the write slots see the whole
  segment; the write slots' last-layer states become the next segment's memory. The write slots
  hold the same vectors as the read slots (as in the paper). Tokens never see the write slots.
- encoders (RMTForSequenceClassification): [CLS] [memory M | segment T] [SEP], memory at the start
  only: attention is bidirectional, so the same slots read the old memory and write the new one
  (their last-layer states); write slots at the end would add nothing. [CLS]/[SEP] are added when
  their ids are given (pass ids without special tokens then). The backbone's own head classifies
  the row's last segment, reading position 0 ([CLS], or the first memory slot).

Positions: every segment is a fresh sequence for the backbone, with explicit `position_ids`
counting only what is present: memory slots first (0..M-1, after [CLS]), then the real tokens,
then the write slots (or [SEP]). So rotary backbones (Llama, Qwen, GPT-NeoX) and absolute ones
(GPT-2, BERT) see the same layout, and a right-padded row gives exactly the real-token outputs
and the memory of the unpadded row (its pads are masked and take no position). A row whose
segment holds no real token keeps its memory unchanged.

Memory travels as a value: `out.memory` (a `MemoryState`) passed back as `memory=` continues the
sequence. `bptt_depth`: None full BPTT, 0 detached, D truncated to D segments (the loss of a
segment reaches the memory of the D segments before it and nothing older).
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from rmt.atomic import atomic_write
from rmt.model.recurrence import MemoryState, run_segments

CONFIG_FILE, MEMORY_FILE = "rmt_config.json", "rmt_memory.safetensors"
BACKBONE_DIR, ADAPTER_DIR = "backbone", "adapter"


@dataclass
class RMTConfig:
    """The wrapper's settings (saved as rmt_config.json) and the backbone's sizes, for result rows."""
    kind: str  # "causal-lm" or "sequence-classification"
    num_mem_tokens: int
    segment_size: int
    bptt_depth: int | None = None
    recompute: bool = False
    cls_token_id: int | None = None
    sep_token_id: int | None = None
    backbone: str = ""  # the backbone's name or path, where from_pretrained finds it when not saved alongside
    n_layer: int = 0
    d_model: int = 0
    n_head: int = 0
    d_head: int = 0
    d_inner: int = 0
    mem_len: int = 0  # no Transformer-XL cache here; the result rows' schema has the column
    read_mem_from_cache: bool = False
    memory_norm: bool = False  # decoders: written memory rescaled to the token embeddings' norm
    memory_residual: bool = False  # decoders: read = the learned memory + a projection (from zero) of the written
    memory: str = "tokens"  # "tokens" (RMT) or "associative" (ARMT, rmt.hf.associative)
    d_mem: int = 0  # associative memory: the key width before DPFP (d_key = 6 * d_mem)

    @property
    def causal(self) -> bool:
        return self.kind.startswith("causal-lm")

    @property
    def mem_at_end(self) -> bool:
        return self.causal

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class SegmentInput(NamedTuple):
    """One segment of B rows: token ids and the attention mask (1 real, 0 padding)."""
    ids: torch.Tensor  # (B, T)
    mask: torch.Tensor  # (B, T)

    def size(self, dim: int) -> int:  # the segment loop asks a segment for its batch size
        return self.ids.size(dim)


@dataclass
class RMTOutput(ModelOutput):
    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None  # causal LM (B, N, V); classification (B, n_classes)
    memory: MemoryState | None = None  # the state after the last segment: pass it as memory= to continue


def _sizes(cfg) -> dict:
    """Layer count and widths read off a transformers config (names differ between families)."""
    d_model = getattr(cfg, "hidden_size", 0) or 0
    n_head = getattr(cfg, "num_attention_heads", 0) or 0
    d_inner = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * d_model
    return {"n_layer": getattr(cfg, "num_hidden_layers", 0) or 0, "d_model": d_model, "n_head": n_head,
            "d_head": getattr(cfg, "head_dim", None) or (d_model // n_head if n_head else 0), "d_inner": d_inner}


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The backbone's repeated blocks, in order: the classes transformers keeps whole (_no_split_modules)."""
    from transformers import PreTrainedModel

    names = {n for m in model.modules() if isinstance(m, PreTrainedModel) for n in (m._no_split_modules or [])}
    return [m for m in model.modules() if type(m).__name__ in names]


def _is_peft(module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(module, PeftModel)


class _SegmentStep:
    """The wrapper as the segment loop calls it: (segment, _, state) -> (output, new state);
    `read_memory` (an evaluation ablation, rmt.model.ablation) replaces the state a segment reads."""

    def __init__(self, wrapper, read_memory=None):
        self.wrapper, self.read_memory = wrapper, read_memory

    def __call__(self, x: SegmentInput, keep: torch.Tensor | None, state: MemoryState):
        state = state if self.read_memory is None else self.read_memory(state)
        return self.wrapper.segment(x, state) if keep is None else self.wrapper.segment(x, state, keep=keep)

    def initial_memory(self, batch: int):
        return self.wrapper.initial_memory(batch)


class RecurrentWrapper(nn.Module):
    """What both wrappers share: the memory parameter, segmenting, the segment loop, the backbone
    call with explicit positions, freezing, saving and loading."""

    kind = ""
    auto_class = ""
    # Parameters a curriculum stage may add to an earlier stage's weights (--init_checkpoint):
    # they start as built, and nothing else may be missing.
    added_by_a_stage = ("memory_proj.",)

    def __init__(self, backbone: nn.Module, num_mem_tokens: int, segment_size: int, bptt_depth: int | None = None,
                 recompute: bool = False, freeze_backbone: bool = False, cls_token_id: int | None = None,
                 sep_token_id: int | None = None, memory_norm: bool = False, memory_residual: bool = False):
        super().__init__()
        if num_mem_tokens < 0 or segment_size <= 0:
            raise ValueError(f"need num_mem_tokens >= 0 and segment_size > 0, got {num_mem_tokens} and {segment_size}")
        if bptt_depth is not None and bptt_depth < 0:
            raise ValueError(f"bptt_depth must be None (full BPTT), 0 (detached) or D > 0, got {bptt_depth}")
        self.backbone = backbone
        cfg = backbone.config
        self.config = RMTConfig(self.kind, num_mem_tokens, segment_size, bptt_depth, recompute, cls_token_id,
                                sep_token_id, str(getattr(cfg, "_name_or_path", "") or ""), **_sizes(cfg),
                                memory_norm=memory_norm, memory_residual=memory_residual)
        if memory_residual and not (num_mem_tokens and self.config.causal):
            raise ValueError("memory_residual maps a decoder's written memory tokens: it needs num_mem_tokens > 0 and "
                             "a causal LM")
        weight = backbone.get_input_embeddings().weight
        # Memory starts like token embeddings (same scale), distinct rows so the slots can differ.
        self.memory = nn.Parameter(torch.randn(num_mem_tokens, weight.size(1)) * weight.detach().float().std()) \
            if num_mem_tokens else None
        # Zero at the start: every segment then reads the learned memory itself (see RMTForCausalLM.written).
        self.memory_proj = nn.Linear(weight.size(1), weight.size(1), bias=False) if memory_residual else None
        if self.memory_proj is not None:
            nn.init.zeros_(self.memory_proj.weight)
        if freeze_backbone:
            self.freeze_backbone()

    def freeze_backbone(self) -> None:
        """Train the memory only (and a classification head: it is new); the backbone stays as loaded."""
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        for p in self.head_parameters():
            p.requires_grad_(True)

    def head_parameters(self) -> list[nn.Parameter]:
        return []

    def memory_parameters(self) -> dict[str, nn.Parameter]:
        """The wrapper's own parameters, by name: the memory (and an associative memory's
        projections), new where the backbone is pretrained (saved apart; --mem_lr trains them)."""
        return {name: p for name, p in self.named_parameters() if not name.startswith("backbone.")}

    def initial_memory(self, batch: int) -> torch.Tensor | None:
        if self.memory is None:
            return None
        dtype = self.backbone.get_input_embeddings().weight.dtype
        return self.memory.to(dtype).unsqueeze(0).expand(batch, -1, -1)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.backbone.get_input_embeddings()(ids)

    def call_backbone(self, embeds: torch.Tensor, present: torch.Tensor, **kwargs):
        """One backbone pass over a laid-out segment; positions count the present slots only."""
        positions = (present.cumsum(1) - 1).clamp(min=0)
        return self.backbone(inputs_embeds=embeds, attention_mask=present, position_ids=positions,
                             output_hidden_states=True, use_cache=False, **kwargs)

    @staticmethod
    def keep_if_empty(new: torch.Tensor, old: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """A row with no real token in the segment keeps its memory."""
        return torch.where(mask.any(1).view(-1, 1, 1), new, old)

    def segments(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[SegmentInput]:
        t = self.config.segment_size
        pad = -input_ids.size(1) % t
        ids = F.pad(input_ids, (0, pad), value=0)
        mask = F.pad(attention_mask.to(torch.long), (0, pad), value=0)
        return [SegmentInput(i, m) for i, m in zip(ids.split(t, dim=1), mask.split(t, dim=1))]

    def run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, memory: MemoryState | None,
            read_memory=None, keep: list[torch.Tensor] | None = None):
        """([output per segment], state, segments): the segment loop under the gradient policy;
        keep: per segment, the positions whose logits a causal LM computes (None: all of them)."""
        if input_ids.dim() != 2 or input_ids.size(1) == 0:
            raise ValueError(f"input_ids must be (batch, length >= 1), got shape {tuple(input_ids.shape)}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask {tuple(attention_mask.shape)} must match input_ids {tuple(input_ids.shape)}")
        segs = self.segments(input_ids, attention_mask)
        cfg = self.config
        # Without gradient every policy computes the same values: skip truncation's replays.
        depth = cfg.bptt_depth if torch.is_grad_enabled() else None
        outs, state = run_segments(_SegmentStep(self, read_memory), segs, keep or [None] * len(segs), memory,
                                   depth, cfg.recompute)
        return outs, state, segs

    # ---- save / load --------------------------------------------------------------------------

    def save_pretrained(self, path: str | pathlib.Path, save_backbone: bool = True) -> None:
        """path/rmt_config.json and rmt_memory.safetensors, plus the backbone in path/backbone
        (its own save_pretrained, safetensors), or only its LoRA adapter in path/adapter for a
        peft model; save_backbone False keeps the backbone by reference (config.backbone)."""
        from safetensors.torch import save

        path = pathlib.Path(path)
        if save_backbone:
            self.backbone.save_pretrained(path / (ADAPTER_DIR if _is_peft(self.backbone) else BACKBONE_DIR))
        tensors = {name: p.detach().cpu().contiguous() for name, p in self.memory_parameters().items()}
        atomic_write(path / MEMORY_FILE, lambda f: f.write(save(tensors)))
        text = json.dumps(self.config.to_dict(), indent=2) + "\n"
        atomic_write(path / CONFIG_FILE, lambda f: f.write(text), text=True, encoding="utf-8")

    @classmethod
    def from_pretrained(cls, path: str | pathlib.Path, backbone: nn.Module | None = None, **backbone_kwargs):
        """The wrapper saved in `path`; the backbone from path/backbone, else `backbone` or the
        saved reference (with path/adapter applied through peft when present)."""
        import transformers
        from safetensors.torch import load_file

        path = pathlib.Path(path)
        try:
            cfg = json.loads((path / CONFIG_FILE).read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{path} holds no readable {CONFIG_FILE} ({type(e).__name__}): "
                             "save the wrapper with save_pretrained") from None
        if cfg.get("kind") != cls.kind:
            raise ValueError(f"{path} holds a {cfg.get('kind')!r} wrapper, not {cls.kind!r}: load it with its own class")
        auto = getattr(transformers, cls.auto_class)
        if backbone is None:
            source = path / BACKBONE_DIR if (path / BACKBONE_DIR).is_dir() else cfg["backbone"]
            if not source:
                raise ValueError(f"{path} has no saved backbone and no reference to one: pass backbone=")
            backbone = auto.from_pretrained(source, **backbone_kwargs)
        if (path / ADAPTER_DIR).is_dir() and not _is_peft(backbone):
            from peft import PeftModel
            backbone = PeftModel.from_pretrained(backbone, path / ADAPTER_DIR)
        model = cls(backbone, cfg["num_mem_tokens"], cfg["segment_size"], cfg["bptt_depth"], cfg["recompute"],
                    cls_token_id=cfg["cls_token_id"], sep_token_id=cfg["sep_token_id"],
                    memory_norm=cfg.get("memory_norm", False), memory_residual=cfg.get("memory_residual", False),
                    **cls.saved_options(cfg))
        model.config.backbone = cfg["backbone"]
        own = load_file(path / MEMORY_FILE)
        missing = {n for n, _ in model.named_parameters() if not n.startswith("backbone.")} - set(own)
        if missing or set(own) - {n for n, _ in model.named_parameters()}:
            raise ValueError(f"{path / MEMORY_FILE} does not hold this wrapper's own weights (missing "
                             f"{sorted(missing)[:3]}): save it again with save_pretrained")
        model.load_state_dict(own, strict=False)
        return model

    @staticmethod
    def saved_options(cfg: dict) -> dict:
        """Constructor options of a subclass, from its saved config (none here)."""
        return {}


class RMTForCausalLM(RecurrentWrapper):
    """A causal LM over inputs of any length: every real token after the first is supervised."""

    kind, auto_class = "causal-lm", "AutoModelForCausalLM"

    def segment(self, x: SegmentInput, state: MemoryState, keep: torch.Tensor | None = None, **backbone_kwargs):
        """(logits of the segment's tokens, or of those at positions `keep` only; the new state)."""
        b, t = x.ids.shape
        m = self.config.num_mem_tokens
        if keep is not None:  # the LM head on those positions alone (after the m read slots)
            backbone_kwargs["logits_to_keep"] = keep + m
        tokens = self.embed(x.ids)
        if not m:
            out = self.call_backbone(tokens, x.mask, **backbone_kwargs)
            return out.logits, MemoryState()
        mem = self.initial_memory(b) if state.mem is None else state.mem
        out = self.call_backbone(*self.laid_out(tokens, x.mask, mem), **backbone_kwargs)
        written = self.keep_if_empty(self.written(out.hidden_states[-1][:, m + t:]), mem, x.mask)
        return out.logits if keep is not None else out.logits[:, m : m + t], MemoryState(written)

    @staticmethod
    def laid_out(tokens: torch.Tensor, mask: torch.Tensor, mem: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A segment's backbone input: embeddings [read memory | tokens | write memory] and which are present."""
        slots = mask.new_ones(mask.size(0), mem.size(1))
        return torch.cat([mem, tokens, mem], 1), torch.cat([slots, mask, slots], 1)

    def written(self, states: torch.Tensor) -> torch.Tensor:
        """The memory the write slots' last-layer states become. As in the paper, the states
        themselves; with memory_norm each slot is rescaled to the mean norm of the token
        embeddings. (A pretrained decoder's last layer, after its final norm, is far larger than
        its inputs: about 13x for SmolLM2-135M, so the next segment reads unscaled memory as
        inputs unlike any it was trained on.) With memory_residual the next segment reads the
        learned memory plus a learned projection of the states, zero at the start: a pretrained
        decoder attends to the learned memory (it serves as an attention sink) and gives next to
        no attention to its own last-layer states placed there, so the gradient that would teach
        it to read them is next to none; through the projection it flows where attention already is."""
        if self.config.memory_norm:
            scale = self.backbone.get_input_embeddings().weight.detach().norm(dim=-1).mean()
            states = states * (scale / states.norm(dim=-1, keepdim=True).clamp(min=1e-6)).to(states.dtype)
        if self.memory_proj is not None:
            states = self.initial_memory(states.size(0)) + self.memory_proj(states).to(states.dtype)
        return states

    @torch.no_grad()
    def read(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
             memory: MemoryState | None = None, read_memory=None) -> MemoryState:
        """The state after reading input_ids, segment by segment, without gradient and without
        logits: a long context before a question costs its backbone passes and a fixed-size state,
        whatever its length. Pass the state as memory= to forward or generate to go on."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        state = memory or MemoryState()
        for seg in self.segments(input_ids, attention_mask):
            # the LM head on the last position only (logits_to_keep): its output is dropped
            _, state = self.segment(seg, state if read_memory is None else read_memory(state), logits_to_keep=1)
        return state

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, memory: MemoryState | None = None,
                read_memory=None, labelled_logits_only: bool = False) -> RMTOutput:
        """labels (B, N) as in transformers (shifted inside, -100 ignored; padding is ignored too);
        read_memory: a function of the state each segment reads (rmt.model.ablation), else None.
        labelled_logits_only: the LM head runs only where some row's next token is labelled, and
        out.logits is None; the same loss. Where a few answer tokens are labelled among many (QA),
        the head and its softmax over the vocabulary are most of a small backbone's cost."""
        if labels is not None and attention_mask is not None:
            labels = labels.masked_fill(attention_mask == 0, -100)
        if not labelled_logits_only:
            outs, state, _ = self.run(input_ids, attention_mask, memory, read_memory)
            logits = torch.cat(outs, 1)[:, : input_ids.size(1)]
            loss = None if labels is None else F.cross_entropy(logits[:, :-1].flatten(0, 1).float(),
                                                               labels[:, 1:].flatten(), ignore_index=-100)
            return RMTOutput(loss=loss, logits=logits, memory=state)
        if labels is None:
            raise ValueError("labelled_logits_only computes logits where labels are: give labels")
        where = (labels[:, 1:] != -100).any(0).nonzero().squeeze(1)  # position i predicts token i + 1
        t = self.config.segment_size
        keep = [where[(where >= s) & (where < s + t)] - s for s in range(0, input_ids.size(1), t)]
        outs, state, _ = self.run(input_ids, attention_mask, memory, read_memory, keep)
        loss = F.cross_entropy(torch.cat(outs, 1).flatten(0, 1).float(), labels[:, where + 1].flatten(),
                               ignore_index=-100)
        return RMTOutput(loss=loss, logits=None, memory=state)

    def segment_cache(self, state: MemoryState, batch: int):
        """Generation's segment being filled, reading `state` (rmt.hf.generation)."""
        from rmt.hf.generation import SegmentCache
        return SegmentCache(self, state, batch)

    @property
    def generation_config(self):
        """The backbone's generation config (its eos and pad ids): generate's defaults, as in transformers."""
        return getattr(self.backbone, "generation_config", None)

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, generation_config=None,
                 **kwargs) -> torch.Tensor:
        """Each row followed by its new tokens (B, L + n), as transformers' generate; see rmt.hf.generation."""
        from rmt.hf.generation import generate
        return generate(self, input_ids, attention_mask, generation_config, **kwargs)


class RMTForSequenceClassification(RecurrentWrapper):
    """A bidirectional encoder classifying inputs of any length; the backbone's head reads the
    last segment of each row, whose memory carries the segments before it."""

    kind, auto_class = "sequence-classification", "AutoModelForSequenceClassification"

    def __init__(self, backbone: nn.Module, *args, **kwargs):
        _require_encoder(backbone.config)
        super().__init__(backbone, *args, **kwargs)

    def head_parameters(self) -> list[nn.Parameter]:
        body = {id(p) for p in self.backbone.base_model.parameters()}
        return [p for p in self.backbone.parameters() if id(p) not in body]

    def _special(self, token_id: int | None, b: int, like: torch.Tensor):
        if token_id is None:
            return [], []
        ids = torch.full((b, 1), token_id, dtype=like.dtype, device=like.device)
        return [self.embed(ids)], [torch.ones_like(ids)]

    def segment(self, x: SegmentInput, state: MemoryState):
        b, m = x.ids.size(0), self.config.num_mem_tokens
        cls_emb, cls_mask = self._special(self.config.cls_token_id, b, x.ids)
        sep_emb, sep_mask = self._special(self.config.sep_token_id, b, x.ids)
        mem = self.initial_memory(b) if state.mem is None else state.mem
        mem_emb, mem_mask = ([mem], [x.mask.new_ones(b, m)]) if m else ([], [])
        out = self.call_backbone(torch.cat([*cls_emb, *mem_emb, self.embed(x.ids), *sep_emb], 1),
                                 torch.cat([*cls_mask, *mem_mask, x.mask, *sep_mask], 1))
        if not m:
            return out.logits, MemoryState()
        start = len(cls_emb)
        return out.logits, MemoryState(self.keep_if_empty(out.hidden_states[-1][:, start : start + m], mem, x.mask))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, memory: MemoryState | None = None,
                read_memory=None) -> RMTOutput:
        outs, state, segs = self.run(input_ids, attention_mask, memory, read_memory)
        n_real = torch.stack([s.mask.sum(1) for s in segs]).sum(0)
        last = ((n_real - 1).clamp(min=0) // self.config.segment_size)  # each row's last segment with a token
        logits = torch.stack(outs)[last, torch.arange(len(last), device=last.device)]
        loss = None if labels is None else F.cross_entropy(logits.float(), labels)
        return RMTOutput(loss=loss, logits=logits, memory=state)


def _require_encoder(cfg) -> None:
    """The head reads position 0 ([CLS]), which a decoder's causal attention lets see nothing of
    the segment or the memory: a decoder-only backbone would train a classifier blind to its input."""
    from transformers.models.auto import modeling_auto as auto

    kind = getattr(cfg, "model_type", "")
    decoder_only = kind in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and kind not in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES
    if decoder_only or getattr(cfg, "is_decoder", False):
        raise ValueError(f"RMTForSequenceClassification needs a bidirectional encoder (BERT-style), and {kind!r} is "
                         "configured as a decoder: use an encoder backbone, or RMTForCausalLM")
