"""Language modelling over a Hugging Face causal LM, driven by rmt.train (the hf_lm family): a tiny
GPT-2 with a word-level tokenizer built here (no downloads), text made by the test."""
import json
import os
import random
import subprocess

import pandas as pd
import pytest
import torch
from conftest import ROOT, script_flags, tiny_gpt2

transformers = pytest.importorskip("transformers")  # the hf extra (installed with dev)
from transformers import GPT2LMHeadModel  # noqa: E402

from rmt import evaluate, generate, train  # noqa: E402
from rmt.lm.iterators import windows  # noqa: E402
from rmt.training.checkpoint import load_file  # noqa: E402

WORDS = [f"w{i}" for i in range(30)]


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    """A tiny GPT-2 directory with weights, config and tokenizer, and a text corpus."""
    root = tmp_path_factory.mktemp("hf_lm")
    model_dir = tiny_gpt2(root / "tiny-gpt2", WORDS)
    data = root / "text"
    data.mkdir()
    rng = random.Random(0)
    for split, n in (("train", 3000), ("valid", 400), ("test", 400)):
        (data / f"{split}.txt").write_text(" ".join(rng.choice(WORDS) for _ in range(n)) + "\n")
    return model_dir, data


def flags(backbone, tmp_path, *extra):
    model_dir, data = backbone
    return ["--dataset", "hf_lm", "--backbone", str(model_dir), "--data", str(data), "--n_segments", "3",
            "--tgt_len", "8", "--num_mem_tokens", "2", "--batch_size", "4", "--max_step", "6", "--eval_interval",
            "3", "--log_interval", "3", "--lr", "1e-3", "--device", "cpu", "--work_dir", str(tmp_path / "runs"),
            "--results_csv", str(tmp_path / "res" / "hf.csv"), *extra]


def test_windows_are_whole_and_in_order():
    w = windows(torch.arange(23), 5)
    assert w.shape == (4, 5) and torch.equal(w.flatten(), torch.arange(20))


def test_hf_lm_trains_tests_writes_its_row_and_evaluates(backbone, tmp_path, capsys):
    assert train.main(flags(backbone, tmp_path, "--run_name", "rmt")) == 0
    assert train.main(flags(backbone, tmp_path, "--run_name", "base", "--num_mem_tokens", "0")) == 0
    assert train.main(flags(backbone, tmp_path, "--run_name", "full", "--num_mem_tokens", "0", "--n_segments", "1",
                            "--tgt_len", "24", "--last_tokens", "8")) == 0
    rows = pd.read_csv(tmp_path / "res" / "hf.csv").set_index("run_id")
    assert list(rows.task) == ["text-3x8", "text-3x8", "text-1x24"]
    assert list(rows.model_kind) == ["rmt", "baseline", "baseline"] and (rows.metric_name == "ppl_last_8").all()
    assert (rows.ppl > 1).all() and (rows.metric_value > 1).all() and rows.loc["rmt", "n_layer"] == 2
    assert '"kind": "causal-lm"' in (tmp_path / "runs" / "rmt" / "config.json").read_text()
    capsys.readouterr()
    assert evaluate.main(["--checkpoint", str(tmp_path / "runs" / "rmt" / "checkpoint_best.pt"), "--no_results"]) == 0
    assert f"ppl_last_8 {rows.loc['rmt', 'metric_value']:.4f}" in capsys.readouterr().out  # flags from config.json
    assert evaluate.main(["--checkpoint", str(tmp_path / "runs" / "rmt" / "checkpoint_best.pt"), "--memory_ablation",
                          "shuffle", "--results_csv", str(tmp_path / "res" / "hf.csv")]) == 0
    shuffled = pd.read_csv(tmp_path / "res" / "hf.csv").iloc[-1]
    assert shuffled.task == "text-3x8-mem_shuffle" and shuffled.metric_value != rows.loc["rmt", "metric_value"]
    capsys.readouterr()
    prompt = ["--checkpoint", str(tmp_path / "runs" / "rmt" / "checkpoint_best.pt"), "--prompt",
              " ".join(WORDS[1:10]), "--max_new_tokens", "12"]
    outputs = []
    for extra in (["--temperature", "0"], ["--seed", "3"], ["--seed", "3"]):
        assert generate.main([*prompt, *extra]) == 0
        out, err = capsys.readouterr()
        words = out.split()
        assert len(words) == 12 and set(words) <= set(WORDS) and "9 prompt tokens, 12 generated" in err
        outputs.append(words)
    assert outputs[1] == outputs[2]  # seeded sampling repeats; it crosses a segment boundary (9 + 12 > 2 x 8)


def test_the_pretrained_model_is_tested_as_loaded_with_its_loss_by_segment(backbone, tmp_path):
    """--eval_only without a checkpoint: the backbone as loaded, every segment read alone; the log's
    loss_part<k> is the mean NLL of segment k's tokens (the first token of a window has none)."""
    model_dir, data = backbone
    assert train.main(flags(backbone, tmp_path, "--run_name", "bare", "--num_mem_tokens", "0", "--eval_only")) == 0
    tested = json.loads((tmp_path / "runs" / "bare" / "test.json").read_text())["test"]
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    bare = GPT2LMHeadModel.from_pretrained(model_dir).eval()
    w = windows(torch.tensor(tok((data / "test.txt").read_text(), add_special_tokens=False).input_ids), 24)
    with torch.no_grad():
        logits = torch.cat([bare(s).logits for s in w.split(8, 1)], 1)
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), w[:, 1:].flatten(), reduction="none")
    nll = nll.view(len(w), -1)
    assert tested["loss"] == pytest.approx(nll.mean().item(), rel=1e-5)
    assert tested["loss_part0"] == pytest.approx(nll[:, :7].mean().item(), rel=1e-5)
    assert tested["loss_part2"] == pytest.approx(nll[:, 15:].mean().item(), rel=1e-5)
    assert tested["loss_last_8"] == tested["loss_part2"] and not (tmp_path / "runs" / "bare" / "checkpoint_best.pt").exists()


def test_generate_puts_the_prompt_in_the_chat_template(backbone, tmp_path, capsys):
    model_dir, _ = backbone
    assert train.main(flags(backbone, tmp_path, "--run_name", "chat", "--no_results", "--max_step", "1")) == 0
    config = tmp_path / "runs" / "chat" / "config.json"  # a run from before --memory_norm existed
    record = json.loads(config.read_text())
    del record["args"]["memory_norm"]
    config.write_text(json.dumps(record))
    prompt = ["--checkpoint", str(tmp_path / "runs" / "chat" / "checkpoint_best.pt"), "--prompt", "w1 w2",
              "--max_new_tokens", "5", "--temperature", "0", "--chat"]
    with pytest.raises(SystemExit):
        generate.main(prompt)
    assert "has no chat template" in capsys.readouterr().err
    tok = transformers.AutoTokenizer.from_pretrained(model_dir)
    tok.chat_template = "{% for m in messages %}w3 {{ m['content'] }} w4{% endfor %}"
    tok.save_pretrained(model_dir)
    try:
        assert generate.main(prompt) == 0
    finally:  # the module's other tests share the backbone folder
        tok.chat_template = None
        tok.save_pretrained(model_dir)
        (model_dir / "chat_template.jinja").unlink(missing_ok=True)
    out, err = capsys.readouterr()
    assert "4 prompt tokens, 5 generated" in err and len(out.split()) == 5  # w3 w1 w2 w4, then the new tokens


def test_resume_continues_bit_for_bit(backbone, tmp_path):
    assert train.main(flags(backbone, tmp_path, "--run_name", "straight", "--no_results")) == 0
    assert train.main(flags(backbone, tmp_path, "--run_name", "cut", "--no_results", "--max_step", "3")) == 0
    assert train.main(flags(backbone, tmp_path, "--no_results", "--restart", "--restart_dir",
                            str(tmp_path / "runs" / "cut"))) == 0
    a, b = (load_file(tmp_path / "runs" / name / "checkpoint_last.pt") for name in ("straight", "cut"))
    assert a["step"] == b["step"] == 6
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_mem_lr_trains_the_memory_at_its_own_rate_and_resumes_bit_for_bit(backbone, tmp_path):
    own = ["--no_results", "--mem_lr", "1e-2"]
    assert train.main(flags(backbone, tmp_path, "--run_name", "straight", *own)) == 0
    assert train.main(flags(backbone, tmp_path, "--run_name", "cut", *own, "--max_step", "3")) == 0
    assert train.main(flags(backbone, tmp_path, *own, "--restart", "--restart_dir", str(tmp_path / "runs" / "cut"))) == 0
    assert train.main(flags(backbone, tmp_path, "--run_name", "one_rate", "--no_results")) == 0
    a, b, c = (load_file(tmp_path / "runs" / name / "checkpoint_last.pt") for name in ("straight", "cut", "one_rate"))
    assert [(g["lr"], len(g["params"])) for g in a["optimizer"]["param_groups"]] == [(1e-3, 28), (1e-2, 1)]
    assert b["optimizer"]["param_groups"] == a["optimizer"]["param_groups"]  # the resumed run kept both rates
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert (a["model"]["memory"] - c["model"]["memory"]).abs().max() > 1e-2  # Adam's steps, 10x as long


@pytest.mark.parametrize("extra, message", [
    (["--backbone", ""], "--backbone is required"),
    (["--mem_lr", "0"], "--mem_lr is the memory's learning rate"),
    (["--mem_lr", "1e-2", "--num_mem_tokens", "0"], "--mem_lr is the memory's learning rate"),
    (["--last_tokens", "24"], "--last_tokens must be 0"),
    (["--mem_len", "4"], "apply to the Transformer-XL models"),
    (["--tgt_len", "400"], "fewer than one window"),
    (["--data", "/nonexistent"], "cannot read /nonexistent/train.txt"),
])
def test_bad_input_is_one_line(backbone, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as e:
        train.main(flags(backbone, tmp_path, *extra))
    assert e.value.code != 0
    assert message in (str(e.value.code) + capsys.readouterr().err)
    assert not (tmp_path / "res").exists()


def test_the_script_runs_the_recipe_with_the_users_flags_last(backbone, tmp_path):
    model_dir, data = backbone
    assert script_flags("hf_lm.sh", "PAPER")[:2] == ["--dataset", "hf_lm"]
    run = subprocess.run(["bash", "scripts/hf_lm.sh", "train", "--backbone", str(model_dir), "--data", str(data),
                          "--n_segments", "2", "--tgt_len", "8", "--batch_size", "4", "--max_step", "2",
                          "--eval_interval", "2", "--max_eval_steps", "1", "--device", "cpu", "--work_dir",
                          str(tmp_path / "runs"), "--run_name", "s", "--results_csv", str(tmp_path / "hf.csv")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "RMT_PRESET": "cpu"})
    assert run.returncode == 0, run.stderr[-2000:]
    row = pd.read_csv(tmp_path / "hf.csv").iloc[0]
    assert row.task == "text-2x8" and row.scale == "cpu-preset" and row.num_mem_tokens == 8  # the CPU preset's
    assert row.command.startswith("bash scripts/hf_lm.sh train")
