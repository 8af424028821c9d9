"""Model invariants on CPU: python -m pytest tests/test_model.py

References are written independently here: a time-major rel_shift (the original's form), and a
plain causal Transformer computed position by position from explicit relative distances.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from rmt.config import ModelConfig
from rmt.layers import rel_shift
from rmt.memory import MemoryState, run_segments
from rmt.model import MemTransformerLM, build_attn_mask, init_weights

SMALL = dict(n_token=20, n_layer=2, n_head=2, d_model=16, d_head=8, d_inner=32, tgt_len=6)


def make(**kw):
    model = MemTransformerLM(**{**SMALL, **kw})
    init_weights(model, init_std=0.1)  # larger than 0.02 so mistakes show up
    return model.eval()


def tokens(b=3, t=6, n=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, n, (b, t), generator=g)


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


# ---- recurrence -------------------------------------------------------------------------------

@pytest.mark.parametrize("num_mem,mem_len,carries", [(0, 0, False), (3, 0, True), (0, 6, True), (2, 4, True)])
def test_segment_t_changes_segment_t_plus_1_iff_memory(num_mem, mem_len, carries):
    model = make(num_mem_tokens=num_mem, mem_len=mem_len)
    x0, x1, y = tokens(seed=2), tokens(seed=3), tokens(seed=4)
    x0b = x0.clone()
    x0b[:, 0] = (x0b[:, 0] + 5) % 20
    _, s = model(x0, y)
    _, sb = model(x0b, y)
    n1, _ = model(x1, y, s)
    n1b, _ = model(x1, y, sb)
    assert (not torch.allclose(n1, n1b, atol=1e-6)) == carries


def test_start_only_memory_writes_nothing_about_the_segment():
    model = make(num_mem_tokens=3, mem_at_end=False)
    _, s1 = model(tokens(seed=5), tokens())
    _, s2 = model(tokens(seed=6), tokens())
    assert torch.allclose(s1.mem, s2.mem)


def test_cache_holds_memory_positions_and_is_detached():
    model = make(num_mem_tokens=2, mem_len=20)
    hidden, s = model.encode(tokens())
    assert len(s.xl) == 3 and all(t.shape == (3, 2 + 6 + 2, 16) and not t.requires_grad for t in s.xl)
    # The top-layer cache is the full [read | tokens | write] output; eval mode has no dropout.
    assert torch.allclose(s.xl[-1][:, 2:8], hidden) and torch.allclose(s.xl[-1][:, -2:], s.mem)
    _, s_short = make(num_mem_tokens=2, mem_len=5)(tokens(), tokens())
    assert all(t.shape == (3, 5, 16) for t in s_short.xl)


def test_memory_rows_start_distinct_unless_identical_requested():
    assert not torch.allclose(make(num_mem_tokens=4).mem_tokens[0], make(num_mem_tokens=4).mem_tokens[1])
    m = MemTransformerLM(**SMALL, num_mem_tokens=4, mem_init="identical").mem_tokens
    assert all(torch.equal(m[0], m[i]) for i in range(4))
    d = MemTransformerLM(**SMALL, num_mem_tokens=4).mem_tokens
    assert len({tuple(r.tolist()) for r in d}) == 4


# ---- gradients through memory -----------------------------------------------------------------

def segments(n, seed=10):
    return [tokens(seed=seed + i) for i in range(n)], [tokens(seed=seed + 100 + i) for i in range(n)]


def grads(model, loss):
    model.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_full_bptt_equals_hand_unrolled():
    model = make(num_mem_tokens=2, mem_len=4)
    xs, ys = segments(4)
    nlls, _ = run_segments(model, xs, ys, depth=None)
    g_runner = grads(model, sum(n.mean() for n in nlls))
    # By hand: the initial memory is the parameter, every write output feeds the next segment.
    mem, xl, total = model.mem_tokens.unsqueeze(0).expand(3, -1, -1), None, 0
    for x, y in zip(xs, ys):
        nll, st = model(x, y, MemoryState(mem, xl))
        mem, xl, total = st.mem, st.xl, total + nll.mean()
    g_hand = grads(model, total)
    assert g_runner.keys() == g_hand.keys()
    for name in g_hand:
        assert torch.allclose(g_runner[name], g_hand[name], atol=1e-6), name


@pytest.mark.parametrize("depth", [1, 2])
def test_truncated_bptt_reaches_exactly_depth_segments(depth):
    model = make(num_mem_tokens=2)
    xs, ys = segments(5)
    for k in range(5):
        nlls, _ = run_segments(model, xs[: k + 1], ys[: k + 1], depth=depth)
        g = grads(model, nlls[k].mean()).get("mem_tokens")
        # The learned initial memory is k segments older than segment k's loss.
        if k <= depth:
            assert g is not None and g.abs().sum() > 0
        else:
            assert g is None or torch.count_nonzero(g) == 0


def test_truncated_bptt_matches_manual_window():
    model = make(num_mem_tokens=2, mem_len=3)
    xs, ys = segments(5)
    depth, k = 2, 4
    nlls, _ = run_segments(model, xs, ys, depth=depth)
    g_runner = grads(model, nlls[k].mean())
    # Manual: run segments up to k-depth without gradient, then a graph over the last depth+1.
    state = MemoryState()
    with torch.no_grad():
        for j in range(k - depth):
            _, state = model(xs[j], ys[j], state)
    state = state.detach()
    for j in range(k - depth, k + 1):
        nll, state = model(xs[j], ys[j], state)
    g_manual = grads(model, nll.mean())
    for name in g_manual:
        assert torch.allclose(g_runner[name], g_manual[name], atol=1e-6), name


def test_detached_mode_gives_no_gradient_through_memory():
    model = make(num_mem_tokens=2)
    xs, ys = segments(3)
    nlls, state = run_segments(model, xs, ys, depth=0)
    assert "mem_tokens" not in grads(model, nlls[2].mean())
    assert not state.mem.requires_grad or state.mem.grad_fn is not None
    x_mem = state.mem
    n3, _ = run_segments(model, [xs[0]], [ys[0]], MemoryState(x_mem, None), depth=0)
    assert n3[0].requires_grad  # parameters still train


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


# ---- memory-efficient BPTT ---------------------------------------------------------------------

@pytest.mark.parametrize("mem_len", [0, 4])
@pytest.mark.parametrize("depth", [None, 2])
def test_recomputed_segments_give_the_same_gradients(mem_len, depth):
    model = make(num_mem_tokens=2, mem_len=mem_len, dropout=0.2).train()  # dropout: masks must replay
    xs, ys = segments(4)
    grads_by_mode = []
    for recompute in (False, True):
        torch.manual_seed(123)
        nlls, state = run_segments(model, xs, ys, depth=depth, recompute=recompute)
        loss = sum(n.mean() for n in nlls)
        grads_by_mode.append((loss.item(), grads(model, loss), state))
    (l0, g0, s0), (l1, g1, s1) = grads_by_mode
    assert l0 == pytest.approx(l1, abs=1e-6)
    assert g0.keys() == g1.keys()
    for name in g0:
        assert torch.allclose(g0[name], g1[name], atol=1e-6), name
    assert torch.allclose(s0.mem, s1.mem)
    if mem_len:
        assert all(torch.equal(a, b) for a, b in zip(s0.xl, s1.xl))


@pytest.mark.parametrize("mem_len", [0, 4])
def test_recomputed_bptt_keeps_only_the_memory_state_per_segment(mem_len):
    """What backward holds grows by one (B, M, C) memory per segment: nothing else of a segment,
    and no view that pins the segment's whole (B, Q, C) output."""
    model = make(num_mem_tokens=3, mem_len=mem_len).train()

    def held_bytes(n_segments):
        storages = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        xs, ys = segments(n_segments)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            run_segments(model, xs, ys, depth=None, recompute=True)
        return sum(storages.values())

    b, m, c = 3, 3, SMALL["d_model"]
    assert (held_bytes(8) - held_bytes(4)) / 4 == b * m * c * 4  # fp32 bytes of one memory state


@pytest.mark.parametrize("mem_len", [0, 4])
def test_recomputed_bptt_keeps_a_few_graph_nodes_per_segment(mem_len):
    """The graph backward holds must not keep every op of every segment (each node costs host
    memory that grows with the number of segments): a recomputed segment is a few nodes."""
    model = make(num_mem_tokens=3, mem_len=mem_len).train()

    def graph_nodes(n_segments, recompute):
        xs, ys = segments(n_segments)
        nlls, _ = run_segments(model, xs, ys, depth=None, recompute=recompute)
        seen, todo = set(), [sum(n.mean() for n in nlls).grad_fn]
        while todo:
            node = todo.pop()
            if node is not None and node not in seen:
                seen.add(node)
                todo.extend(nxt for nxt, _ in node.next_functions)
        return len(seen)

    per_segment = (graph_nodes(8, True) - graph_nodes(4, True)) / 4
    assert per_segment <= 8  # the checkpoint, the loss's mean and sum, the stored memory
    assert graph_nodes(8, False) - graph_nodes(4, False) > 20 * 4  # what plain BPTT keeps


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
