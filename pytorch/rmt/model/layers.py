"""Transformer-XL building blocks: sinusoidal positions, position-wise FF, attention, decoder layer.

Legend for shape comments: B batch, Q query length (read memory + tokens + write memory),
L cached length (XL cache), K = L + Q keys, H heads, D head size, C d_model.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import flex_attention as flex


class PositionalEmbedding(nn.Module):
    """Sinusoids with concatenated (not interleaved) sin and cos halves, as in Transformer-XL."""

    def __init__(self, d_model: int):
        super().__init__()
        inv_freq = 1.0 / (10000 ** (torch.arange(0.0, d_model, 2.0) / d_model))
        # Not persistent: it is a constant, and rebuilding it keeps checkpoints free of it.
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, pos_seq: torch.Tensor) -> torch.Tensor:
        sinusoid = torch.outer(pos_seq, self.inv_freq)  # (K, C/2)
        return torch.cat([sinusoid.sin(), sinusoid.cos()], dim=-1)  # (K, C)


class Rotary(nn.Module):
    """Rotary position tables (RoPE): the angle of position p in frequency band f is p * inv_freq[f]."""

    def __init__(self, d_head: int, base: float = 10000.0):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0.0, d_head, 2.0) / d_head))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (L,) -> cos, sin (L, D/2) in fp32."""
        angles = torch.outer(positions.float(), self.inv_freq)
        return angles.cos(), angles.sin()


def rotate(x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """x (B, L, H, D) rotated by the angles of its L positions, pairing the two halves of D."""
    cos, sin = (t[:, None] for t in rope)  # (L, 1, D/2)
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


class PositionwiseFF(nn.Module):
    def __init__(self, d_model: int, d_inner: int, dropout: float, pre_lnorm: bool):
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_inner)
        self.fc2 = nn.Linear(d_inner, d_model)
        self.drop = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(d_model)
        self.pre_lnorm = pre_lnorm

    def forward(self, x: torch.Tensor, inp: torch.Tensor | None = None) -> torch.Tensor:
        """inp: what the network reads instead of x (token shift); the residual is x."""
        inp = x if inp is None else inp
        inp = self.layer_norm(inp) if self.pre_lnorm else inp
        out = self.drop(self.fc2(self.drop(F.relu(self.fc1(inp)))))
        return x + out if self.pre_lnorm else self.layer_norm(x + out)


def rel_shift(x: torch.Tensor) -> torch.Tensor:
    """Transformer-XL relative shift on (B, H, Q, K) scores: out[..., i, j] = x[..., i, j + Q - 1 - i].

    Pad one zero column in front, reinterpret as (K+1, Q), drop the first row. Above the causal
    diagonal this wraps around into the next query row; memory tokens attend there (read block,
    write block), so the wrap-around values are part of the model and must be kept exactly.
    """
    b, h, q, k = x.shape
    x = F.pad(x, (1, 0))  # (B, H, Q, K+1)
    return x.view(b, h, k + 1, q)[:, :, 1:].reshape(b, h, q, k)


class FlexMask:
    """What FlexAttention needs for one boolean (Q, K) mask: the block mask (fully blocked tiles
    are skipped) and, per (query, key), the index of its position term in the flattened padded
    scores (see RelPartialLearnableAttention._attend_flex). Built once per segment shape, outside
    any compiled graph (model.flex_mask), so graphs see plain tensors rather than symbolic sizes."""

    def __init__(self, mask: torch.Tensor):
        q_len, k_len = mask.shape
        self.block = flex.create_block_mask(lambda b, h, q, k: ~mask[q, k], None, None, q_len, k_len,
                                            device=mask.device)
        self.shift_index = torch.arange(q_len, q_len + q_len * k_len, device=mask.device).view(q_len, k_len)


# Compiled once per process on CUDA, where it becomes one fused kernel. On CPU FlexAttention runs
# forward only (no backward), so there it stays eager: for evaluation.
_compiled_flex = None


def _flex_attention(*args, **kwargs):
    global _compiled_flex
    if not args[0].is_cuda or torch.compiler.is_compiling():  # inside a compiled model: Inductor fuses it
        return flex.flex_attention(*args, **kwargs)
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex.flex_attention, dynamic=False)
    return _compiled_flex(*args, **kwargs)


def _masked_softmax(score: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # Fill in fp32 so -inf is safe under half precision, then return to the score dtype.
    return score.float().masked_fill(mask, float("-inf")).softmax(dim=-1).type_as(score)


class _Attention(nn.Module):
    """What both attention types share: output projection, dropouts, residual and LayerNorm."""

    def __init__(self, n_head: int, d_model: int, d_head: int, dropout: float, dropatt: float, pre_lnorm: bool,
                 impl: str = "eager"):
        super().__init__()
        self.n_head, self.d_head = n_head, d_head
        self.impl = impl  # eager, fused or flex (rmt.model.config.ATTN_IMPLS)
        self.o_net = nn.Linear(n_head * d_head, d_model, bias=False)
        self.layer_norm = nn.LayerNorm(d_model)
        self.drop = nn.Dropout(dropout)
        self.dropatt = nn.Dropout(dropatt)
        self.pre_lnorm = pre_lnorm
        self.scale = d_head**-0.5

    def _attend(self, h, score, mask, v, probs: list | None = None):
        """score (B, H, Q, K) before scaling, v (B, K, H, D) -> the block's output (B, Q, C).
        probs: a list that receives the attention probabilities (before attention dropout)."""
        prob = _masked_softmax(score * self.scale, mask)
        if probs is not None:
            probs.append(prob.detach())
        prob = self.dropatt(prob)
        vec = torch.einsum("bhqk,bkhd->bqhd", prob, v).reshape(h.size(0), h.size(1), -1)  # (B, Q, H*D)
        return self._output(h, vec)

    def _attend_step(self, h, score, mask, v):
        """Incremental decoding: score (B, H, 1, K) before scaling, v (B, H, K, D) head-major."""
        prob = _masked_softmax(score * self.scale, mask)
        return self._output(h, (prob @ v).transpose(1, 2).flatten(2))  # (B, 1, H*D)

    def _attend_fused(self, h, q, k, v, bias, mask):
        """q (B, Q, H, D), k and v (B, K, H, D); bias (B, H, Q, K) added to q.k before scaling."""
        bias = (bias.float() * self.scale).masked_fill(mask, float("-inf")).to(q.dtype)
        vec = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=bias,
                                             dropout_p=self.dropatt.p if self.training else 0.0, scale=self.scale)
        return self._output(h, vec.transpose(1, 2).flatten(2))  # (B, Q, H*D)

    def _attend_flex(self, h, q, k, v, bd_raw, mask: FlexMask):
        """q (B, Q, H, D), k and v (B, K, H, D); bd_raw (B, H, Q, K): the position term before rel_shift.

        The relative shift happens inside the kernel: shifted[i, j] is element Q + i*K + j of the
        unshifted scores padded with one zero column and flattened (see rel_shift), wrap-around
        included; `mask.shift_index` holds those indices.
        """
        b, n_head = bd_raw.shape[:2]
        flat = F.pad(bd_raw, (1, 0)).reshape(b, n_head, -1)  # (B, H, Q*(K+1))
        index, scale = mask.shift_index, self.scale

        def score_mod(score, bi, hi, qi, ki):
            return score + flat[bi, hi, index[qi, ki]] * scale

        vec = _flex_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), score_mod=score_mod,
                              block_mask=mask.block, scale=scale)
        return self._output(h, vec.transpose(1, 2).flatten(2))  # (B, Q, H*D)

    def _output(self, h, vec):
        out = self.drop(self.o_net(vec))
        return h + out if self.pre_lnorm else self.layer_norm(h + out)


class RelPartialLearnableAttention(_Attention):
    """attn_type 0: Transformer-XL relative attention with global content/position biases."""

    def __init__(self, n_head: int, d_model: int, d_head: int, dropout: float, dropatt: float, pre_lnorm: bool,
                 impl: str = "eager"):
        super().__init__(n_head, d_model, d_head, dropout, dropatt, pre_lnorm, impl)
        self.qkv_net = nn.Linear(d_model, 3 * n_head * d_head, bias=False)
        self.r_net = nn.Linear(d_model, n_head * d_head, bias=False)

    def forward(self, h, r, r_w_bias, r_r_bias, mask, cache=None, probs: list | None = None, inp=None):
        """h (B, Q, C); r (K, C) positional embeddings for distances K-1..0; mask (Q, K) True = blocked
        (for impl "flex" its FlexMask). probs: collect the probabilities (eager path). inp: what the
        projections read instead of h (token shift); the residual is h."""
        q_len = h.size(1)
        inp = h if inp is None else inp
        cat = inp if cache is None else torch.cat([cache, inp], dim=1)  # (B, K, C)
        k_len = cat.size(1)
        q, k, v = self.project(cat)  # (B, K, H, D) each
        q = q[:, -q_len:]  # (B, Q, H, D)
        r_k = self.r_net(r).view(r.size(0), self.n_head, self.d_head)  # (K, H, D), or (K + Q - 1, H, D)
        bd = torch.einsum("bqhd,khd->bhqk", q + r_r_bias, r_k)  # position terms (b) + (d), unshifted
        if self.impl == "flex" and probs is None:
            return self._attend_flex(h, q + r_w_bias, k, v, bd, mask)
        # Bidirectional: r also covers the Q - 1 negative distances, so every key gets its own
        # distance (no wrap-around) and the first K shifted columns are the keys.
        bd = rel_shift(bd)[..., :k_len]
        if self.impl == "fused" and probs is None:
            return self._attend_fused(h, q + r_w_bias, k, v, bd, mask)
        ac = torch.einsum("bqhd,bkhd->bhqk", q + r_w_bias, k)  # content terms (a) + (c)
        return self._attend(h, ac + bd, mask, v, probs)

    def project(self, h, rope=None):
        """h (B, L, C) -> q, k, v (B, L, H, D): per position, so keys and values can be cached."""
        b, n, _ = h.shape
        heads = self.qkv_net(self.layer_norm(h) if self.pre_lnorm else h)
        return heads.view(b, n, 3, self.n_head, self.d_head).unbind(2)

    def step(self, h, q, k, v, mask, r_k, r_w_bias, r_r_bias):
        """One new position (incremental decoding): h (B, 1, C) and its query q (B, 1, H, D); k, v
        (B, H, K, D) every key up to and including it, head-major as the decoding cache keeps
        them; r_k (H, D, K) the projected positions of distances K-1..0, so no relative shift is
        needed; mask (1, K)."""
        q = q.transpose(1, 2)  # (B, H, 1, D)
        score = (q + r_w_bias[:, None]) @ k.transpose(-1, -2) + (q + r_r_bias[:, None]) @ r_k
        return self._attend_step(h, score, mask, v)


class AbsoluteAttention(_Attention):
    """attn_type 2: standard multi-head attention; positions are added to the input instead."""

    def __init__(self, n_head: int, d_model: int, d_head: int, dropout: float, dropatt: float, pre_lnorm: bool):
        super().__init__(n_head, d_model, d_head, dropout, dropatt, pre_lnorm)
        self.q_net = nn.Linear(d_model, n_head * d_head, bias=False)
        self.kv_net = nn.Linear(d_model, 2 * n_head * d_head, bias=False)

    def forward(self, h, mask, cache=None, probs: list | None = None, inp=None):
        inp = h if inp is None else inp  # what the projections read (token shift); the residual is h
        cat = inp if cache is None else torch.cat([cache, inp], dim=1)  # (B, K, C)
        q = self._query(inp)
        k, v = self._keys_values(cat)
        return self._attend(h, torch.einsum("bqhd,bkhd->bhqk", q, k), mask, v, probs)

    def _query(self, h):
        return self.q_net(h).view(*h.shape[:2], self.n_head, self.d_head)  # the original projects un-normed h

    def _keys_values(self, h):
        kv = self.kv_net(self.layer_norm(h) if self.pre_lnorm else h)
        return kv.view(*h.shape[:2], 2, self.n_head, self.d_head).unbind(2)  # (B, L, H, D) each

    def project(self, h, rope=None):
        """h (B, L, C) -> q, k, v (B, L, H, D): per position, so keys and values can be cached."""
        return (self._query(h), *self._keys_values(h))

    def step(self, h, q, k, v, mask, *_):
        """One new position: as RelPartialLearnableAttention.step (positions are in the input here)."""
        return self._attend_step(h, q.transpose(1, 2) @ k.transpose(-1, -2), mask, v)


class RotaryAttention(_Attention):
    """attn_type 4: rotary position embeddings on queries and keys, no additive position term, so
    the fused path is plain scaled_dot_product_attention with the boolean mask and the flex path a
    block mask alone. Positions: the index in [XL cache | read memory | tokens | write memory]."""

    def __init__(self, n_head: int, d_model: int, d_head: int, dropout: float, dropatt: float, pre_lnorm: bool,
                 impl: str = "eager"):
        super().__init__(n_head, d_model, d_head, dropout, dropatt, pre_lnorm, impl)
        self.qkv_net = nn.Linear(d_model, 3 * n_head * d_head, bias=False)

    def forward(self, h, mask, cache=None, rope=None, probs: list | None = None, inp=None):
        """h (B, Q, C); rope: cos, sin (K, D/2) of the K key positions (the queries are the last Q).
        inp: what the projections read instead of h (token shift); the residual is h."""
        q_len = h.size(1)
        inp = h if inp is None else inp
        cat = inp if cache is None else torch.cat([cache, inp], dim=1)  # (B, K, C)
        q, k, v = self.project(cat, rope)
        q = q[:, -q_len:]
        if self.impl == "fused" and probs is None:
            vec = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                 attn_mask=~mask, dropout_p=self.dropatt.p if self.training else 0.0,
                                                 scale=self.scale)
            return self._output(h, vec.transpose(1, 2).flatten(2))
        if self.impl == "flex" and probs is None:
            vec = _flex_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), block_mask=mask.block,
                                  scale=self.scale)
            return self._output(h, vec.transpose(1, 2).flatten(2))
        return self._attend(h, torch.einsum("bqhd,bkhd->bhqk", q, k), mask, v, probs)

    def project(self, h, rope=None):
        """h (B, L, C) -> q, k, v (B, L, H, D), q and k rotated to their positions when rope is given."""
        b, n, _ = h.shape
        heads = self.qkv_net(self.layer_norm(h) if self.pre_lnorm else h)
        q, k, v = heads.view(b, n, 3, self.n_head, self.d_head).unbind(2)
        return (q, k, v) if rope is None else (rotate(q, rope), rotate(k, rope), v)

    def step(self, h, q, k, v, mask, *_):
        """One new position: q and k come rotated from project."""
        return self._attend_step(h, q.transpose(1, 2) @ k.transpose(-1, -2), mask, v)


class DecoderLayer(nn.Module):
    def __init__(self, attn: nn.Module, ff: PositionwiseFF):
        super().__init__()
        self.attn = attn
        self.ff = ff

    def forward(self, h, *attn_args, shift=None, **attn_kwargs):
        """shift: token shift (rmt.model.layers.token_shift with the segment's token span), applied
        to what attention and the feed-forward network read; the residuals stay unshifted."""
        if shift is None:
            return self.ff(self.attn(h, *attn_args, **attn_kwargs))
        h = self.attn(h, *attn_args, inp=shift(h), **attn_kwargs)
        return self.ff(h, shift(h))


def token_shift(h: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """The tokens h[:, start:stop] with the second half of their channels taken from the token
    before (zeros for the segment's first); the memory rows around them unchanged."""
    half = h.size(-1) // 2
    tokens = h[:, start:stop]
    shifted = torch.cat([tokens[..., :half], F.pad(tokens[..., half:], (0, 0, 1, -1))], dim=-1)
    return torch.cat([h[:, :start], shifted, h[:, stop:]], dim=1)
