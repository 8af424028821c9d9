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

import inspect

import torch

from rmt.model.generation import sample
from rmt.model.recurrence import MemoryState


def cache_argument(backbone) -> str:
    """The name of the key/value-cache argument: `cache` in recent transformers, `past_key_values` before."""
    base = backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone
    return "cache" if "cache" in inspect.signature(type(base).forward).parameters else "past_key_values"


class SegmentCache:
    """One segment being filled: the backbone's key/value cache over [read memory | tokens]."""

    def __init__(self, model, mem: torch.Tensor | None):
        self.model, self.mem = model, mem
        self.m = 0 if mem is None else mem.size(1)
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

    def write(self) -> torch.Tensor | None:
        """The memory this full segment writes: its write slots' last-layer states."""
        if not self.m:
            return None
        return self._forward(self.mem, hidden=True).hidden_states[-1]


@torch.no_grad()
def _decode(model, ids: torch.Tensor, max_new_tokens: int, pick, eos: int | None, memory: MemoryState | None):
    """Rows (B, L) of real tokens only -> new tokens (B, max_new_tokens)."""
    t = model.config.segment_size
    start = (ids.size(1) - 1) // t * t  # the segment that holds the last prompt token
    state = memory or MemoryState()
    if start:
        _, state, _ = model.run(ids[:, :start], None, state)
    mem = model.initial_memory(ids.size(0)) if state.mem is None else state.mem
    segment = SegmentCache(model, mem)
    logits = segment.feed(ids[:, start:])
    done = torch.zeros(ids.size(0), dtype=torch.bool, device=ids.device)
    new = []
    for i in range(max_new_tokens):
        token = pick(logits)
        if eos is not None:
            token = torch.where(done, eos, token)
            done |= token == eos
        new.append(token)
        if i == max_new_tokens - 1 or bool(done.all()):
            break
        if segment.n_tokens == t:  # the segment is full: write memory, start the next with this token
            mem = segment.write()
            segment = SegmentCache(model, mem)
        logits = segment.feed(token[:, None])
    out = torch.stack(new, 1) if new else ids.new_zeros(ids.size(0), 0)
    if out.size(1) < max_new_tokens:  # every row ended with eos
        out = torch.cat([out, out.new_full((out.size(0), max_new_tokens - out.size(1)), eos)], 1)
    return out


def generate(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, max_new_tokens: int = 32,
             do_sample: bool = False, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             seed: int | None = None, eos_token_id: int | None = None, memory: MemoryState | None = None
             ) -> torch.Tensor:
    """The next max_new_tokens tokens after each row's last real token (B, max_new_tokens); rows
    that emit eos_token_id are filled with it. Greedy unless do_sample (temperature, top-k,
    top-p; `seed` makes sampling reproducible). Unlike transformers' generate, the prompt is not
    repeated in the output. `memory` continues a sequence whose earlier segments ran before."""
    if model.training:
        raise ValueError("generate needs model.eval() (dropout would differ at every token)")
    if input_ids.dim() != 2 or input_ids.size(1) < 1:
        raise ValueError(f"input_ids must be (batch, length >= 1), got shape {tuple(input_ids.shape)}")
    if max_new_tokens < 0 or temperature <= 0 or top_k < 0 or not 0 < top_p <= 1:
        raise ValueError("need max_new_tokens >= 0, temperature > 0, top_k >= 0 and 0 < top_p <= 1")
    generator = None
    if do_sample and seed is not None:
        generator = torch.Generator(device=input_ids.device).manual_seed(seed)

    def pick(logits: torch.Tensor) -> torch.Tensor:
        if not do_sample:
            return logits.argmax(-1)
        return sample(logits.float().log_softmax(-1), temperature, top_k, top_p, generator)

    if max_new_tokens == 0:
        return input_ids.new_zeros(input_ids.size(0), 0)
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(torch.bool)
    if bool(mask.all()):
        return _decode(model, input_ids, max_new_tokens, pick, eos_token_id, memory)
    if bool((mask.sum(1) == 0).any()):
        raise ValueError("a row of input_ids has no real token (its attention_mask is all 0)")
    rows = [_decode(model, input_ids[i][mask[i].bool()][None], max_new_tokens, pick, eos_token_id,
                    None if memory is None else memory.select(slice(i, i + 1)))
            for i in range(input_ids.size(0))]
    return torch.cat(rows)
