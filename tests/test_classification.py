"""The bidirectional encoder (causal False), sequence classification over segments, and the fact
task trained end to end through rmt.train and scored by rmt.evaluate."""
import pandas as pd
import pytest
import torch
from conftest import grads, make, tokens
from rmt import evaluate, train
from rmt.model.layers import RelPartialLearnableAttention
from rmt.model.recurrence import MemoryState, classify, score
from rmt.tasks.classification import FACT, FIRST_VALUE, QUERY, fact_samples

ENCODER = dict(causal=False, mem_at_end=False, n_classes=5)


def test_encoder_mask_sees_the_whole_segment():
    model = make(num_mem_tokens=2, mem_len=4, **ENCODER)
    mask = model.segment_mask(6, 3, "cpu", flex=False)  # 3 cached positions
    assert mask.shape == (8, 11)
    assert not mask[:, 3:].any()  # memory and tokens see every memory slot and token
    assert mask[:2, :3].all() and not mask[2:, :3].any()  # memory does not read the cache (by default)


def test_encoder_tokens_see_later_tokens():
    for causal, changes in ((True, False), (False, True)):
        model = make(num_mem_tokens=2, **{**ENCODER, "causal": causal, "mem_at_end": causal})
        x = tokens(b=1, t=6)
        y = x.clone()
        y[0, -1] = (y[0, -1] + 1) % 20
        first = (model.encode(x)[0][:, 0] - model.encode(y)[0][:, 0]).abs().max()
        assert (first > 1e-6) == changes


def test_bidirectional_relative_attention_uses_signed_distances():
    """Each (query, key) pair gets the position term of its own signed distance i - j, also for
    keys after the query (no wrap-around), checked against an explicit sum."""
    torch.manual_seed(1)
    attn = RelPartialLearnableAttention(2, 16, 8, 0.0, 0.0, False).eval()
    model = make(**ENCODER)
    q_len = 5
    h = torch.randn(1, q_len, 16)
    r = model.positions(q_len, "cpu", torch.float32, future=q_len - 1)  # distances 4 .. -4
    u, v_bias = torch.randn(2, 8), torch.randn(2, 8)
    mask = torch.zeros(q_len, q_len, dtype=torch.bool)
    out = attn(h, r, u, v_bias, mask)
    q, k, v = attn.project(h)
    r_k = attn.r_net(r).view(-1, 2, 8)
    score = torch.empty(1, 2, q_len, q_len)
    for i in range(q_len):
        for j in range(q_len):
            dist_row = (q_len - 1) - (i - j)  # r holds distances q_len-1 down to -(q_len-1)
            score[0, :, i, j] = ((q[0, i] + u) * k[0, j]).sum(-1) + ((q[0, i] + v_bias) * r_k[dist_row]).sum(-1)
    prob = (score * attn.scale).softmax(-1)
    vec = torch.einsum("bhqk,bkhd->bqhd", prob, v).reshape(1, q_len, -1)
    torch.testing.assert_close(out, attn.layer_norm(h + attn.o_net(vec)), rtol=1e-5, atol=1e-5)


def test_fused_equals_eager_for_the_encoder():
    eager = make(num_mem_tokens=2, mem_len=4, **ENCODER)
    fused = make(num_mem_tokens=2, mem_len=4, attn_impl="fused", **ENCODER)
    fused.load_state_dict(eager.state_dict())
    x = tokens(b=2, t=18)
    torch.testing.assert_close(classify(fused, x, 6)[0], classify(eager, x, 6)[0], rtol=1e-5, atol=1e-5)


def test_classify_equals_a_hand_loop_and_truncates():
    model = make(num_mem_tokens=2, **ENCODER)
    x = tokens(b=2, t=18)
    state = MemoryState()
    for seg in x.split(6, dim=1):
        _, state = model.encode(seg, state)
    torch.testing.assert_close(classify(model, x, 6)[0], model.cls_head(state.mem.mean(1)), rtol=0, atol=1e-6)
    labels = torch.tensor([0, 3])
    ce = torch.nn.functional.cross_entropy
    g_full = grads(model, ce(classify(model, x, 6)[0], labels))["mem_tokens"]
    g_cut = grads(model, ce(classify(model, x, 6, depth=1)[0], labels))
    assert g_full.abs().max() > 0 and "mem_tokens" not in g_cut  # the initial memory is 3 segments back
    assert g_cut["cls_head.weight"].abs().max() > 0
    g_recomputed = grads(model, ce(classify(model, x, 6, recompute=True)[0], labels))["mem_tokens"]
    torch.testing.assert_close(g_recomputed, g_full, rtol=1e-5, atol=1e-7)


def test_encoder_configuration_errors():
    with pytest.raises(ValueError, match="memory at the start only"):
        make(num_mem_tokens=2, causal=False)
    with pytest.raises(ValueError, match="no classification head"):
        classify(make(num_mem_tokens=2), tokens(), 6)
    with pytest.raises(ValueError, match="bidirectional"):
        score(make(num_mem_tokens=2, **ENCODER), tokens(), 6)
    with pytest.raises(ValueError, match="causal"):
        make(num_mem_tokens=2, **ENCODER).generate(tokens(b=1, t=2), 3)


def test_fact_samples_put_the_fact_before_the_last_segment():
    import numpy as np

    x, y = fact_samples(np.random.default_rng(0), 500, 4, 8, n_values=5, n_distractors=7)
    assert x.shape == (500, 32) and set(np.unique(y)) == set(range(5))
    assert (x[:, -1] == QUERY).all() and (x == FACT).sum(1).tolist() == [1] * 500
    where = (x == FACT).argmax(1)
    assert where.max() < 24 - 1 and (x[np.arange(500), where + 1] == FIRST_VALUE + y).all()
    assert ((x[:, 24:-1] >= FIRST_VALUE + 5) & (x[:, 24:-1] < FIRST_VALUE + 12)).all()  # distractors only


FACT_TINY = ["--dataset", "fact", "--n_segments", "3", "--tgt_len", "6", "--eval_tgt_len", "6", "--n_values", "4",
             "--n_layer", "1", "--d_model", "16", "--n_head", "2", "--d_head", "8", "--d_inner", "32",
             "--max_step", "6", "--eval_interval", "3", "--log_interval", "3", "--n_train", "64", "--n_val", "16",
             "--n_test", "32", "--batch_size", "8", "--device", "cpu", "--scale", "smoke"]


def test_fact_task_trains_tests_and_evaluates(tmp_path, capsys):
    csv = tmp_path / "cls.csv"
    common = [*FACT_TINY, "--work_dir", str(tmp_path / "runs"), "--results_csv", str(csv)]
    assert train.main([*common, "--run_name", "rmt"]) == 0
    assert train.main([*common, "--run_name", "last", "--last_segment_only", "--num_mem_tokens", "0"]) == 0
    assert evaluate.main(["--checkpoint", str(tmp_path / "runs" / "rmt" / "checkpoint_best.pt"),
                          "--results_csv", str(csv)]) == 0
    rows = pd.read_csv(csv)
    assert list(rows.task) == ["fact3x6", "fact3x6-last", "fact3x6"]
    assert list(rows.model_kind) == ["rmt-encoder", "encoder", "rmt-encoder"]
    assert list(rows.n_segments) == [3, 1, 3] and set(rows.metric_name) == {"accuracy"}
    assert rows.metric_value.between(0, 1).all() and rows.metric_value.iloc[2] == rows.metric_value.iloc[0]
    assert "chance 0.25" in capsys.readouterr().out
