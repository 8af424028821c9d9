"""The segment recurrence on CPU: what memory and the cache carry, gradients through memory (full,
truncated, detached BPTT) and recomputed BPTT. python -m pytest tests/test_recurrence.py
"""

import pytest
import torch
from conftest import SMALL, grads, make, segments, tokens
from rmt.model.recurrence import MemoryState, run_segments
from rmt.model.transformer import MemTransformerLM

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




def test_the_state_goes_over_all_its_fields_in_one_place():
    """select / cat / detach / to_dict know every field (a new memory kind is a new field)."""
    mem = torch.randn(4, 2, 3, requires_grad=True)
    xl = (torch.randn(4, 5, 3), torch.randn(4, 5, 3))
    state = MemoryState(mem, xl)
    halves = [state.select(slice(0, 1)), state.select(slice(1, 4))]
    joined = MemoryState.cat(halves)
    assert torch.equal(joined.mem, mem) and all(torch.equal(a, b) for a, b in zip(joined.xl, xl))
    assert not state.detach().mem.requires_grad and mem.requires_grad
    back = MemoryState.from_dict(state.detach().to_dict())
    assert isinstance(back.xl, tuple) and torch.equal(back.mem, mem.detach())
    assert MemoryState().map(lambda t: t + 1) == MemoryState()  # empty fields stay None
    only_read = state.map(lambda t: t * 0, fields=MemoryState.READ)
    assert only_read.mem.abs().sum() == 0 and only_read.xl is xl


@pytest.mark.parametrize("bptt_bp", [False, True])
def test_the_original_lm_replay_equals_a_hand_written_loop_of_the_original_steps(bptt_bp):
    """--lm_replay original, step by step against the original train.py's procedure written out:
    keep the last D+1 (tokens, cache before, memory before); re-run the D previous segments from
    the CURRENT memory with their stored caches; the current segment reads the re-run's memory
    and the last re-run's cache; --bptt_bp adds the re-run losses. Losses, gradients and the
    carried state equal at every step, and differ from the correct replay."""
    from collections import deque

    from rmt.model.recurrence import StreamState, stream_step

    model, depth = make(num_mem_tokens=2, mem_len=4), 2
    xs, ys = segments(6)
    stream = StreamState(depth)
    kept, mem, xl = deque(maxlen=depth + 1), None, None
    correct = StreamState(depth)
    for step, (x, y) in enumerate(zip(xs, ys)):
        model.zero_grad()
        loss = stream_step(model, stream, x, y, bptt_bp=bptt_bp, replay="original")
        ours = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

        kept.append((x, y, xl, mem))  # the original's prev_data / prev_target / prev_mems / prev_mem_tokens
        read, cache, extra = mem, xl, 0.0
        for px, py, pxl, _ in list(kept)[:-1]:
            nll, st = model(px, py, MemoryState(read, pxl))
            read, cache = st.mem, st.xl
            extra = extra + nll.float().mean()
        nll, st = model(x, y, MemoryState(read, cache))
        theirs = grads(model, nll.float().mean() + (extra if bptt_bp else 0.0))
        mem, xl = st.mem.detach(), tuple(t.detach() for t in st.xl)

        torch.testing.assert_close(loss, nll.detach().float().mean(), atol=1e-6, rtol=0)
        assert ours.keys() == theirs.keys()
        for n in ours:
            torch.testing.assert_close(ours[n], theirs[n], atol=1e-6, rtol=1e-5, msg=n)
        torch.testing.assert_close(stream.state.mem, mem, atol=1e-6, rtol=0)
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(stream.state.xl, xl))
        stream_step(model, correct, x, y, bptt_bp=bptt_bp)
        if step >= 1:  # with a history the two procedures part
            assert not torch.equal(correct.state.mem, stream.state.mem)
