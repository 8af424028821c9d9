"""Memory ablations at evaluation (rmt.model.ablation): reset and shuffle read exactly the memory
they promise, and a fact-task model that needs its memory falls to chance without it."""
import pandas as pd
import pytest
import torch
from conftest import make, tokens, train_tiny_lm
from rmt import config, evaluate, train
from rmt.model.ablation import MemoryAblation
from rmt.model.recurrence import MemoryState, classify, score

ENCODER = dict(causal=False, mem_at_end=False, n_classes=5, num_mem_tokens=2)


def test_shuffle_gives_every_row_another_rows_memory():
    model = make(**ENCODER)
    x = tokens(b=2, t=12)
    swapped = torch.cat([x.flip(0)[:, :6], x[:, 6:]], dim=1)  # each row's first segment is the other row's
    torch.testing.assert_close(classify(MemoryAblation(model, "shuffle"), x, 6)[0], classify(model, swapped, 6)[0],
                               rtol=1e-5, atol=1e-6)
    ablation = MemoryAblation(model, "shuffle", seed=3)
    for n in range(2, 9):
        perm = ablation.derangement(n)
        assert sorted(perm.tolist()) == list(range(n)) and (perm != torch.arange(n)).all()
        assert torch.equal(perm, MemoryAblation(model, "shuffle", seed=3).derangement(n))  # fixed by the seed
    with pytest.raises(ValueError, match="at least 2 rows"):
        classify(ablation, tokens(b=1, t=12), 6)


def test_reset_reads_the_initial_memory_at_every_segment():
    model = make(**ENCODER)
    x = tokens(b=3, t=18)
    torch.testing.assert_close(classify(MemoryAblation(model, "reset"), x, 6)[0], classify(model, x[:, -6:], 6)[0],
                               rtol=1e-5, atol=1e-6)
    lm = make(num_mem_tokens=2, mem_len=4)  # a causal RMT with an XL cache: the cache is kept
    seq = tokens(b=2, t=13)
    state = MemoryState()
    nlls = []
    for xs, ys in zip(seq[:, :-1].split(6, 1), seq[:, 1:].split(6, 1)):
        nll, state = lm(xs, ys, MemoryState(None, state.xl))
        nlls.append(nll)
    torch.testing.assert_close(score(MemoryAblation(lm, "reset"), seq, 6).nll, torch.cat(nlls, 1), rtol=1e-5,
                               atol=1e-6)
    assert not torch.allclose(score(lm, seq, 6).nll, torch.cat(nlls, 1))  # memory did carry something


FACT = ["--dataset", "fact", "--n_segments", "3", "--tgt_len", "8", "--eval_tgt_len", "8", "--n_values", "4",
        "--n_layer", "1", "--d_model", "32", "--n_head", "2", "--d_head", "16", "--d_inner", "64", "--num_mem_tokens",
        "2", "--max_step", "300", "--eval_interval", "100", "--log_interval", "100", "--n_train", "2000", "--n_val",
        "200", "--n_test", "200", "--device", "cpu", "--scale", "smoke"]


def test_a_fact_model_falls_to_chance_without_its_memory(tmp_path, capsys):
    """The fact stands before the last segment: without the memory it wrote, the model cannot know it."""
    csv = tmp_path / "cls.csv"
    assert train.main([*FACT, "--work_dir", str(tmp_path / "runs"), "--run_name", "f", "--results_csv", str(csv)]) == 0
    best = str(tmp_path / "runs" / "f" / "checkpoint_best.pt")
    for how in ("reset", "shuffle"):
        assert evaluate.main(["--checkpoint", best, "--memory_ablation", how, "--results_csv", str(csv)]) == 0
    rows = pd.read_csv(csv).set_index("task")
    assert list(rows.index) == ["fact3x8", "fact3x8-mem_reset", "fact3x8-mem_shuffle"]
    assert rows.loc["fact3x8", "metric_value"] >= 0.9  # it learned to carry the fact
    assert rows.loc["fact3x8-mem_reset", "metric_value"] <= 0.45 and rows.loc["fact3x8-mem_shuffle",
                                                                              "metric_value"] <= 0.45
    assert "test (memory shuffle) | " in capsys.readouterr().out


def test_lm_evaluation_with_an_ablation_names_its_rows(tmp_path, capsys):
    checkpoint, data, dataset = train_tiny_lm(tmp_path, "word")
    csv = tmp_path / "lm.csv"
    for how in ("none", "reset"):
        assert evaluate.main(["--checkpoint", str(checkpoint), "--memory_ablation", how, "--split", "test",
                              "--results_csv", str(csv)]) == 0
    rows = pd.read_csv(csv)
    assert list(rows.task) == ["data-word", "data-word-mem_reset"]  # the corpus, then how it was read
    assert rows.loss.iloc[0] != rows.loss.iloc[1]
    assert "memory ablation reset" in capsys.readouterr().out


def test_an_ablation_is_an_evaluation_flag():
    with pytest.raises(SystemExit):
        config.parse_training_args(["--dataset", "copy", "--memory_ablation", "reset"])


def test_the_hugging_face_wrappers_read_the_ablated_memory():
    transformers = pytest.importorskip("transformers")
    from rmt.hf import RMTForCausalLM, RMTForSequenceClassification

    torch.manual_seed(0)
    bert = transformers.BertForSequenceClassification(transformers.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=40,
        max_position_embeddings=64, num_labels=3)).eval()
    enc = RMTForSequenceClassification(bert, 2, 6, cls_token_id=1, sep_token_id=2).eval()
    ids = torch.randint(3, 40, (3, 18), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(MemoryAblation(enc, "reset")(ids).logits, enc(ids[:, -6:]).logits, rtol=1e-5,
                               atol=1e-6)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=40,
                                                                n_positions=64)).eval()
    dec = RMTForCausalLM(gpt2, 2, 6).eval()
    pair = ids[:2, :12]
    swapped = torch.cat([pair.flip(0)[:, :6], pair[:, 6:]], dim=1)
    torch.testing.assert_close(MemoryAblation(dec, "shuffle")(pair).logits[:, 6:], dec(swapped).logits[:, 6:],
                               rtol=1e-5, atol=1e-6)
    assert not torch.allclose(dec(pair).logits[:, 6:], dec(swapped).logits[:, 6:])  # memory carries the segment


def test_a_task_evaluation_runs_teacher_forced_and_greedy_through_the_ablation(tmp_path):
    flags = ["--dataset", "copy", "--task_seq_len", "4", "--tgt_len", "3", "--eval_tgt_len", "3", "--num_mem_tokens",
             "2", "--n_layer", "1", "--d_model", "16", "--n_head", "2", "--d_head", "8", "--d_inner", "32",
             "--max_step", "4", "--eval_interval", "2", "--n_train", "50", "--n_val", "8", "--n_test", "8",
             "--batch_size", "4", "--device", "cpu", "--data", str(tmp_path / "data"), "--work_dir",
             str(tmp_path / "runs"), "--results_csv", str(tmp_path / "res.csv")]
    assert train.main([*flags, "--run_name", "c"]) == 0
    best = str(tmp_path / "runs" / "c" / "checkpoint_best.pt")
    assert train.main(["--eval_only", "--eval_checkpoint", best, "--memory_ablation", "shuffle",
                       "--results_csv", str(tmp_path / "res.csv")]) == 0
    rows = pd.read_csv(tmp_path / "res.csv")
    assert rows.task.iloc[1] == rows.task.iloc[0] + "-mem_shuffle" and rows.acc_greedy.notna().all()
    assert (tmp_path / "runs" / "c-eval" / "test.json").exists()  # beside the run, not in the working directory
