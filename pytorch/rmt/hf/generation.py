"""Generation with RMTForCausalLM: segment by segment, as the model was trained.

The prompt's complete segments run through the segment loop and write memory. The segment that
holds the last prompt token is fed to the backbone as [read memory | its tokens] with the
backbone's own key/value cache; every new token is then one cached step at the next position.
When a segment is full, its write slots are fed after it through the same cache (their
last-layer states are the new memory) and the next segment starts from a fresh cache with that
memory as its read slots. So generated tokens follow the last real token directly, and a write
slot never precedes a token of its own segment: the cache holds only read slots and tokens.

Rows of different lengths (any padding) are decoded one row at a time from their real tokens.
"""
from __future__ import annotations

import copy
import inspect

import torch
import torch.nn.functional as F

from rmt.model.generation import sample
from rmt.model.recurrence import MemoryState


def cache_argument(backbone) -> str:
    """The name of the key/value-cache argument: `cache` in recent transformers, `past_key_values` before."""
    base = backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone
    return "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"


class SegmentCache:
    """One segment being filled: the backbone's key/value cache over [read memory | tokens]."""

    def __init__(self, model, state: MemoryState, batch: int):
        self.model = model
        self.mem = model.initial_memory(batch) if state.mem is None else state.mem
        self.m = 0 if self.mem is None else self.mem.size(1)
        self.cache, self.n_tokens, self.past = None, 0, 0

    def _forward(self, embeds: torch.Tensor, hidden: bool = False):
        b, n = embeds.shape[:2]
        positions = torch.arange(self.past, self.past + n, device=embeds.device).expand(b, -1)
        mask = torch.ones(b, self.past + n, dtype=torch.long, device=embeds.device)
        backbone = self.model.backbone
        out = backbone(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True,
                       output_hidden_states=hidden, **{cache_argument(backbone): self.cache})
        self.cache = out.cache if "cache" in out else out.past_key_values
        self.past += n
        return out

    def feed(self, ids: torch.Tensor) -> torch.Tensor:
        """Append tokens (B, n) (the first call puts the read memory before them); next-token logits (B, V)."""
        embeds = self.model.embed(ids)
        if self.past == 0 and self.m:
            embeds = torch.cat([self.mem, embeds], 1)
        self.n_tokens += ids.size(1)
        return self._forward(embeds).logits[:, -1]

    def write(self) -> MemoryState:
        """The state this full segment leaves: its write slots' last-layer states as memory."""
        if not self.m:
            return MemoryState()
        return MemoryState(self.model.written(self._forward(self.mem, hidden=True).hidden_states[-1]))


class AssociativeSegmentCache(SegmentCache):
    """The same for associative memory (rmt.hf.associative): no read slots; every fed position
    reads the layers' (A, z), and the full segment's write slots, fed after it through the
    cache, write the next (A, z)."""

    def __init__(self, model, state: MemoryState, batch: int):
        super().__init__(model, MemoryState(), batch)
        self.mem, self.m = None, 0  # nothing before the tokens
        self.assoc, self.slots = state.assoc, model.initial_memory(batch)

    def _forward(self, embeds: torch.Tensor, hidden: bool = False, write: bool = False):
        with self.model.assoc.active(self.assoc, slice(None) if write else None) as p:
            out = super()._forward(embeds, hidden)
        self.last_pass = p
        return out

    def write(self) -> MemoryState:
        self._forward(self.slots, write=True)
        return MemoryState(assoc=self.model.assoc.state(self.last_pass))


@torch.no_grad()
def _decode(model, ids: torch.Tensor, max_new_tokens: int, pick, eos: torch.Tensor | None, pad: int,
            memory: MemoryState | None) -> torch.Tensor:
    """Rows (B, L) of real tokens only -> new tokens (B, n <= max_new_tokens): n is shorter when
    every row has ended with an eos id; a row that ended earlier is filled with `pad`."""
    t = model.config.segment_size
    start = (ids.size(1) - 1) // t * t  # the segment that holds the last prompt token
    state = memory or MemoryState()
    if start:  # the complete segments before it: their memory only
        state = model.read(ids[:, :start], memory=state)
    segment = model.segment_cache(state, ids.size(0))
    logits = segment.feed(ids[:, start:])
    done = torch.zeros(ids.size(0), dtype=torch.bool, device=ids.device)
    new = []
    for i in range(max_new_tokens):
        token = torch.where(done, pad, pick(logits))
        new.append(token)
        if eos is not None:
            done |= torch.isin(token, eos)
        if i == max_new_tokens - 1 or bool(done.all()):
            break
        if segment.n_tokens == t:  # the segment is full: write memory, start the next with this token
            segment = model.segment_cache(segment.write(), ids.size(0))
        logits = segment.feed(token[:, None])
    return torch.stack(new, 1) if new else ids.new_zeros(ids.size(0), 0)


def settings(model, input_len: int, generation_config=None, **kwargs):
    """The generation config in force, as transformers' generate builds it: `generation_config` (else
    the backbone's) updated by the keyword arguments; an unknown argument is an error."""
    from transformers import GenerationConfig

    base = generation_config or model.generation_config \
        or GenerationConfig.from_model_config(model.backbone.config)
    cfg = copy.deepcopy(base)
    unused = cfg.update(**kwargs)
    if unused:
        raise ValueError(f"generate got arguments it does not use: {', '.join(sorted(unused))}")
    if cfg.max_new_tokens is None:  # transformers' rule: max_length counts the prompt (default 20)
        cfg.max_new_tokens = (cfg.max_length if cfg.max_length is not None else 20) - input_len
        if cfg.max_new_tokens <= 0:
            raise ValueError(f"the prompt has {input_len} tokens, max_length {cfg.max_length or 20} leaves none to "
                             "generate: pass max_new_tokens")
    return cfg


def generate(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, generation_config=None,
             seed: int | None = None, memory: MemoryState | None = None, **kwargs) -> torch.Tensor:
    """As transformers' generate for a decoder: each row of input_ids followed by its new tokens
    (B, L + n), n <= max_new_tokens (shorter when every row has emitted an eos id; rows that ended
    earlier are filled with pad_token_id, else the first eos id). The settings are
    `generation_config` (default: the backbone's, so its eos and pad ids hold) updated by keyword
    arguments: max_new_tokens (or max_length, counting the prompt), do_sample, temperature, top_k
    (50 when unset, as in transformers), top_p, eos_token_id (an id or a list), pad_token_id.
    `seed` makes sampling reproducible; `memory` continues a sequence whose earlier segments ran
    before. New tokens follow each row's last real token, whatever its padding."""
    if model.training:
        raise ValueError("generate needs model.eval() (dropout would differ at every token)")
    if input_ids.dim() != 2 or input_ids.size(1) < 1:
        raise ValueError(f"input_ids must be (batch, length >= 1), got shape {tuple(input_ids.shape)}")
    cfg = settings(model, input_ids.size(1), generation_config, **kwargs)
    max_new, do_sample = cfg.max_new_tokens, bool(cfg.do_sample)
    temperature = 1.0 if cfg.temperature is None else cfg.temperature
    top_k = 50 if cfg.top_k is None else cfg.top_k
    top_p = 1.0 if cfg.top_p is None else cfg.top_p
    if max_new < 0 or (do_sample and (temperature <= 0 or top_k < 0 or not 0 < top_p <= 1)):
        raise ValueError("need max_new_tokens >= 0, temperature > 0, top_k >= 0 and 0 < top_p <= 1")
    eos_ids = cfg.eos_token_id
    eos_ids = [] if eos_ids is None else [eos_ids] if isinstance(eos_ids, int) else list(eos_ids)
    eos = torch.tensor(eos_ids, device=input_ids.device) if eos_ids else None
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else (eos_ids[0] if eos_ids else 0)
    generator = None
    if do_sample and seed is not None:
        generator = torch.Generator(device=input_ids.device).manual_seed(seed)

    def pick(logits: torch.Tensor) -> torch.Tensor:
        if not do_sample:
            return logits.argmax(-1)
        return sample(logits.float().log_softmax(-1), temperature, top_k, top_p, generator)

    if max_new == 0:
        return input_ids
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(torch.bool)
    if bool(mask.all()):
        new = _decode(model, input_ids, max_new, pick, eos, pad, memory)
    else:
        if bool((mask.sum(1) == 0).any()):
            raise ValueError("a row of input_ids has no real token (its attention_mask is all 0)")
        rows = [_decode(model, input_ids[i][mask[i].bool()][None], max_new, pick, eos, pad,
                        None if memory is None else memory.select(slice(i, i + 1)))
                for i in range(input_ids.size(0))]
        width = max(r.size(1) for r in rows)
        new = torch.cat([F.pad(r, (0, width - r.size(1)), value=pad) for r in rows])
    return torch.cat([input_ids, new], 1)
