"""Attention probabilities on request: rows sum to 1, zero exactly where the mask blocks, the
same whatever attention implementation runs; and the attention-map command on both kinds of run."""
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, make, tokens, train_tiny_lm
from rmt.tools import attention_maps


@pytest.mark.parametrize("kw", [dict(num_mem_tokens=2, mem_len=5), dict(num_mem_tokens=3, mem_len=4,
                                same_length=True, read_mem_from_cache=True), dict(mem_len=4),
                                dict(num_mem_tokens=2, attn_type=2, mem_len=3)])
def test_maps_are_distributions_blocked_exactly_by_the_mask(kw):
    model = make(**kw)
    x = tokens(b=2, t=6)
    _, state = model.encode(x)  # a second segment: the XL cache is non-empty
    hidden, new_state, maps = model.encode(x, state, return_attention=True)
    plain_hidden, plain_state = model.encode(x, state)
    assert torch.equal(hidden, plain_hidden)  # asking for the maps changes nothing
    mlen = state.xl[0].size(1) if state.xl else 0
    mask = model.segment_mask(6, mlen, x.device, flex=False)
    assert len(maps) == model.config.n_layer
    for prob in maps:
        assert prob.shape == (2, model.config.n_head, *mask.shape)
        torch.testing.assert_close(prob.sum(-1), torch.ones(prob.shape[:3]), rtol=0, atol=1e-5)
        assert torch.all(prob[..., mask] == 0)
        assert torch.all(prob[..., ~mask] > 0)


@pytest.mark.parametrize("impl", ["fused", "flex"])
def test_maps_do_not_depend_on_the_attention_implementation(impl):
    eager = make(num_mem_tokens=2, mem_len=4)
    other = make(num_mem_tokens=2, mem_len=4, attn_impl=impl)
    other.load_state_dict(eager.state_dict())
    x = tokens(b=1, t=6)
    _, state = eager.encode(x)
    ref = eager.encode(x, state, return_attention=True)[2]
    for a, b in zip(ref, other.encode(x, state, return_attention=True)[2]):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_command_draws_an_lm_checkpoint(tmp_path):
    ckpt, _, _ = train_tiny_lm(tmp_path, "word")
    assert attention_maps.main(["--checkpoint", str(ckpt), "--sample", "2", "--heads", "--out",
                                str(tmp_path / "maps")]) == 0
    names = sorted(p.name for p in (tmp_path / "maps").iterdir())
    assert names == ["data-word_sample2_segment2_layer0_heads.png", "data-word_sample2_segment2_layer1_heads.png",
                     "data-word_sample2_segment2_layers.png"]
    assert all((tmp_path / "maps" / n).read_bytes()[:4] == b"\x89PNG" for n in names)
    with pytest.raises(SystemExit, match="segments"):
        attention_maps.main(["--checkpoint", str(ckpt), "--sample", "100000"])


def test_command_draws_every_segment_of_a_task_sample(tmp_path):
    run = subprocess.run([sys.executable, "-m", "rmt.train", "--dataset", "copy", "--task_seq_len", "4", "--tgt_len",
                          "3", "--eval_tgt_len", "3", "--num_mem_tokens", "2", "--n_layer", "1", "--d_model", "16",
                          "--n_head", "2", "--d_head", "8", "--d_inner", "32", "--max_step", "2", "--eval_interval",
                          "2", "--n_train", "50", "--n_val", "8", "--n_test", "8", "--batch_size", "4", "--device",
                          "cpu", "--work_dir", str(tmp_path / "runs"), "--run_name", "c", "--data",
                          str(tmp_path / "data"), "--no_results"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    ckpt = tmp_path / "runs" / "c" / "checkpoint_best.pt"
    assert attention_maps.main(["--checkpoint", str(ckpt), "--sample", "3"]) == 0
    names = sorted(p.name for p in (ckpt.parent / "attention").iterdir())
    assert len(names) >= 3 and all(n.startswith("copy") and "_sample3_segment" in n for n in names)
    with pytest.raises(SystemExit, match="--sample must be in 0..7"):
        attention_maps.main(["--checkpoint", str(ckpt), "--sample", "8"])


def test_blocks_mark_cache_read_tokens_write():
    q, k = attention_maps.blocks(4, 2, 6, True)
    assert q == [("read", 0, 2), ("tokens", 2, 8), ("write", 8, 10)]
    assert k == [("cache", 0, 4), ("read", 4, 6), ("tokens", 6, 12), ("write", 12, 14)]
