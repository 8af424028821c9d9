"""Attention on CPU: relative shift, causality, the memory masks, adaptive softmax, absolute attention,
configuration errors and the fused/flex kernels. python -m pytest tests/test_attention.py

References are written independently here: a time-major rel_shift (the original's form), and a
plain causal Transformer computed position by position from explicit relative distances.
"""
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import SMALL, grads, make, segments, tokens
from rmt.model.config import ModelConfig
from rmt.model.layers import rel_shift
from rmt.model.recurrence import MemoryState, run_segments
from rmt.model.transformer import MemTransformerLM, build_attn_mask

# ---- relative shift ---------------------------------------------------------------------------

def rel_shift_time_major(x):
    """The original Transformer-XL form on (Q, K, B, H)."""
    zero_pad = torch.zeros((x.size(0), 1, *x.size()[2:]), dtype=x.dtype)
    padded = torch.cat([zero_pad, x], dim=1).view(x.size(1) + 1, x.size(0), *x.size()[2:])
    return padded[1:].view_as(x)


@pytest.mark.parametrize("q,k", [(5, 5), (4, 9), (7, 10), (1, 3)])
def test_rel_shift_matches_time_major_reference(q, k):
    x = torch.randn(2, 3, q, k)  # (B, H, Q, K)
    ref = rel_shift_time_major(x.permute(2, 3, 0, 1)).permute(2, 3, 0, 1)
    assert torch.equal(rel_shift(x), ref)
    mlen = k - q
    for i in range(q):
        for j in range(mlen + i + 1):  # causal part: distance mlen + i - j
            assert rel_shift(x)[..., i, j].equal(x[..., i, j + q - 1 - i])


# ---- a plain causal Transformer ---------------------------------------------------------------

def plain_forward(model, x):
    """No memory, no cache: explicit relative-distance attention, one query at a time."""
    cfg = model.config
    h = model.word_emb(x)  # (B, T, C)
    b, t, _ = h.shape
    nh, dh = cfg.n_head, cfg.d_head
    for layer in model.layers:
        a = layer.attn
        q, k, v = a.qkv_net(h).view(b, t, 3, nh, dh).unbind(2)
        out = torch.zeros(b, t, nh, dh)
        for i in range(t):
            dist = torch.arange(i, -1, -1.0)  # distances to keys 0..i
            r = a.r_net(model.pos_emb(dist)).view(i + 1, nh, dh)
            score = torch.einsum("bhd,jbhd->bhj", q[:, i] + model.r_w_bias, k[:, : i + 1].transpose(0, 1))
            score = score + torch.einsum("bhd,jhd->bhj", q[:, i] + model.r_r_bias, r)
            prob = (score / math.sqrt(dh)).softmax(-1)
            out[:, i] = torch.einsum("bhj,bjhd->bhd", prob, v[:, : i + 1])
        h = a.layer_norm(h + a.o_net(out.reshape(b, t, -1)))
        h = layer.ff(h)
    return h


def test_one_segment_without_memory_is_a_plain_causal_transformer():
    model = make()
    x, y = tokens(), tokens(seed=1)
    hidden, state = model.encode(x)
    assert state == MemoryState(None, None)
    ref = plain_forward(model, x)
    assert torch.allclose(hidden, ref, atol=1e-5)
    nll, _ = model(x, y)
    ref_nll = F.cross_entropy(model.crit.out_layers[0](ref).transpose(1, 2), y, reduction="none")
    assert torch.allclose(nll, ref_nll, atol=1e-5)


def test_causality_within_a_segment():
    model = make(num_mem_tokens=2)
    x = tokens()
    x2 = x.clone()
    x2[:, 4] = (x2[:, 4] + 1) % 20
    h1, _ = model.encode(x)
    h2, _ = model.encode(x2)
    assert torch.allclose(h1[:, :4], h2[:, :4], atol=1e-6)
    assert not torch.allclose(h1[:, 4:], h2[:, 4:], atol=1e-4)


# ---- masks ------------------------------------------------------------------------------------

@pytest.mark.parametrize("same_length", [False, True])
@pytest.mark.parametrize("read_mem_from_cache", [False, True])
def test_attention_mask_rules(same_length, read_mem_from_cache):
    m, t, mlen = 3, 5, 4
    mask = build_attn_mask(t, m, mlen, mem_at_end=True, read_mem_from_cache=read_mem_from_cache,
                           same_length=same_length, mem_len=8)
    q_len = m + t + m
    assert mask.shape == (q_len, mlen + q_len)
    read, toks, write = slice(0, m), slice(m, m + t), slice(m + t, q_len)
    col = lambda s: slice(mlen + s.start, mlen + s.stop)  # noqa: E731
    assert mask[read, col(toks)].all()  # read tokens never see the segment
    assert mask[read, col(write)].all()
    assert not mask[read, col(read)].any()  # ... but see each other, both directions
    assert mask[toks, col(write)].all()  # segment tokens never see the write tokens
    assert not mask[write, col(write)].any()
    assert not mask[write, col(read)].any()
    assert not mask[write, col(toks)].any()  # write tokens see the whole segment, same_length or not
    assert not mask[toks, col(read)].any()  # ... and tokens see the read memory
    if not same_length:
        assert not mask[toks, :mlen].any()  # tokens always see the cache (same_length windows it)
    # Memory sees the cache only with read_mem_from_cache.
    assert bool(mask[read, :mlen].all()) == (not read_mem_from_cache)
    assert bool(mask[write, :mlen].all()) == (not read_mem_from_cache)
    if read_mem_from_cache and not same_length:
        assert not mask[read, :mlen].any() and not mask[write, :mlen].any()
    # Tokens stay causal among themselves.
    tok_block = mask[toks, col(toks)]
    assert torch.equal(tok_block, torch.ones(t, t, dtype=torch.bool).triu(1) | tok_block)
    assert not torch.ones(t, t, dtype=torch.bool).triu(1).logical_and(~tok_block).any()


def test_same_length_window_without_memory_matches_transformer_xl():
    t, mlen, mem_len = 4, 4, 4
    mask = build_attn_mask(t, 0, mlen, mem_at_end=True, read_mem_from_cache=False, same_length=True, mem_len=mem_len)
    assert ((~mask).sum(1) == mem_len).all()  # every query sees exactly mem_len keys


def test_read_mem_from_cache_changes_memory_output():
    kw = dict(num_mem_tokens=2, mem_len=4)
    a, b = make(**kw), make(**kw, read_mem_from_cache=True)
    b.load_state_dict(a.state_dict())
    x, y = tokens(), tokens(seed=9)
    _, sa = a(x, y)
    _, sb = b(x, y)
    assert torch.allclose(sa.mem, sb.mem)  # first segment: the cache is empty
    _, sa2 = a(x, y, sa)
    _, sb2 = b(x, y, sb)
    assert not torch.allclose(sa2.mem, sb2.mem, atol=1e-5)


def test_same_length_keeps_memory_rules_behaviourally():
    model = make(num_mem_tokens=2, mem_len=6, same_length=True, mem_at_end=False)
    _, s1 = model(tokens(seed=1), tokens())
    _, s2 = model(tokens(seed=2), tokens())
    assert torch.allclose(s1.mem, s2.mem)  # read memory never saw the segment


# ---- adaptive softmax and absolute attention --------------------------------------------------

def test_adaptive_log_probs_normalised_and_nll_in_position_order():
    model = make(n_token=60, cutoffs=[10, 30], div_val=2, tie_projs=[False, True, True], num_mem_tokens=2)
    x = tokens(n=60)
    y = tokens(n=60, seed=3)
    hidden, _ = model.encode(x)
    logp = model.log_probs(hidden)
    assert torch.allclose(logp.exp().sum(-1), torch.ones(3, 6), atol=1e-5)
    nll, _ = model(x, y)
    assert torch.allclose(nll, -logp.gather(-1, y[..., None]).squeeze(-1), atol=1e-5)
    assert model.crit.out_projs["1"] is model.word_emb.emb_projs["1"]
    assert model.crit.out_projs["0"] is not model.word_emb.emb_projs["0"]


def test_div_val_one_with_projection_works():
    model = make(d_embed=8, num_mem_tokens=1)  # the original crashed on this path
    nll, _ = model(tokens(), tokens())
    assert nll.shape == (3, 6) and torch.isfinite(nll).all()


def test_absolute_attention_runs_with_cache_and_memory():
    model = make(attn_type=2, num_mem_tokens=2, mem_len=4)
    xs, ys = segments(3)
    nlls, state = run_segments(model, xs, ys)
    assert all(torch.isfinite(n).all() for n in nlls) and state.xl[0].shape == (3, 4, 16)
    # absolute positions are added to the layer inputs; the original added them to the cache in place
    kept = [c.clone() for c in state.xl]
    model(xs[0], ys[0], state)
    assert all(torch.equal(c, k) for c, k in zip(state.xl, kept))


# ---- configuration errors ---------------------------------------------------------------------

@pytest.mark.parametrize("kw,match", [
    (dict(n_layer=-1), "n_layer must be positive"),
    (dict(d_model=0), "d_model must be positive"),
    (dict(mem_len=-2), "mem_len must be >= 0"),
    (dict(num_mem_tokens=-1), "num_mem_tokens must be >= 0"),
    (dict(cutoffs=[10, 5]), "strictly increasing"),
    (dict(cutoffs=[5, 25]), r"inside \(0, n_token"),
    (dict(attn_type=3), "not supported"),
    (dict(d_model=15), "even"),
    (dict(dropout=1.5), r"dropout must be in \[0, 1\)"),
    (dict(same_length=True), "same_length needs mem_len"),
    (dict(mem_init="zeros"), "mem_init"),
    (dict(tie_projs=[True, True]), "tie_projs"),
    (dict(num_mem_tokens=None), "num_mem_tokens must be >= 0, got None"),
    (dict(tgt_len=2.5), "tgt_len must be positive"),
    (dict(ext_len=2, mem_len=4, num_mem_tokens=2), "ext_len > 0 does not combine"),
    (dict(sample_softmax=8), "sample_softmax is not supported"),
])
def test_bad_config_raises_clear_value_error(kw, match):
    with pytest.raises(ValueError, match=match):
        MemTransformerLM(**{**SMALL, **kw})


def test_config_round_trip():
    model = make(num_mem_tokens=2, cutoffs=[5], div_val=2)
    again = MemTransformerLM.from_config(model.config.to_dict() | {"unrelated_flag": 1})
    assert again.config == model.config
    assert ModelConfig.from_dict(model.config.to_dict()) == model.config


# ---- fused and flex attention --------------------------------------------------------------

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("impl", ["fused", "flex"])
@pytest.mark.parametrize("kw", [dict(num_mem_tokens=3), dict(num_mem_tokens=2, mem_len=5, read_mem_from_cache=True),
                                dict(mem_len=4, same_length=True, num_mem_tokens=2), dict(pre_lnorm=True, mem_len=3),
                                dict(num_mem_tokens=2, mem_at_end=False, clamp_len=3)])
def test_fast_attention_equals_eager_outputs_and_gradients(kw, impl, device):
    kw = {**kw, "d_head": 16}  # GPU kernels want head sizes of at least 16
    eager = make(**kw).to(device)
    fast = MemTransformerLM(**{**SMALL, **kw, "attn_impl": impl}).to(device).eval()
    fast.load_state_dict(eager.state_dict())
    backward = not (impl == "flex" and device == "cpu")  # FlexAttention has no backward on CPU
    xs, ys = segments(3)
    xs, ys = [x.to(device) for x in xs], [y.to(device) for y in ys]
    results = []
    for model in (eager, fast):
        with torch.set_grad_enabled(backward):
            nlls, state = run_segments(model, xs, ys, depth=None)
        loss = sum(n.mean() for n in nlls)
        results.append((torch.stack(nlls), state, grads(model, loss) if backward else {}))
    (n0, s0, g0), (n1, s1, g1) = results
    tol = 1e-5 if device == "cpu" else 1e-4  # GPU kernels sum in other orders
    assert torch.allclose(n0, n1, atol=tol)
    if s0.mem is not None:
        assert torch.allclose(s0.mem, s1.mem, atol=tol)
    assert g0.keys() == g1.keys()
    for name in g0:
        assert torch.allclose(g0[name], g1[name], atol=tol), name


def test_flex_refuses_attention_dropout():
    with pytest.raises(ValueError, match="flex.*dropatt"):
        ModelConfig(n_token=20, n_layer=1, n_head=2, d_model=16, d_head=8, d_inner=32, dropatt=0.1, attn_impl="flex")
