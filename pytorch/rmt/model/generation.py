"""Generation from a trained model: streaming across segments, with a cache of keys and values.

    tokens = generate(model, prompt, max_new_tokens=200, temperature=0.8, top_k=40, seed=0)

A sequence is decoded segment by segment, exactly as it was trained. A segment holds tgt_len
tokens; while it fills, every new token is one query against the keys and values kept per layer
for [XL cache | read memory | the segment's tokens so far], so it costs one position instead of a
re-encoding of the segment. When the segment is full it is encoded once more as in training
(`model.encode`), which writes the memory and updates the XL cache, and the next segment starts.

A segment that is still filling is treated as a full-length segment whose later tokens are not
known yet: causal attention makes the known tokens independent of them, and the memory tokens
see the positions of a full segment, as in training. (The read memory's scores depend on the
segment length through the relative shift, so its per-layer states are computed once per segment
at full length.) `ReencodingDecoder` is the slow reference: it re-encodes the padded segment for
every token. Both return the same log-probabilities (to float rounding).
"""
from __future__ import annotations

import torch

from rmt.model.associative import read_all
from rmt.model.recurrence import MemoryState


class Decoder:
    """Feeds B rows one token at a time; `feed` returns the log-probabilities of the next token.

    The model must be in eval mode (dropout off). `state` continues a sequence whose segments were
    encoded before (None: learned initial memory, empty cache).
    """

    def __init__(self, model, batch: int, state: MemoryState | None = None):
        cfg = model.config
        if cfg.ext_len:
            raise ValueError("generation needs ext_len 0 (the extended context is a training-time option)")
        if model.training:
            raise ValueError("generation needs model.eval() (dropout would differ at every token)")
        if not cfg.causal:
            raise ValueError("generation needs a causal model; this one is the bidirectional encoder")
        self.model, self.batch = model, batch
        self.segment_len = cfg.tgt_len
        self.state = MemoryState() if state is None else state
        self._begin_segment()

    @property
    def position(self) -> int:
        """How many tokens of the current segment have been fed."""
        return self.n_fed

    def _begin_segment(self) -> None:
        model, cfg = self.model, self.model.config
        t = self.segment_len
        xl = self.state.xl if cfg.mem_len > 0 else None
        self.mlen = mlen = xl[0].size(1) if xl else 0
        self.n_fed, self.tokens = 0, []
        self.previous = [[None, None] for _ in range(cfg.n_layer)]  # token shift: the last token's inputs
        device = model.word_emb.emb_layers[0].weight.device
        dtype = model.word_emb.emb_layers[0].weight.dtype
        self.mask = model.segment_mask(t, mlen, device, flex=False)  # (Q, K) of a full segment
        k_full = self.mask.size(1)
        self.pos_emb = model.positions(k_full, device, dtype)
        prefix = [model.layer_cache(xl, i) if xl else torch.zeros(self.batch, 0, cfg.d_model, device=device, dtype=dtype)
                  for i in range(cfg.n_layer)]
        if cfg.attn_type == 2 and xl:
            prefix[0] = prefix[0] + self.pos_emb[:mlen]  # as run_layers adds it to the first layer's cache
        # Associative memory: each layer's (A, z) that every input of this segment reads first.
        self.reads = None if model.assoc is None else read_all(model.assoc, self.state.assoc)
        r = model.read_slots
        if r:
            # The read memory never sees the segment's tokens: any tokens give its states.
            placeholder = torch.zeros(self.batch, t, dtype=torch.long, device=device)
            hids = model.run_layers(model.segment_input(placeholder, self.state.mem), xl, self.mask)
            prefix = [torch.cat([p, h[:, :r]], dim=1) for p, h in zip(prefix, hids)]
        n_prefix = mlen + r
        # Rotary (attn_type 4): key j of [cache | segment] sits at position j, cached rotated.
        self.rope = model.rotary(torch.arange(k_full, device=device)) if cfg.attn_type == 4 else None
        self.keys, self.values = [], []
        for layer, rows in zip(model.layers, prefix):
            _, k, v = layer.attn.project(rows, self._rope(0, n_prefix))
            # Head-major (B, H, K, D): each step reads them with plain batched matrix products.
            keys = k.new_empty(self.batch, k.size(2), n_prefix + t, k.size(3))
            values = torch.empty_like(keys)
            keys[:, :, :n_prefix], values[:, :, :n_prefix] = k.transpose(1, 2), v.transpose(1, 2)
            self.keys.append(keys)
            self.values.append(values)
        if cfg.attn_type == 0:
            self.r_k = [layer.attn.r_net(self.pos_emb).view(k_full, cfg.n_head, cfg.d_head).permute(1, 2, 0)
                        .contiguous() for layer in model.layers]  # (H, D, K)

    def _read(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """Layer i's input as the layer sees it: after its associative read, if it has one."""
        before = self.reads[i] if self.reads else None
        return h if before is None else self.model.assoc[i].read(h, *before)

    def _shift(self, i: int, j: int, h: torch.Tensor) -> torch.Tensor:
        """Token shift (model.layers.token_shift) for one new token: what attention (j 0) or the
        feed-forward network (j 1) of layer i reads, half its channels from the token before."""
        if not self.model.config.token_shift:
            return h
        before, self.previous[i][j] = self.previous[i][j], h
        if before is None:  # the segment's first token: zeros, as in the whole segment's pass
            before = torch.zeros_like(h)
        half = h.size(-1) // 2
        return torch.cat([h[..., :half], before[..., half:]], dim=-1)

    def _rope(self, start: int, stop: int):
        return None if self.rope is None else tuple(t[start:stop] for t in self.rope)

    @torch.no_grad()
    def feed(self, token: torch.Tensor) -> torch.Tensor:
        """token (B,) -> log-probabilities (B, V) of the token after it."""
        model, cfg = self.model, self.model.config
        query = model.read_slots + self.n_fed  # this token's row in the segment mask
        n_keys = self.mlen + query + 1
        h = model.word_emb(token.view(-1, 1))  # (B, 1, C)
        if cfg.attn_type == 2:
            h = h + self.pos_emb[-self.mask.size(0) + query]
        mask = self.mask[query : query + 1, :n_keys]
        for i, layer in enumerate(model.layers):
            h = self._read(i, h)
            q, k, v = layer.attn.project(self._shift(i, 0, h), self._rope(n_keys - 1, n_keys))
            self.keys[i][:, :, n_keys - 1], self.values[i][:, :, n_keys - 1] = k[:, 0], v[:, 0]
            r_k = self.r_k[i][..., -n_keys:] if cfg.attn_type == 0 else None
            h = layer.attn.step(h, q, self.keys[i][:, :, :n_keys], self.values[i][:, :, :n_keys], mask, r_k,
                                getattr(model, "r_w_bias", None), getattr(model, "r_r_bias", None))
            h = layer.ff(h, self._shift(i, 1, h))
        self.tokens.append(token.view(-1))
        self.n_fed += 1
        if self.n_fed == self.segment_len:
            self._end_segment()
        return model.log_probs(h)[:, 0]

    def _end_segment(self) -> None:
        # Exactly as training: write the memory and update the cache from the whole segment.
        _, self.state = self.model.encode(torch.stack(self.tokens, dim=1), self.state)
        self._begin_segment()

    @torch.no_grad()
    def prefill(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed (B, P) tokens; full segments are encoded in one call. Returns the last log-probs."""
        t = self.segment_len
        while self.n_fed == 0 and tokens.size(1) >= t:
            hidden, self.state = self.model.encode(tokens[:, :t], self.state)
            logp = self.model.log_probs(hidden[:, -1:])[:, 0]
            tokens = tokens[:, t:]
            self._begin_segment()
        for i in range(tokens.size(1)):
            logp = self.feed(tokens[:, i])
        return logp


class ReencodingDecoder(Decoder):
    """The slow reference: re-encodes the current segment (padded to full length) for every token."""

    def _begin_segment(self) -> None:
        self.n_fed, self.tokens = 0, []

    @torch.no_grad()
    def feed(self, token: torch.Tensor) -> torch.Tensor:
        self.tokens.append(token.view(-1))
        self.n_fed += 1
        seg = torch.stack(self.tokens, dim=1)
        padded = torch.nn.functional.pad(seg, (0, self.segment_len - seg.size(1)))
        hidden, state = self.model.encode(padded, self.state)
        logp = self.model.log_probs(hidden[:, self.n_fed - 1 : self.n_fed])[:, 0]
        if self.n_fed == self.segment_len:
            self.state = state
            self._begin_segment()
        return logp


def sample(logp: torch.Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """logp (B, V) -> tokens (B,). temperature 0: greedy; top_k > 0 keeps the k likeliest; top_p < 1
    keeps the smallest set whose probability reaches top_p (nucleus)."""
    if temperature == 0:
        return logp.argmax(-1)
    logits = logp.float() / temperature
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        before = sorted_logits.softmax(-1).cumsum(-1) - sorted_logits.softmax(-1)  # mass of likelier tokens
        drop = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, order, before >= top_p)
        logits = logits.masked_fill(drop, float("-inf"))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


@torch.no_grad()
def generate(model, prompt: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, seed: int | None = None, state: MemoryState | None = None,
             use_cache: bool = True) -> torch.Tensor:
    """Continue prompt (B, P >= 1) by max_new_tokens tokens; returns them (B, max_new_tokens).

    Crosses segment boundaries as training does (memory written, XL cache updated). seed makes
    sampling reproducible (on the model's device); use_cache False re-encodes every step (slow)."""
    if prompt.dim() != 2 or prompt.size(1) < 1:
        raise ValueError(f"prompt must be (batch, length >= 1) token ids, got shape {tuple(prompt.shape)}")
    if max_new_tokens < 0 or temperature < 0 or top_k < 0 or not 0 < top_p <= 1:
        raise ValueError("need max_new_tokens >= 0, temperature >= 0, top_k >= 0 and 0 < top_p <= 1")
    was_training = model.training
    model.eval()
    try:
        decoder = (Decoder if use_cache else ReencodingDecoder)(model, prompt.size(0), state)
        generator = None
        if seed is not None:
            generator = torch.Generator(device=prompt.device).manual_seed(seed)
        logp = decoder.prefill(prompt)
        out = []
        for i in range(max_new_tokens):
            token = sample(logp, temperature, top_k, top_p, generator)
            out.append(token)
            if i + 1 < max_new_tokens:
                logp = decoder.feed(token)
        return torch.stack(out, dim=1) if out else prompt.new_zeros(prompt.size(0), 0)
    finally:
        model.train(was_training)
