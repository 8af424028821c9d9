"""Memory options beside the original's (ModelConfig; flags of the same names): a learned vector per
read slot, what the write slots start from, ERNIE-Doc's enhanced recurrence of the XL cache, a
fraction of the embeddings' gradient, and token shift. Off, the model is the original's (the parity files);
on, each has its defining property, and generation with the cache still equals re-encoding."""
import json
import subprocess
import sys

import pandas as pd
import pytest
import torch
from conftest import make, tokens
from rmt.model.generation import Decoder, ReencodingDecoder
from rmt.model.layers import token_shift
from rmt.model.recurrence import run_segments
from test_task_train import ENV, ROOT, TINY


def test_read_memory_emb_is_added_to_the_read_slots_only():
    model = make(num_mem_tokens=3, read_memory_emb=True)
    mem = torch.randn(3, 3, model.config.d_model)
    h = model.segment_input(tokens(), mem)
    torch.testing.assert_close(h[:, :3], mem + model.read_mem_emb, rtol=0, atol=0)
    torch.testing.assert_close(h[:, -3:], mem, rtol=0, atol=0)  # the write slots as the original's
    assert model.read_mem_emb.shape == (3, model.config.d_model) and model.read_mem_emb.requires_grad


@pytest.mark.parametrize("how", ["learned", "learned+memory", "learned+detached"])
def test_what_the_write_slots_start_from(how):
    model = make(num_mem_tokens=3, write_mem_init=how)
    learned = model.mem_tokens.detach()
    mem = torch.randn(3, 3, model.config.d_model, requires_grad=True)
    write = model.segment_input(tokens(), mem)[:, -3:]
    expected = learned if how == "learned" else learned + mem.detach()
    torch.testing.assert_close(write, expected.expand_as(write), rtol=0, atol=1e-7)
    torch.testing.assert_close(model.segment_input(tokens(), None)[:, -3:], learned.expand(3, -1, -1))  # first
    (grad,) = torch.autograd.grad(write.sum(), mem, allow_unused=True)
    reaches = how == "learned+memory"  # the previous memory's gradient through the write slots
    assert (grad is not None and bool((grad == 1).all())) if reaches else (grad is None or not grad.any())


def test_enhanced_recurrence_gives_each_layer_its_own_output_on_the_cached_positions():
    model = make(num_mem_tokens=2, mem_len=4, enhanced_xl_recurrence=True)
    plain = make(num_mem_tokens=2, mem_len=4)
    plain.load_state_dict(model.state_dict())
    x1, x2 = tokens(seed=1), tokens(seed=2)
    with torch.no_grad():
        h = model.drop(model.segment_input(x1, None))
        hids = model.run_layers(h, None, model.segment_mask(6, 0, h.device))
        _, state = model.encode(x1)
        for i in range(model.config.n_layer):  # layer i's output on the last 4 positions of segment 1
            torch.testing.assert_close(model.layer_cache(state.xl, i), hids[i + 1][:, -4:], rtol=0, atol=0)
        assert plain.layer_cache(state.xl, 0) is state.xl[0]
        enhanced, _ = model.encode(x2, state)
        original, _ = plain.encode(x2, state)
    assert not torch.allclose(enhanced, original)


def test_emb_gradient_frac_scales_the_embedding_gradient_and_keeps_the_value():
    frac = make(num_mem_tokens=2, emb_gradient_frac=0.25, tie_weight=False).train()
    full = make(num_mem_tokens=2, tie_weight=False).train()
    full.load_state_dict(frac.state_dict())
    xs = [tokens(seed=s) for s in (1, 2)]
    grads = []
    for model in (frac, full):
        nlls, _ = run_segments(model, xs, xs)
        model.zero_grad()
        sum(n.mean() for n in nlls).backward()
        grads.append((torch.stack(nlls).detach(), model.word_emb.emb_layers[0].weight.grad.clone(),
                      model.layers[0].ff.fc1.weight.grad.clone()))
    (n_frac, g_frac, ff_frac), (n_full, g_full, ff_full) = grads
    torch.testing.assert_close(n_frac, n_full, rtol=0, atol=1e-6)
    torch.testing.assert_close(g_frac, 0.25 * g_full, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(ff_frac, ff_full, rtol=1e-5, atol=1e-8)  # the rest of the model as before


def test_token_shift_mixes_exactly_the_previous_tokens_half_channels():
    h = torch.arange(2 * 7 * 4, dtype=torch.float).view(2, 7, 4)  # [2 read | 3 tokens | 2 write], 4 channels
    out = token_shift(h, 2, 5)
    torch.testing.assert_close(out[:, :2], h[:, :2])  # the memory rows stay
    torch.testing.assert_close(out[:, 5:], h[:, 5:])
    torch.testing.assert_close(out[:, 2:5, :2], h[:, 2:5, :2])  # first halves stay
    torch.testing.assert_close(out[:, 3:5, 2:], h[:, 2:4, 2:])  # second halves from the token before
    assert not out[:, 2, 2:].any()  # the segment's first token: zeros (nothing crosses segments)
    shifted, plain = make(num_mem_tokens=2, token_shift=True), make(num_mem_tokens=2)
    plain.load_state_dict(shifted.state_dict())  # no parameters of its own: the same weights fit both
    with torch.no_grad():
        (a, _), (b, _) = shifted.encode(tokens()), plain.encode(tokens())
    assert not torch.allclose(a, b)


OPTIONS = {"read_memory_emb": dict(read_memory_emb=True),
           "write learned+memory": dict(write_mem_init="learned+memory"),
           "enhanced recurrence": dict(mem_len=5, enhanced_xl_recurrence=True),
           "enhanced, rotary": dict(mem_len=4, enhanced_xl_recurrence=True, attn_type=4),
           "enhanced, absolute": dict(mem_len=4, enhanced_xl_recurrence=True, attn_type=2),
           "emb_gradient_frac": dict(emb_gradient_frac=0.1),
           "token shift": dict(token_shift=True, mem_len=3),
           "token shift, rotary, pre_lnorm": dict(token_shift=True, attn_type=4, pre_lnorm=True),
           "token shift, absolute": dict(token_shift=True, attn_type=2, mem_len=3),
           "token shift, start-only memory": dict(token_shift=True, mem_at_end=False),
           "token shift, ARMT": dict(token_shift=True, memory="associative", d_mem=4)}


@pytest.mark.parametrize("kw", OPTIONS.values(), ids=OPTIONS.keys())
def test_generation_with_the_cache_equals_re_encoding(kw):
    model = make(num_mem_tokens=2, **kw)
    seq = tokens(b=2, t=20)
    fast, slow = Decoder(model, 2), ReencodingDecoder(model, 2)
    fast_logp = torch.stack([fast.feed(seq[:, i]) for i in range(19)], dim=1)
    slow_logp = torch.stack([slow.feed(seq[:, i]) for i in range(19)], dim=1)
    torch.testing.assert_close(fast_logp, slow_logp, rtol=0, atol=1e-5)


def test_the_options_refuse_what_they_cannot_change():
    for kw, message in ((dict(read_memory_emb=True), "needs num_mem_tokens > 0"),
                        (dict(num_mem_tokens=2, write_mem_init="learned", mem_at_end=False), "needs num_mem_tokens"),
                        (dict(num_mem_tokens=2, write_mem_init="zeros"), "write_mem_init must be one of"),
                        (dict(enhanced_xl_recurrence=True), "needs mem_len > 0"),
                        (dict(emb_gradient_frac=0.0), r"must be in \(0, 1\]"),
                        (dict(token_shift=True, d_model=15, d_head=5, n_head=3), "d_model must be even")):
        with pytest.raises(ValueError, match=message):
            make(**kw)


def test_the_task_driver_trains_saves_and_re_evaluates_with_every_option_on(tmp_path):
    on = ["--read_memory_emb", "--write_mem_init", "learned+detached", "--mem_len", "3", "--enhanced_xl_recurrence",
          "--emb_gradient_frac", "0.5", "--token_shift"]

    def driver(*extra):
        return subprocess.run([sys.executable, "-m", "rmt.train", *TINY, *extra, "--work_dir", str(tmp_path / "runs"),
                               "--data", str(tmp_path / "data"), "--results_csv", str(tmp_path / "res.csv")],
                              cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)

    run = driver(*on, "--run_name", "on")
    assert run.returncode == 0, run.stderr[-2000:]
    saved = json.loads((tmp_path / "runs" / "on" / "config.json").read_text())["model"]
    assert (saved["read_memory_emb"], saved["write_mem_init"], saved["enhanced_xl_recurrence"],
            saved["emb_gradient_frac"], saved["token_shift"]) == (True, "learned+detached", True, 0.5, True)
    best = tmp_path / "runs" / "on" / "checkpoint_best.pt"
    assert driver("--eval_only", "--eval_checkpoint", str(best), "--run_name", "ev").returncode == 0
    rows = pd.read_csv(tmp_path / "res.csv")
    assert rows.acc_tf.iloc[1] == pytest.approx(rows.acc_tf.iloc[0])
    bad = driver("--enhanced_xl_recurrence", "--run_name", "bad")  # no cache to enhance
    assert bad.returncode == 2 and "enhanced_xl_recurrence" in bad.stderr and "Traceback" not in bad.stderr
