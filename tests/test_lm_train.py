"""Language-model training and evaluation: rmt.train, rmt.evaluate and the run_*.sh scripts, on tiny
corpora built on the fly (a wt-style word corpus and an enwik8-style byte corpus).

    python -m pytest tests/test_lm_train.py -q

Every run uses one CPU thread (OMP_NUM_THREADS=1): tiny models gain nothing from more, and
bit-for-bit comparisons between a subprocess and this process need the same reduction order.
"""
import json
import math
import os
import pathlib
import random
import signal
import subprocess
import sys
import time
import zipfile

import pandas as pd
import pytest
import torch
from conftest import script_flags
from rmt import config as cli
from rmt import evaluate as lm_eval
from rmt import train as lm_train
from rmt.lm.evaluation import default_data_dir, eval_lengths, lm_metrics, nll_sum
from rmt.lm.prepare import prepare
from rmt.model.recurrence import MemoryState, StreamState, stream_step
from rmt.model.transformer import MemTransformerLM

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
ENV.pop("RMT_KILL_AFTER_STEP", None)
TINY = ["--n_layer", "2", "--d_model", "32", "--n_head", "2", "--d_head", "16", "--d_inner", "64", "--tgt_len", "8",
        "--eval_tgt_len", "8", "--batch_size", "4", "--log_interval", "4", "--device", "cpu", "--max_eval_steps", "4",
        "--eval_batch_size", "4"]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def wt_dir(tmp_path_factory):
    """A WikiText-style word corpus: 3,000 train tokens over 60 words, lines of 5-15 words."""
    rng = random.Random(0)
    words = [f"w{i}" for i in range(60)]

    def text(n):
        lines = []
        while n > 0:
            k = rng.randint(5, 15)
            lines.append(" " + " ".join(rng.choice(words[: rng.randint(10, 60)]) for _ in range(k)) + " ")
            n -= k + 1
        return "\n".join(lines) + "\n"

    d = tmp_path_factory.mktemp("wikitext")
    for split, n in (("train", 3000), ("valid", 400), ("test", 400)):
        (d / f"{split}.txt").write_text(text(n))
    return d


@pytest.fixture(scope="module")
def enwik8_dir(tmp_path_factory):
    """An enwik8-style byte corpus made by rmt.lm.prepare from 4,000 bytes of pseudo-text."""
    rng = random.Random(1)
    raw = "".join(rng.choice(["the ", "cat ", "<page>", "\n", "sat ", "on ", "mat ", "\u00e9t\u00e9 "])
                  for _ in range(1000)).encode()[:4000]
    tmp = tmp_path_factory.mktemp("enwik8")
    with zipfile.ZipFile(tmp / "enwik8.zip", "w") as zf:
        zf.writestr("enwik8", raw)
    prepare("enwik8", str(tmp / "enwik8.zip"), str(tmp / "data"), valid_size=400, test_size=400)
    return tmp / "data"


@pytest.fixture(scope="module")
def text8_dir(tmp_path_factory):
    """A text8-style character corpus made by rmt.lm.prepare from 3,000 characters."""
    rng = random.Random(2)
    text = " ".join(rng.choice(["anarchism", "originated", "as", "a", "term", "of", "abuse"]) for _ in range(600))
    tmp = tmp_path_factory.mktemp("text8")
    (tmp / "text8").write_text(text[:3000])
    prepare("text8", str(tmp / "text8"), str(tmp / "data"), valid_size=300, test_size=300)
    return tmp / "data"


def run(cmd, cwd=ROOT, env=None, timeout=120, check=True):
    p = subprocess.run(cmd, cwd=cwd, env=env or ENV, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def train_args(data, work, name, *extra):
    return [*TINY, "--data", str(data), "--work_dir", str(work), "--run_name", name, "--no_results", *extra]


def params(run_dir, name="checkpoint_last.pt"):
    return torch.load(pathlib.Path(run_dir) / name, weights_only=True)["model"]


# ---- the scripts, end to end ------------------------------------------------------------------

@pytest.mark.parametrize("script, data_fixture, unit, extra", [
    ("run_wt103_base.sh", "wt_dir", "ppl", ["--cutoffs", "20", "40", "--num_mem_tokens", "2"]),  # adaptive, RMT+XL
    ("run_enwik8_base.sh", "enwik8_dir", "bpc",
     ["--mem_len", "0", "--num_mem_tokens", "2", "--mem_backprop_depth", "1"]),  # the paper's RMT recipe
])
def test_script_train_then_eval(script, data_fixture, unit, extra, request, tmp_path):
    data = request.getfixturevalue(data_fixture)
    csv = tmp_path / "lm.csv"
    common = ["--data", str(data), "--results_csv", str(csv)]
    # Run from an unrelated directory: common.sh cd's to the repository root.
    run(["bash", str(ROOT / "scripts" / script), "train", *TINY, *common, "--max_step", "8", "--eval_interval", "4",
         "--work_dir", str(tmp_path / "runs"), "--run_name", "r", *extra], cwd=tmp_path)
    ckpt = tmp_path / "runs" / "r" / "checkpoint_best.pt"
    assert ckpt.is_file() and (tmp_path / "runs" / "r" / "config.json").is_file()
    # No flags: the run is evaluated as it was trained, so the number is the training run's own test.
    out = run(["bash", str(ROOT / "scripts" / script), "eval", "--checkpoint", str(ckpt), "--results_csv", str(csv)],
              cwd=tmp_path).stdout
    assert "test  | loss" in out and unit in out and "protocol trained" in out
    rows = pd.read_csv(csv)
    assert list(rows["split"]) == ["test", "test"]  # the training run's final test, then eval.py's
    assert list(rows["run_id"]) == ["r", "r-eval"]
    assert list(rows["metric_name"]) == [unit, unit]
    assert rows[unit].iloc[1] == pytest.approx(rows[unit].iloc[0], rel=1e-9)
    assert rows["command"].str.startswith(f"bash scripts/{script}").all()
    assert rows["model_kind"].iloc[0] == ("rmt+txl" if "--mem_len" not in extra else "rmt")
    assert (rows["scale"] == "custom").all()  # resized by the TINY flags: neither paper nor cpu-preset


def test_scripts_label_resized_runs_custom_and_check_the_preset_name():
    """The row's scale: the recipe's own label unless a size flag resizes it (then custom), and a
    --scale given on the command line always wins; RMT_PRESET must name a preset."""
    def custom_scale(*flags):
        cmd = f"source {ROOT / 'scripts' / 'common.sh'}; custom_scale {' '.join(flags)}"
        return run(["bash", "-c", cmd]).stdout.strip()

    assert custom_scale("--tgt_len", "32", "--mem_len", "0", "--num_mem_tokens", "5", "--batch_size", "64",
                        "--mem_backprop_depth", "2") == ""  # the paper's rows: the recipe with these appended
    assert custom_scale("--n_layer", "2") == custom_scale("--max_step=10") == "--scale custom"
    assert custom_scale("--d_model", "64", "--scale", "smoke") == ""
    bad = run(["bash", "-c", f"source {ROOT / 'scripts' / 'common.sh'}; preset"], env={**ENV, "RMT_PRESET": "gpu"},
              check=False)
    assert bad.returncode == 2 and "RMT_PRESET must be paper or cpu, got 'gpu'" in bad.stderr
    for script in ("run_enwik8_base.sh", "run_wt103_base.sh"):
        assert script_flags(script, "TRAIN")[-2:] == ["--scale", "paper"]
        assert script_flags(script, "CPU")[-2:] == ["--scale", "cpu-preset"]


@pytest.mark.parametrize("level, script, dataset, unit", [("char", "run_enwik8_base.sh", "enwik8", "bpc"),
                                                          ("word", "run_wt103_base.sh", "wt2", "ppl")])
def test_own_text_prepared_trained_and_evaluated_under_its_name(tmp_path, level, script, dataset, unit):
    """pytorch/docs/language-modelling.md, "Train RMT on your own text": prepare, one script line to
    train, one to evaluate."""
    rng = random.Random(5)
    for name in ("a.txt", "b.txt"):
        (tmp_path / name).write_text("\n".join(" ".join(rng.choice(["the", "cat", "sat", "on", "a", "mat"])
                                                       for _ in range(12)) for _ in range(80)) + "\n")
    out = tmp_path / "data" / "notes"
    run([sys.executable, "-m", "rmt.lm.prepare", "text", "a.txt", "b.txt", "--level", level, "--out", str(out)],
        cwd=tmp_path)
    csv, runs = tmp_path / "lm.csv", tmp_path / "runs"
    extra = ["--cutoffs", "6"] if level == "word" else []
    run(["bash", str(ROOT / "scripts" / script), "train", "--dataset", dataset, "--data", str(out), *TINY, *extra,
         "--mem_len", "0", "--num_mem_tokens", "2", "--mem_backprop_depth", "1", "--max_step", "4",
         "--eval_interval", "4", "--work_dir", str(runs), "--run_name", "own", "--results_csv", str(csv)], cwd=tmp_path)
    run(["bash", str(ROOT / "scripts" / script), "eval", "--checkpoint", str(runs / "own" / "checkpoint_best.pt"),
         "--results_csv", str(csv)], cwd=tmp_path)
    rows = pd.read_csv(csv)
    assert list(rows["task"]) == ["notes", "notes"] and list(rows["metric_name"]) == [unit, unit]
    assert list(rows["run_id"]) == ["own", "own-eval"] and rows[unit].iloc[1] == pytest.approx(rows[unit].iloc[0])
    wrong = "wt103" if level == "char" else "enwik8"
    bad = run(["bash", str(ROOT / "scripts" / script), "train", "--dataset", wrong, "--data", str(out), *TINY,
               "--work_dir", str(runs), "--no_results"], cwd=tmp_path, check=False)
    assert bad.returncode == 1 and f"{level}-level corpus; train or evaluate it with --dataset {dataset}" in bad.stderr


@pytest.mark.parametrize("script, data_fixture, unit, extra", [
    ("run_wt103_base.sh", "wt_dir", "ppl", ["--cutoffs", "20", "40"]),
    ("run_wt103_large.sh", "wt_dir", "ppl", ["--cutoffs", "20", "40"]),  # div_val 4
    ("run_enwik8_base.sh", "enwik8_dir", "bpc", []),
    ("run_enwik8_large.sh", "enwik8_dir", "bpc", []),
    ("run_text8_base.sh", "text8_dir", "bpc", []),
])
def test_every_recipe_trains_and_evaluates(script, data_fixture, unit, extra, request, tmp_path):
    """Each script's own flags (tiny sizes appended, as a user would) train and evaluate, in process."""
    data, csv = request.getfixturevalue(data_fixture), tmp_path / "lm.csv"
    train = script_flags(script, "TRAIN")
    assert f"data/{default_data_dir(train[train.index('--dataset') + 1]).name}" in train
    assert lm_train.main([*train, *TINY, "--data", str(data), "--max_step", "2", "--eval_interval", "2",
                          "--work_dir", str(tmp_path), "--run_name", "r", "--results_csv", str(csv), *extra]) == 0
    assert lm_eval.main(["--protocol", "txl-long", "--checkpoint", str(tmp_path / "r" / "checkpoint_best.pt"),
                         "--split", "test", "--results_csv", str(csv)]) == 0
    rows = pd.read_csv(csv)
    assert list(rows["split"]) == ["test", "test"] and list(rows["metric_name"]) == [unit, unit]
    assert rows[unit].notna().all()
    dataset = train[train.index("--dataset") + 1]
    assert rows["eval_tgt_len"].iloc[1] == lm_eval.TXL_LONG_CACHE[dataset][0]
    assert rows["mem_len"].iloc[1] == lm_eval.TXL_LONG_CACHE[dataset][1]


def test_eval_all_splits_and_overrides(wt_dir, tmp_path, capsys):
    lm_train.main(train_args(wt_dir, tmp_path, "r", "--dataset", "wt2", "--max_step", "2", "--eval_interval", "2",
                             "--num_mem_tokens", "2", "--mem_len", "4"))
    csv = tmp_path / "lm.csv"
    ckpt = tmp_path / "r" / "checkpoint_best.pt"
    assert lm_eval.main(["--checkpoint", str(ckpt), "--results_csv", str(csv), "--max_eval_steps", "3"]) == 0
    assert lm_eval.main(["--checkpoint", str(ckpt), "--results_csv", str(csv), "--split", "valid", "--tgt_len", "5",
                         "--mem_len", "12", "--clamp_len", "6", "--same_length", "--batch_size", "2"]) == 0
    out = capsys.readouterr().out
    assert "wt2 (" in out and "tgt_len 5 | mem_len 12" in out  # dataset and data from the run's config.json
    rows = pd.read_csv(csv)
    assert list(rows["split"]) == ["valid", "test", "valid"]
    assert list(rows["eval_tgt_len"]) == [8, 8, 5] and list(rows["mem_len"]) == [4, 4, 12]
    protocols = [json.loads(c)["protocol"] for c in rows["config_json"]]
    assert protocols == ["trained", "trained", "trained+flags"]  # overridden settings are not the run's own
    with pytest.raises(SystemExit):  # same_length needs a cache: one argparse error
        lm_eval.main(["--checkpoint", str(ckpt), "--mem_len", "0", "--same_length", "--no_results"])


@pytest.mark.parametrize("extra", [["--mem_len", "6"], ["--num_mem_tokens", "2"], ["--mem_len", "0"]])
def test_eval_without_flags_uses_the_training_segmentation(wt_dir, tmp_path, capsys, extra):
    """A run trained on segments of 6 and tested on 4 is evaluated on 4, with its cache lengthened by
    the 2 positions the shorter segments leave out, exactly as its own final test; the old default
    (Transformer-XL's long cache) is an explicit protocol."""
    csv = tmp_path / "lm.csv"
    lm_train.main([*TINY, "--dataset", "wt2", "--data", str(wt_dir), "--work_dir", str(tmp_path), "--run_name", "r",
                   "--tgt_len", "6", "--eval_tgt_len", "4", "--max_step", "3", "--eval_interval", "3",
                   "--results_csv", str(csv), *extra])
    ckpt = str(tmp_path / "r" / "checkpoint_best.pt")
    assert lm_eval.main(["--checkpoint", ckpt, "--split", "test", "--results_csv", str(csv), "--by_position"]) == 0
    mem = int(extra[1]) + 2 if extra[0] == "--mem_len" and extra[1] != "0" else 0
    out = capsys.readouterr().out
    assert f"protocol trained | tgt_len 4 | mem_len {mem} |" in out
    assert "test  | loss by position (nats) | 0: " in out and "| 2-3: " in out
    rows = pd.read_csv(csv)
    assert rows["ppl"].iloc[1] == pytest.approx(rows["ppl"].iloc[0], rel=1e-9)
    assert list(rows["eval_tgt_len"]) == [4, 4]
    assert lm_eval.main(["--checkpoint", ckpt, "--split", "test", "--protocol", "txl-long", "--no_results"]) == 0
    assert "protocol txl-long | tgt_len 64 | mem_len 640 | num_mem_tokens" in capsys.readouterr().out


# ---- exact resume, signals ------------------------------------------------------------------

@pytest.mark.parametrize("reset", [[], ["--reset_memory_every", "4"]])
def test_resume_after_hard_kill_is_bit_identical(wt_dir, tmp_path, reset):
    # dropout, RMT memory, XL cache, BPTT history and varlen segments all must come back exactly;
    # 8 rows of ~16 tokens make an epoch of ~23 steps, so the memory reset at the epoch start is crossed
    # (and with resets every 4 segments, the kill at step 15 falls 3 segments after one).
    extra = ["--dataset", "wt2", "--max_step", "30", "--eval_interval", "15", "--dropout", "0.1", "--dropatt", "0.1",
             "--num_mem_tokens", "2", "--mem_len", "8", "--mem_backprop_depth", "1", "--varlen", "--batch_size", "8",
             "--tgt_len", "16", *reset]
    lm_train.main(train_args(wt_dir, tmp_path, "straight", *extra))
    killed = run([sys.executable, "-m", "rmt.train", *train_args(wt_dir, tmp_path, "resumed", *extra)],
                 env={**ENV, "RMT_KILL_AFTER_STEP": "15"}, check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert torch.load(tmp_path / "resumed" / "checkpoint_last.pt", weights_only=True)["step"] == 15
    lm_train.main(train_args(wt_dir, tmp_path, "resumed", *extra, "--restart", "--restart_dir",
                             str(tmp_path / "resumed")))
    a, b = params(tmp_path / "straight"), params(tmp_path / "resumed")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert "resumed at step 15" in (tmp_path / "resumed" / "log.txt").read_text()


def test_sigterm_saves_checkpoint_and_exits_zero(wt_dir, tmp_path):
    cmd = [sys.executable, "-m", "rmt.train",
           *train_args(wt_dir, tmp_path, "r", "--dataset", "wt2", "--max_step", "100000", "--eval_interval", "100000")]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = tmp_path / "r" / "log.txt"
    deadline = time.time() + 60
    while time.time() < deadline and not (log.is_file() and "step " in log.read_text()):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err[-2000:]
    ckpt = torch.load(tmp_path / "r" / "checkpoint_last.pt", weights_only=True)
    assert 0 < ckpt["step"] < 100000
    assert "stop requested" in log.read_text()


# ---- gradient semantics ---------------------------------------------------------------------

# Plain SGD without clipping: Adam and clipping hide a wrongly scaled gradient.
SENSITIVE = ["--optim", "sgd", "--lr", "0.5", "--clip", "0"]


def test_ddp_two_processes_match_one_process(wt_dir, tmp_path):
    extra = ["--dataset", "wt2", "--max_step", "6", "--eval_interval", "6", "--num_mem_tokens", "2", "--mem_len", "4",
             "--adaptive", "--cutoffs", "20", "40", "--div_val", "2",  # adaptive: clusters may miss a rank's rows
             *SENSITIVE]
    lm_train.main(train_args(wt_dir, tmp_path, "one", *extra))
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "rmt.train",
         *train_args(wt_dir, tmp_path, "two", *extra)])
    a, b = params(tmp_path / "one"), params(tmp_path / "two")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=k)
    for name in ("one", "two"):
        assert torch.load(tmp_path / name / "checkpoint_last.pt", weights_only=True)["step"] == 6


def test_batch_chunk_matches_whole_batch(wt_dir, tmp_path):
    extra = ["--dataset", "wt2", "--max_step", "5", "--eval_interval", "5", "--num_mem_tokens", "2", "--mem_len", "4",
             "--mem_backprop_depth", "1", "--bptt_bp", *SENSITIVE]
    lm_train.main(train_args(wt_dir, tmp_path, "k1", *extra))
    lm_train.main(train_args(wt_dir, tmp_path, "k2", *extra, "--batch_chunk", "2"))
    a, b = params(tmp_path / "k1"), params(tmp_path / "k2")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5, msg=k)


def tiny_model():
    torch.manual_seed(0)
    return MemTransformerLM(n_token=20, n_layer=2, n_head=2, d_model=16, d_head=8, d_inner=32, num_mem_tokens=2)


@pytest.mark.parametrize("depth", [1, 2])
def test_mem_backprop_depth_reaches_exactly_depth_segments_back(depth):
    """The loss of segment t reaches the memory entering segment t - depth and nothing older or newer."""
    model = tiny_model()
    x, y = torch.randint(20, (3, 3, 6)), torch.randint(20, (3, 3, 6))  # (segments, B, T)
    carry = StreamState(depth)
    carry.state = MemoryState(torch.randn(3, 2, 16))
    entering = []  # the stored (detached) memory that entered segments t-2 and t-1
    for k in range(2):
        stream_step(model, carry, x[k], y[k], backward=lambda loss: None)
        entering.append(carry.history[-1].state.mem.requires_grad_())
    grads = []
    stream_step(model, carry, x[2], y[2],
                backward=lambda loss: grads.extend(torch.autograd.grad(loss, entering, allow_unused=True)))
    two_back, one_back = grads
    nonzero = lambda g: g is not None and g.abs().sum() > 0  # noqa: E731
    if depth == 1:
        assert not nonzero(two_back) and nonzero(one_back)
    else:  # recomputed from t-2: the stored memory of t-1 is replaced by its recomputation
        assert nonzero(two_back) and not nonzero(one_back)
    assert carry.state.mem.grad_fn is None and len(carry.history) == depth


def test_depth_zero_detaches_memory():
    model = tiny_model()
    carry = StreamState(0)
    carry.state = MemoryState(torch.randn(3, 2, 16, requires_grad=True))
    mem_in = carry.state.mem
    grads = []
    stream_step(model, carry, torch.randint(20, (3, 6)), torch.randint(20, (3, 6)),
                        backward=lambda loss: grads.extend(torch.autograd.grad(loss, [mem_in], allow_unused=True)))
    assert grads == [None] and len(carry.history) == 0


def test_evaluation_extends_cache_and_carries_memory_over_the_split():
    torch.manual_seed(0)
    model = MemTransformerLM(n_token=20, n_layer=2, n_head=2, d_model=16, d_head=8, d_inner=32, num_mem_tokens=2,
                             mem_len=10, tgt_len=8)
    with eval_lengths(model, tgt_len=8, eval_tgt_len=4):  # the original reset_length: mem_len + 8 - 4
        assert (model.config.tgt_len, model.config.mem_len) == (4, 14)
    assert (model.config.tgt_len, model.config.mem_len) == (8, 10)
    batches = [(torch.randint(20, (3, 4)), torch.randint(20, (3, 4))) for _ in range(3)]
    batches.append((torch.randint(20, (3, 2)), torch.randint(20, (3, 2))))  # a short last segment
    total, n_tokens, n_segments, by_position = nll_sum(model, batches)
    state, expected, per_pos = MemoryState(), 0.0, [[] for _ in range(4)]  # initial memory once, never reset
    with torch.no_grad():
        for x, y in batches:
            nll, state = model.eval()(x, y, state)
            expected += nll.double().sum().item()
            for t in range(nll.size(1)):
                per_pos[t] += nll[:, t].double().tolist()
    assert (n_tokens, n_segments) == (42, 4) and total == pytest.approx(expected, rel=1e-12)
    assert by_position == pytest.approx([sum(v) / len(v) for v in per_pos], rel=1e-12)  # 12, 12, 9, 9 tokens
    assert lm_metrics(total / n_tokens, "enwik8").keys() == {"loss", "bpc"}


def test_evaluation_can_start_the_memory_afresh_every_n_segments():
    torch.manual_seed(0)
    model = MemTransformerLM(n_token=20, n_layer=2, n_head=2, d_model=16, d_head=8, d_inner=32, num_mem_tokens=2,
                             mem_len=6, tgt_len=4, memory="associative", d_mem=4)
    torch.nn.init.normal_(model.assoc[0].v.weight)  # written values that are not zero: memory matters
    batches = [(torch.randint(20, (3, 4)), torch.randint(20, (3, 4))) for _ in range(7)]
    chunks = [nll_sum(model, batches[i:i + 3])[0] for i in (0, 3, 6)]  # three passes, each from a fresh memory
    assert nll_sum(model, batches, reset_every=3)[0] == pytest.approx(sum(chunks), rel=1e-12)
    assert nll_sum(model, batches)[0] != pytest.approx(sum(chunks), rel=1e-6)  # carried: another loss


def test_training_starts_the_memory_afresh_every_n_segments_and_at_each_epoch(wt_dir, monkeypatch):
    from rmt.families.registry import build_family
    from rmt.training.runtime import Runtime
    args, _ = cli.parse_training_args(train_args(wt_dir, "unused", "r", "--dataset", "wt2", "--num_mem_tokens", "2",
                                                 "--batch_size", "8", "--tgt_len", "16", "--reset_memory_every", "5"))
    family = build_family(args, Runtime("cpu"))
    family.load_data(lambda *a: None)
    model = MemTransformerLM.from_config(family.model_config())
    fresh_at = []
    for step in range(30):  # an epoch of 8 rows of 3,000 / 8 tokens is 24 segments of 16
        reset = family.carried.reset
        monkeypatch.setattr(family.carried, "reset", lambda: (fresh_at.append(step), reset()))
        family.train_batch(model, step)
        monkeypatch.undo()
    assert fresh_at == [0, 5, 10, 15, 20, 24, 29]  # every 5, and counted again from the epoch's start
    assert args.reset_memory_every == 5

def test_memory_drift_reports_the_loss_and_state_size_along_the_stream(enwik8_dir, tmp_path):
    from rmt.lm.evaluation import load_corpus
    from rmt.tools import memory_drift
    from rmt.training.checkpoint import load_model
    lm_train.main(train_args(enwik8_dir, tmp_path, "armt", "--dataset", "enwik8", "--num_mem_tokens", "2",
                             "--memory", "associative", "--d_mem", "4", "--max_step", "6", "--eval_interval", "6",
                             "--mem_backprop_depth", "1", "--lr", "0.05", "--warmup_step", "0"))  # writes trained
    ckpt = tmp_path / "armt" / "checkpoint_last.pt"
    assert memory_drift.main(["--checkpoint", str(ckpt), "--segments", "8", "--block", "4", "--out",
                              str(tmp_path / "fresh.csv")]) == 0
    fresh = pd.read_csv(tmp_path / "fresh.csv")
    assert list(fresh.columns) == ["segments", "bpc", "A0", "z0", "A1", "z1"] and list(fresh["segments"]) == [4, 8]
    model = load_model(ckpt)[0]
    it = load_corpus(enwik8_dir, "enwik8").get_iterator("train", 4, 8)
    batches = [b for _, b in zip(range(8), it)]
    first = nll_sum(model, batches[:4])  # the first block: what evaluation's loop gives over it
    assert fresh["bpc"][0] == pytest.approx(first[0] / first[1] / math.log(2), abs=1e-4)
    assert memory_drift.main(["--checkpoint", str(ckpt), "--segments", "8", "--block", "4", "--start", "training",
                              "--out", str(tmp_path / "carried.csv")]) == 0
    carried = pd.read_csv(tmp_path / "carried.csv")
    assert carried["bpc"][0] != pytest.approx(fresh["bpc"][0], abs=1e-4)  # the state training left is another start
    for argv, message in ((["--start", "training", "--batch_size", "3"], "leave out --batch_size"),
                          (["--block", "0"], "--block must be positive")):
        with pytest.raises(SystemExit, match=message):
            memory_drift.main(["--checkpoint", str(ckpt), *argv])


# ---- one-line errors ------------------------------------------------------------------------

def test_original_flags_that_would_do_nothing_warn_or_fail(capsys):
    parser = cli.training_parser("wt103")
    with pytest.warns(UserWarning, match="--debug is ignored"):
        cli.check_args(parser.parse_args(["--debug"]), parser)
    with pytest.raises(SystemExit):  # the original looped forever; an empty validation would pass silently
        cli.check_args(parser.parse_args(["--max_eval_steps", "0"]), parser)
    assert "--max_eval_steps 0 would evaluate nothing" in capsys.readouterr().err
    cli.check_args(parser.parse_args(["--max_eval_steps", "-1"]), parser)  # the whole split


def test_mem_backprop_depth_all_is_refused_and_zero_detaches(wt_dir, tmp_path, capsys):
    """The LM driver shares the tasks' meaning: 0 detached, D truncated, all = full BPTT, which an
    endless stream cannot have: a one-line error, not a silent choice."""
    with pytest.raises(SystemExit) as e:
        lm_train.main(train_args(wt_dir, tmp_path, "a", "--num_mem_tokens", "2", "--mem_backprop_depth", "all"))
    assert e.value.code == 2 and "a language-model stream has no end" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # the original's re-run exists only with a depth to re-run
        lm_train.main(train_args(wt_dir, tmp_path, "a", "--num_mem_tokens", "2", "--lm_replay", "original"))
    assert e.value.code == 2 and "--lm_replay original changes only" in capsys.readouterr().err
    for procedure in ("correct", "original"):  # the driver runs both; the run records which trained it
        assert lm_train.main(train_args(wt_dir, tmp_path, procedure, "--num_mem_tokens", "2", "--mem_backprop_depth",
                                        "1", "--max_step", "3", "--lm_replay", procedure)) == 0
        assert json.loads((tmp_path / procedure / "config.json").read_text())["args"]["lm_replay"] == procedure
    assert any(not torch.equal(a, b) for a, b in zip(params(tmp_path / "correct").values(),
                                                     params(tmp_path / "original").values()))
    carry = StreamState(0)
    model = MemTransformerLM(n_token=20, n_layer=1, n_head=2, d_model=16, d_head=8, d_inner=32, tgt_len=4,
                             num_mem_tokens=2)
    x = torch.randint(0, 20, (2, 4))
    stream_step(model, carry, x, x)  # from the learned initial memory: it gets gradient
    assert model.mem_tokens.grad is not None and len(carry.history) == 0 and not carry.state.mem.requires_grad
    model.zero_grad(set_to_none=True)
    stream_step(model, carry, x, x)  # from the carried, detached memory: no path back
    assert model.mem_tokens.grad is None


def test_missing_data_dir_is_one_line(tmp_path):
    p = run([sys.executable, "-m", "rmt.train", "--data", str(tmp_path / "nowhere"), "--dataset", "wt103",
             "--work_dir", str(tmp_path)], check=False)
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "getdata.sh" in lines[0] and "Traceback" not in p.stderr
    assert not any(tmp_path.iterdir())  # no empty run directory left behind


def test_corrupt_checkpoint_is_one_line(wt_dir, tmp_path):
    bad = tmp_path / "checkpoint_best.pt"
    bad.write_text("junk\n")  # reaches the weights-only unpickler, which raised a bare KeyError
    p = run([sys.executable, "-m", "rmt.evaluate", "--checkpoint", str(bad), "--dataset", "wt2", "--data", str(wt_dir)],
            check=False)
    assert p.returncode != 0
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and str(bad) in lines[0] and "Traceback" not in p.stderr


def test_damaged_checkpoints_are_one_line_in_process(wt_dir, tmp_path):
    lm_train.main(train_args(wt_dir, tmp_path, "r", "--dataset", "wt2", "--max_step", "1", "--eval_interval", "1"))
    good = (tmp_path / "r" / "checkpoint_best.pt").read_bytes()
    opt_only = tmp_path / "opt.pt"
    torch.save({"optimizer": {}}, opt_only)
    for name, content in (("truncated.pt", good[: len(good) // 2]), ("zip.pt", b"PK\x03\x04 not a zip"),
                          ("empty.pt", b""), ("opt.pt", opt_only.read_bytes())):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(SystemExit) as e:
            lm_eval.main(["--checkpoint", str(tmp_path / name), "--dataset", "wt2", "--data", str(wt_dir)])
        assert str(e.value.code).startswith("error: ") and "\n" not in str(e.value.code), name
