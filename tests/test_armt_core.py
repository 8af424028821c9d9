"""Associative memory in the Transformer-XL core (ModelConfig memory "associative", ARMT): the
segment is [tokens | write memory] and what carries memory is a matrix per layer, read into every
layer input and written from the write slots' layer outputs; a fresh one changes nothing; gradient reaches earlier segments through it;
generation with the cache equals re-encoding; and the task driver trains, records and
re-evaluates it (`--memory associative`)."""
import subprocess
import sys

import pandas as pd
import pytest
import torch
from conftest import make, tokens
from rmt.model.associative import AssociativeMemory
from rmt.model.config import ModelConfig
from rmt.model.generation import Decoder, ReencodingDecoder
from rmt.model.recurrence import MemoryState, run_segments, score
from test_task_train import ENV, ROOT, TINY

ARMT = dict(num_mem_tokens=2, memory="associative", d_mem=4)


def live(**kw):
    """A small ARMT whose memory stores something: W_v random (init_weights leaves it at zero)."""
    model = make(**{**ARMT, **kw})
    torch.manual_seed(3)
    with torch.no_grad():
        for memory in model.assoc:
            memory.v.weight.normal_(0, 0.3)
    return model


def test_a_fresh_associative_memory_stores_nothing_and_changes_nothing():
    model = make(**ARMT)
    assert all(float(memory.v.weight.detach().abs().max()) == 0 for memory in model.assoc)
    x1, x2 = tokens(seed=1), tokens(seed=2)
    with torch.no_grad():
        _, state = model.encode(x1)
        after, _ = model.encode(x2, state)
        alone, _ = model.encode(x2)
    assert state.mem is None and len(state.assoc) == 2 * model.config.n_layer
    assert all(float(a.abs().max()) == 0 for a in state.assoc[0::2])  # A: zeros; z has counted the keys
    torch.testing.assert_close(after, alone, rtol=0, atol=0)


def test_the_segment_is_tokens_then_write_memory():
    """Tokens see earlier tokens (and the cache), never the write memory; the write memory sees
    the whole segment and itself, not the cache (as RMT's write memory without read_mem_from_cache)."""
    model = make(**ARMT, mem_len=2)
    blocked = model.segment_mask(3, 2, torch.device("cpu"), flex=False)  # keys: [cache 2 | 3 tokens | 2 write]
    expected = torch.tensor([[0, 0, 0, 1, 1, 1, 1],
                             [0, 0, 0, 0, 1, 1, 1],
                             [0, 0, 0, 0, 0, 1, 1],
                             [1, 1, 0, 0, 0, 0, 0],
                             [1, 1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    assert torch.equal(blocked, expected)


def test_each_layer_writes_from_its_write_slots_and_reads_at_every_position():
    model = live()
    m, x1, x2 = model.config.num_mem_tokens, tokens(seed=1), tokens(seed=2)
    with torch.no_grad():
        _, state = model.encode(x1)
        # Layer 0 sees the segment's embedded input; its write slots' outputs give the first (A, z).
        h = model.drop(model.segment_input(x1, None))
        assert h.shape[1] == 6 + m and model.read_slots == 0  # [tokens | write memory]
        pos = model.drop(model.positions(h.size(1), h.device, h.dtype))
        out = model.layers[0](h, pos, model.r_w_bias, model.r_r_bias, model.segment_mask(6, 0, h.device), None)
        A, z = AssociativeMemory.write(model.assoc[0], out[:, -m:], None, None)
        torch.testing.assert_close(state.assoc[0], A)
        torch.testing.assert_close(state.assoc[1], z)
        assert state.assoc[0].shape == (3, 6 * 4, model.config.d_model) and state.assoc[1].shape == (3, 6 * 4)
        # The next segment reads it: its outputs differ from a fresh start's, at every position.
        after, _ = model.encode(x2, state)
        alone, _ = model.encode(x2)
    assert bool(((after - alone).abs().amax(-1) > 1e-4).all())


def test_gradient_reaches_an_earlier_segment_only_through_the_matrices():
    model = live(n_token=40, tie_weight=False).train()  # untied: the softmax rows get no gradient here
    model.drop.p = 0.0
    first = tokens(seed=1, n=10) + 30  # tokens no later segment uses
    xs = [first, tokens(seed=2, n=20), tokens(seed=3, n=20)]
    nlls, _ = run_segments(model, xs, xs, depth=None)
    model.zero_grad()
    nlls[-1].mean().backward()
    emb = model.word_emb.emb_layers[0].weight.grad
    assert float(emb[30:].abs().sum()) > 0  # the last loss reached the first segment's tokens
    nlls, _ = run_segments(model, xs, xs, depth=1)  # truncated: the first segment is out of reach
    model.zero_grad()
    nlls[-1].mean().backward()
    assert float(model.word_emb.emb_layers[0].weight.grad[30:].abs().sum()) == 0


@pytest.mark.parametrize("mem_len", [0, 4])
@pytest.mark.parametrize("depth", [None, 2])
def test_recomputed_segments_give_the_same_gradients_and_state(mem_len, depth):
    model = live(mem_len=mem_len, dropout=0.2).train()  # dropout: masks must replay
    xs = [tokens(seed=s) for s in range(4)]
    runs = []
    for recompute in (False, True):
        torch.manual_seed(123)
        nlls, state = run_segments(model, xs, xs, depth=depth, recompute=recompute)
        loss = sum(n.mean() for n in nlls)
        model.zero_grad()
        loss.backward()
        runs.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
                     state))
    (l0, g0, s0), (l1, g1, s1) = runs
    assert l0 == pytest.approx(l1, abs=1e-6) and g0.keys() == g1.keys()
    assert any(name.startswith("assoc.") and "v.weight" in name for name in g0)
    for name in g0:
        torch.testing.assert_close(g0[name], g1[name], rtol=0, atol=1e-6, msg=name)
    for a, b in zip(s0.assoc, s1.assoc):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


CACHES = {"no cache": {}, "cache": dict(mem_len=5), "rotary": dict(mem_len=4, attn_type=4),
          "absolute": dict(attn_type=2)}


@pytest.mark.parametrize("kw", CACHES.values(), ids=CACHES.keys())
def test_generation_with_the_cache_equals_re_encoding(kw):
    model = live(**kw)
    seq = tokens(b=2, t=20)  # segments of 6: three boundaries crossed
    fast, slow = Decoder(model, 2), ReencodingDecoder(model, 2)
    fast_logp = torch.stack([fast.feed(seq[:, i]) for i in range(19)], dim=1)
    slow_logp = torch.stack([slow.feed(seq[:, i]) for i in range(19)], dim=1)
    torch.testing.assert_close(fast_logp, slow_logp, rtol=0, atol=1e-5)
    with torch.no_grad():
        nll = score(model, seq, 6).nll
    torch.testing.assert_close(-fast_logp.gather(-1, seq[:, 1:, None])[..., 0], nll, rtol=0, atol=1e-5)
    assert fast.state.assoc is not None and len(fast.state.assoc) == 2 * model.config.n_layer


@pytest.mark.parametrize("impl", ["fused", "flex"])
def test_the_fused_and_flex_kernels_give_the_eager_segments(impl):
    eager, other = live(mem_len=4), live(mem_len=4, attn_impl=impl)
    other.load_state_dict(eager.state_dict())
    xs = [tokens(seed=s) for s in (1, 2, 3)]
    with torch.no_grad():
        (a, _), (b, _) = (run_segments(model, xs, xs) for model in (eager, other))
    torch.testing.assert_close(torch.stack(a), torch.stack(b), rtol=0, atol=1e-5)


def test_what_associative_memory_refuses():
    with pytest.raises(ValueError, match="needs num_mem_tokens > 0, mem_at_end and the causal model"):
        ModelConfig(n_token=10, memory="associative")
    with pytest.raises(ValueError, match="memory must be one of"):
        ModelConfig(n_token=10, num_mem_tokens=2, memory="matrix")
    assert MemoryState(assoc=(torch.zeros(1),)).detach().assoc[0].shape == (1,)


def test_the_task_driver_trains_records_and_re_evaluates_armt(tmp_path):
    def driver(*extra):
        return subprocess.run([sys.executable, "-m", "rmt.train", *TINY, "--memory", "associative", "--d_mem", "4",
                               "--work_dir", str(tmp_path / "runs"), "--data", str(tmp_path / "data"),
                               "--results_csv", str(tmp_path / "res.csv"), *extra],
                              cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)

    run = driver("--run_name", "armt")
    assert run.returncode == 0, run.stderr[-2000:]
    best = tmp_path / "runs" / "armt" / "checkpoint_best.pt"
    assert driver("--eval_only", "--eval_checkpoint", str(best), "--run_name", "ev").returncode == 0
    rows = pd.read_csv(tmp_path / "res.csv")
    assert list(rows.model_kind) == ["armt", "armt"]
    assert rows.acc_tf.iloc[1] == pytest.approx(rows.acc_tf.iloc[0])
    recomputed = driver("--recompute_segments", "--run_name", "rec", "--no_results")
    assert recomputed.returncode == 0, recomputed.stderr[-2000:]
