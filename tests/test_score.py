"""score(): one call over a long input equals the hand loop over its segments, ignores padding,
and uses the XL cache for both the loss and the gradients."""
import pytest
import torch
from conftest import grads, make, tokens
from rmt.model.recurrence import MemoryState, score


def hand_loop(model, seq, seg, depth=None):
    """Segments by hand: full segments, the last padded with 0; state carried as run_segments does."""
    x, y = seq[:, :-1], seq[:, 1:]
    n = x.size(1)
    state, nlls = MemoryState(), []
    for lo in range(0, n, seg):
        xs, ys = x[:, lo : lo + seg], y[:, lo : lo + seg]
        pad = seg - xs.size(1)
        xs, ys = torch.nn.functional.pad(xs, (0, pad)), torch.nn.functional.pad(ys, (0, pad))
        if depth == 0:
            state = state.detach()
        nll, state = model(xs, ys, state)
        nlls.append(nll)
    nll = torch.cat(nlls, dim=1)[:, :n]
    return nll.mean(), nll, state


@pytest.mark.parametrize("kw", [dict(num_mem_tokens=2), dict(mem_len=5), dict(num_mem_tokens=2, mem_len=7),
                                dict(num_mem_tokens=3, mem_at_end=False, mem_len=4)])
def test_score_equals_hand_loop(kw):
    model = make(**kw)
    seq = tokens(b=2, t=24)  # 23 targets: three segments of 6 and a padded one of 5
    loss, nll, _ = hand_loop(model, seq, 6)
    out = score(model, seq, 6)
    assert out.nll.shape == (2, 23) and out.n_tokens.item() == 46
    torch.testing.assert_close(out.nll, nll, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.loss, loss, rtol=0, atol=1e-6)
    assert torch.equal(grads(model, out.loss)["mem_tokens" if "num_mem_tokens" in kw else "r_w_bias"],
                       grads(model, loss)["mem_tokens" if "num_mem_tokens" in kw else "r_w_bias"])


def test_padding_and_masks_change_nothing_for_real_tokens():
    model = make(num_mem_tokens=2, mem_len=6)
    seq = tokens(b=1, t=15)
    alone = score(model, seq, 6)
    padded = torch.cat([seq, torch.randint(0, 20, (1, 9))], dim=1)  # garbage after the real tokens
    batch = torch.cat([padded, tokens(b=1, t=24, seed=3)])
    both = score(model, batch, 6, lengths=torch.tensor([15, 24]))
    torch.testing.assert_close(both.nll[0, :14], alone.nll[0], rtol=0, atol=1e-6)
    assert torch.all(both.nll[0, 14:] == 0) and both.n_tokens.item() == 14 + 23
    masked = score(model, seq, 6, loss_mask=torch.arange(14).view(1, -1) >= 10)
    torch.testing.assert_close(masked.loss, alone.nll[0, 10:].mean(), rtol=0, atol=1e-6)


def test_cache_reaches_loss_and_gradients():
    """The XL cache is carried between segments: the loss is not that of independent segments,
    and the gradient equals the hand loop's with the cache (not the one without)."""
    model = make(num_mem_tokens=2, mem_len=6)
    seq = tokens(b=2, t=19)
    out = score(model, seq, 6)
    with_cache = hand_loop(model, seq, 6)[0]
    model.config.mem_len = 0
    without = hand_loop(model, seq, 6)[0]
    g_without = grads(model, without)
    model.config.mem_len = 6
    assert abs(out.loss.item() - without.item()) > 1e-4
    g = grads(model, out.loss)
    g_ref = grads(model, with_cache)
    for name in g_ref:
        torch.testing.assert_close(g[name], g_ref[name], rtol=1e-5, atol=1e-7)
    assert any((g[n] - g_without[n]).abs().max() > 1e-6 for n in g_without)


@pytest.mark.parametrize("depth", [None, 0, 1, 2])
def test_gradient_policy_and_recompute(depth):
    """The loss of segment k reaches the initial memory only when k <= D (all k under full BPTT);
    recomputation gives the same gradients."""
    model = make(num_mem_tokens=2)
    seq = tokens(b=2, t=25)  # four segments of 6 targets
    for k in range(4):
        only_k = (torch.arange(24) // 6 == k).view(1, -1).expand(2, -1)
        g = grads(model, score(model, seq, 6, depth=depth, loss_mask=only_k).loss)["mem_tokens"]
        assert (g.abs().max() > 0) == (depth is None or k <= depth), k
    g_plain = grads(model, score(model, seq, 6, depth=depth).loss)
    g_recomputed = grads(model, score(model, seq, 6, depth=depth, recompute=True).loss)
    for name in g_plain:
        torch.testing.assert_close(g_recomputed[name], g_plain[name], rtol=1e-5, atol=1e-7)


def test_bad_input_is_refused():
    model = make()
    with pytest.raises(ValueError, match="length >= 2"):
        score(model, tokens(b=1, t=1), 6)
    with pytest.raises(ValueError, match="segment_len"):
        score(model, tokens(), 0)
