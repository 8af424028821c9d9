"""The memorize task over a Hugging Face encoder, driven by rmt.train: a tiny BERT with a word-level
tokenizer built here (no downloads), distractor text made by the test."""
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

transformers = pytest.importorskip("transformers")  # the hf extra (installed with dev)
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast  # noqa: E402

from rmt import evaluate, train  # noqa: E402
from rmt.tasks.memorize import FACT, PLACES, QUESTION, memorize_samples  # noqa: E402

FILLER = [f"w{i}" for i in range(40)]


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    """A tiny BERT directory with weights, config and tokenizer, and a distractor-text directory."""
    root = tmp_path_factory.mktemp("hf")
    words = sorted({w for s in (FACT, QUESTION) for w in s.replace("{}", "").split()} | set(PLACES) | set(FILLER))
    (root / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    model_dir = root / "tiny-bert"
    BertTokenizerFast(vocab_file=str(root / "vocab.txt")).save_pretrained(model_dir)
    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig(vocab_size=5 + len(words), hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=4, intermediate_size=64,
                                             max_position_embeddings=64, hidden_dropout_prob=0.0,
                                             attention_probs_dropout_prob=0.0)).save_pretrained(model_dir)
    text_dir = root / "wikitext-2"
    text_dir.mkdir()
    rng = np.random.default_rng(0)
    for split in ("valid", "test"):
        (text_dir / f"{split}.txt").write_text(" ".join(rng.choice(FILLER, 3000)) + "\n")
    return model_dir, text_dir


def flags(backbone, tmp_path, *extra):
    model_dir, text_dir = backbone
    return ["--dataset", "memorize", "--backbone", str(model_dir), "--distractor_dir", str(text_dir),
            "--n_segments", "2", "--tgt_len", "16", "--eval_tgt_len", "16", "--num_mem_tokens", "2",
            "--batch_size", "4", "--max_step", "6", "--eval_interval", "3", "--log_interval", "3",
            "--n_train", "32", "--n_val", "8", "--n_test", "8", "--lr", "1e-3",
            "--work_dir", str(tmp_path / "runs"), "--results_csv", str(tmp_path / "res" / "hf.csv"), *extra]


def test_samples_state_the_fact_first_and_ask_last():
    rng = np.random.default_rng(0)
    text = np.arange(100, 600)
    facts = [[1, 2, 10 + k] for k in range(4)]
    x, labels = memorize_samples(rng, 50, 32, text, facts, [7, 8])
    assert x.shape == (50, 32) and set(labels) <= {0, 1, 2, 3} and len(set(labels)) > 1
    assert (x[:, 2] == 10 + labels).all() and (x[:, -2:] == [7, 8]).all()
    assert (x[:, 3:-2] >= 100).all() and (np.diff(x[:, 3:-2], axis=1) == 1).all()  # one contiguous span of the text


def test_memorize_trains_tests_writes_its_row_and_evaluates(backbone, tmp_path, capsys):
    assert train.main(flags(backbone, tmp_path, "--run_name", "rmt")) == 0
    assert train.main(flags(backbone, tmp_path, "--run_name", "last", "--last_segment_only",
                            "--num_mem_tokens", "0")) == 0
    rows = pd.read_csv(tmp_path / "res" / "hf.csv").set_index("run_id")
    assert rows.loc["rmt", "task"] == "memorize2x16" and rows.loc["last", "task"] == "memorize2x16-last"
    assert list(rows.model_kind) == ["rmt-encoder", "encoder"] and (rows.metric_name == "accuracy").all()
    assert rows.loc["rmt", "n_layer"] == 2 and rows.loc["rmt", "d_model"] == 32
    cfg = (tmp_path / "runs" / "rmt" / "config.json").read_text()
    assert '"kind": "sequence-classification"' in cfg and "tiny-bert" in cfg
    capsys.readouterr()
    ckpt = tmp_path / "runs" / "rmt" / "checkpoint_best.pt"
    assert evaluate.main(["--checkpoint", str(ckpt), "--no_results"]) == 0
    out = capsys.readouterr().out
    assert f"acc {rows.loc['rmt', 'metric_value']:.4f}" in out  # the same test accuracy, flags from config.json


def test_resume_continues_bit_for_bit(backbone, tmp_path):
    assert train.main(flags(backbone, tmp_path, "--run_name", "straight", "--no_results")) == 0
    assert train.main(flags(backbone, tmp_path, "--run_name", "cut", "--no_results", "--max_step", "3")) == 0
    assert train.main(flags(backbone, tmp_path, "--restart", "--restart_dir", str(tmp_path / "runs" / "cut"),
                            "--no_results")) == 0
    a = torch.load(tmp_path / "runs" / "straight" / "checkpoint_last.pt", weights_only=True)
    b = torch.load(tmp_path / "runs" / "cut" / "checkpoint_last.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name


def test_ddp_two_processes_match_one_process(backbone, tmp_path):
    sensitive = ["--optim", "sgd", "--lr", "0.5", "--clip", "0", "--no_results"]  # no dropout in the tiny BERT
    assert train.main(flags(backbone, tmp_path, "--run_name", "one", *sensitive)) == 0
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "rmt.train", *flags(backbone, tmp_path, "--run_name", "two", *sensitive)],
                         env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    a, b = (torch.load(tmp_path / "runs" / name / "checkpoint_last.pt", weights_only=True)["model"]
            for name in ("one", "two"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=0, msg=name)


def test_a_curriculum_starts_from_the_shorter_runs_weights(backbone, tmp_path, capsys):
    assert train.main(flags(backbone, tmp_path, "--run_name", "short", "--no_results")) == 0
    best = tmp_path / "runs" / "short" / "checkpoint_best.pt"
    assert train.main(flags(backbone, tmp_path, "--run_name", "long", "--no_results", "--n_segments", "3",
                            "--init_checkpoint", str(best), "--optim", "sgd", "--lr", "1e-12", "--clip", "0")) == 0
    start = torch.load(best, weights_only=True)["model"]
    end = torch.load(tmp_path / "runs" / "long" / "checkpoint_last.pt", weights_only=True)["model"]
    for name in start:  # a step of lr 1e-12 moves nothing visible: the run began at the short run's weights
        torch.testing.assert_close(end[name], start[name], atol=1e-8, rtol=0, msg=name)
    with pytest.raises(SystemExit, match="does not fit this model"):
        train.main(flags(backbone, tmp_path, "--num_mem_tokens", "3", "--init_checkpoint", str(best)))
    with pytest.raises(SystemExit):
        train.main(flags(backbone, tmp_path, "--init_checkpoint", str(tmp_path / "nothing.pt")))
    assert "no such file" in capsys.readouterr().err


def test_freeze_backbone_changes_memory_and_head_only(backbone, tmp_path):
    assert train.main(flags(backbone, tmp_path, "--run_name", "frozen", "--freeze_backbone", "--no_results")) == 0
    trained = torch.load(tmp_path / "runs" / "frozen" / "checkpoint_last.pt", weights_only=True)["model"]
    original = BertForSequenceClassification.from_pretrained(backbone[0]).state_dict()
    changed = {k for k, v in original.items() if not torch.equal(trained[f"backbone.{k}"], v)}
    assert changed <= {"classifier.weight", "classifier.bias"} and changed


@pytest.mark.parametrize("bad, message", [
    ([], "--backbone is required"),
    (["--n_values", "9"], "--n_values must be 2..8"),
    (["--tgt_len", "8"], "--tgt_len must be at least 16"),
    (["--mem_len", "4"], "--bptt_bp and --mem_len apply"),
])
def test_bad_flags_are_one_line_errors(backbone, tmp_path, capsys, bad, message):
    args = flags(backbone, tmp_path, *bad)
    if not bad:
        args = args[:2] + args[4:]  # no --backbone
    with pytest.raises(SystemExit) as e:
        train.main(args)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_missing_distractor_text_or_backbone_is_a_clear_error(backbone, tmp_path):
    with pytest.raises(SystemExit, match="cannot read the distractor text"):
        train.main(flags(backbone, tmp_path, "--distractor_dir", str(tmp_path / "none")))
    with pytest.raises(SystemExit, match="no loadable tokenizer"):
        train.main(flags(backbone, tmp_path, "--backbone", str(tmp_path / "none")))
