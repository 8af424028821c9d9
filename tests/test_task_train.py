"""Algorithmic-task training: segmentation, metrics, the driver end to end, resume, scripts.

    python -m pytest tests/test_task_train.py
"""
import argparse
import os
import pathlib
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from rmt.model.recurrence import MemoryState
from rmt.model.transformer import MemTransformerLM
from rmt.results import read_results
from rmt.tasks.generators import sqeq_slots, stack_src_tgt
from rmt.tasks.registry import task_spec
from rmt.tasks.scoring import evaluate_batches, greedy, pad_to_segments, scored_mask, segments, teacher_forced
from rmt.tasks.storage import load_arrays
from rmt.families.base import BatchSampler
from rmt.training.checkpoint import load_file
from rmt.training.runtime import RunLogger, Runtime
from rmt.training.trainer import BEST, Trainer

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = dict(os.environ)


# ---- segmentation -----------------------------------------------------------------------------

def test_segments_are_exactly_tgt_len_and_tile_the_sample():
    t = torch.arange(2 * 10).view(2, 10) + 1
    segs = segments(t, 4)
    assert [s.shape for s in segs] == [(2, 4)] * 3  # torch.chunk would have made 3 chunks of 4, 4, 2
    assert torch.equal(torch.cat(segs, 1)[:, :10], t)
    assert (torch.cat(segs, 1)[:, 10:] == 0).all()
    assert pad_to_segments(t, 5).shape == (2, 10)


def test_scored_mask_answer_only_and_pads():
    tgt = torch.tensor([[5, 5, 0, 3, 0]])
    assert scored_mask(tgt, 3, ignore_pad=False).tolist() == [[False, False, True, True, True]]
    assert scored_mask(tgt, 3, ignore_pad=True).tolist() == [[False, False, False, True, False]]


def test_training_batches_reshuffle_every_epoch_and_resume_exactly():
    sampler = BatchSampler(10, 3, seed=5)
    epochs = [torch.cat([sampler.next() for _ in range(3)]) for _ in range(3)]  # 3 batches of 3 per epoch
    for e in epochs:
        assert len(set(e.tolist())) == 9  # each sample at most once; the short tail (1 sample) dropped
    assert not torch.equal(epochs[0], epochs[1]) and not torch.equal(epochs[1], epochs[2])
    again = BatchSampler(10, 3, seed=5)
    assert torch.equal(torch.cat([again.next() for _ in range(9)]), torch.cat(epochs))  # seeded
    resumed, original = BatchSampler(10, 3, seed=5), BatchSampler(10, 3, seed=5)
    for _ in range(4):
        original.next()
    resumed.load_state_dict(original.state_dict())
    assert all(torch.equal(resumed.next(), original.next()) for _ in range(5))
    assert not torch.equal(BatchSampler(10, 3, seed=6).next(), BatchSampler(10, 3, seed=5).next())


# ---- metrics on hand-made predictors ----------------------------------------------------------

class Oracle:
    """A stand-in model that implements the copy rule exactly, across segments.

    Its "hidden state" at position p is the whole input prefix up to p (padded with -1), and its
    memory is the input seen in earlier segments, so it needs no parameters. In the copy layout
    [X, 1, X, X] the target after input position p is the input at p - L (first copy) or
    p + 1 - L (second copy).
    """

    MAX = 64

    def __init__(self, seq_len, vocab=12):
        self.L, self.vocab = seq_len, vocab

    def encode(self, x, state):
        seen = x if state is None or state.mem is None else torch.cat([state.mem, x], 1)
        t0 = seen.size(1) - x.size(1)
        hidden = torch.full((*x.shape, self.MAX), -1, dtype=torch.long)
        for p in range(x.size(1)):
            hidden[:, p, : t0 + p + 1] = seen[:, : t0 + p + 1]
        return hidden, MemoryState(seen, None)

    def predict(self, prefix):  # (B, S) -> (B,)
        pos = int((prefix[0] >= 0).sum()) - 1
        src = pos - self.L if pos + 1 < 2 * self.L + 1 else pos + 1 - self.L
        return prefix[:, src] if src >= 0 else torch.ones(prefix.size(0), dtype=torch.long)

    def log_probs(self, hidden):
        out = torch.full((*hidden.shape[:2], self.vocab), -10.0)
        for p in range(hidden.size(1)):
            out[:, p].scatter_(-1, self.predict(hidden[:, p])[:, None], 0.0)
        return out

    def nll(self, hidden, y):
        return torch.zeros(y.shape)


def copy_batch(seq_len=4, n=2):
    torch.manual_seed(1)
    x = torch.randint(2, 12, (n, seq_len))
    full = torch.cat([x, torch.ones(n, 1, dtype=torch.long), x, x], 1)
    return full[:, :-1], full[:, 1:]


def test_greedy_and_teacher_forced_with_a_perfect_copier():
    src, tgt = copy_batch()
    for tgt_len in (3, 4, 12):
        m = evaluate_batches(Oracle(4), [(src, tgt)], answer_size=8, tgt_len=tgt_len, ignore_pad=False)
        assert m.acc_tf == 1.0 and m.acc_greedy == 1.0 and m.exact_match == 1.0


class Constant(Oracle):
    def predict(self, prefix):
        return torch.full((prefix.size(0),), 3)


def test_metrics_of_a_constant_predictor_are_counted_by_hand():
    src, tgt = copy_batch()
    m = evaluate_batches(Constant(4), [(src, tgt)], answer_size=8, tgt_len=4, ignore_pad=False)
    expected = (tgt[:, -8:] == 3).float().mean().item()
    assert m.acc_tf == pytest.approx(expected) and m.acc_greedy == pytest.approx(expected)
    assert m.exact_match == 0.0


class Scripted(Oracle):
    """Predicts the true target, except at the (sample, position) pairs in `wrong`; a sample is known by
    its first input token. Its predictions never depend on what it was fed, so errors do not spread."""

    def __init__(self, tgt, wrong, vocab=12):
        super().__init__(0, vocab)
        self.tgt, self.wrong = tgt, wrong

    def predict(self, prefix):
        pos = int((prefix[0] >= 0).sum()) - 1
        rows = (prefix[:, 0] - 2).tolist()
        return torch.tensor([(self.tgt[r, pos].item() + ((r, pos) in self.wrong)) % self.vocab for r in rows])


def test_answer_acc_counts_a_sample_right_when_its_whole_answer_is():
    # sqeq's answer_acc: every character of the last slot right, pads included. The slot's first character
    # is the target one position before the slot (the original left it out: it fed that character in)
    torch.manual_seed(3)
    src = torch.randint(2, 12, (4, 8))
    src[:, 0] = torch.arange(2, 6)  # sample r starts with token r + 2
    tgt = torch.cat([src[:, 1:], torch.zeros(4, 1, dtype=torch.long)], 1)
    wrong = {(0, 7), (1, 3), (3, 4)}  # in the last slot / before the slot / the slot's first character
    m = evaluate_batches(Scripted(tgt, wrong), [(src, tgt)], answer_size=6, tgt_len=4, ignore_pad=False,
                         answer_slot=3)
    assert m.answer_acc == 2 / 4  # samples 1 and 2
    assert m.exact_match == 1 / 4  # sample 2 only
    assert m.acc_greedy == pytest.approx(21 / 24) and m.acc_tf == pytest.approx(21 / 24)
    plain = evaluate_batches(Scripted(tgt, wrong), [(src, tgt)], answer_size=6, tgt_len=4, ignore_pad=False)
    assert plain.answer_acc == plain.exact_match  # other tasks: the whole answer


class FixedEvals:
    """A family whose validations return given metrics; its saved state says which one ran."""

    def __init__(self):
        self.index, self.metrics = 0, {}

    def evaluate(self, model, split):
        return self.metrics

    def after_validation(self, metrics, step):
        return ""

    def state_dict(self):
        return {"eval": self.index}


@pytest.mark.parametrize("select_by,kept", [("loss", 1), ("acc_tf", 2)])
def test_best_checkpoint_follows_the_selection_metric(select_by, kept, tmp_path):
    model = MemTransformerLM(n_token=4, n_layer=1, n_head=1, d_model=4, d_head=4, d_inner=4)
    args = argparse.Namespace(scheduler="constant", lr=1e-3, warmup_step=0, max_step=10, eta_min=0.0, lr_min=0.0,
                              decay_rate=0.5, patience=0, optim="adam", compile=False)
    trainer = Trainer(model, args, Runtime("cpu"), RunLogger(tmp_path, enabled=False), tmp_path, select_by=select_by)
    evals = [{"loss": 1.0, "acc_tf": 0.5}, {"loss": 0.8, "acc_tf": 0.6}, {"loss": 0.9, "acc_tf": 0.7},
             {"loss": 0.85, "acc_tf": 0.65}]  # lowest loss at eval 1, highest accuracy at eval 2
    family = FixedEvals()
    for i, m in enumerate(evals):
        family.index, family.metrics = i, m
        trainer.validate(family)
    assert load_file(tmp_path / BEST)["extra"] == {"eval": kept}


def test_samples_start_fresh_whatever_their_batch_or_the_batches_before():
    # The original carried the XL cache from one sample to the next; here each sample's predictions and
    # loss are those of the sample alone, with memory tokens and a cache both in play.
    torch.manual_seed(0)
    model = MemTransformerLM(n_token=12, n_layer=2, n_head=2, d_model=16, d_head=8, d_inner=32, dropout=0.0,
                             tgt_len=4, mem_len=3, num_mem_tokens=2).eval()
    src = torch.randint(2, 12, (4, 12))
    tgt = torch.randint(2, 12, (4, 12))
    loss, tf = teacher_forced(model, src, tgt, answer_size=6, tgt_len=4)
    gr = greedy(model, src, answer_size=6, tgt_len=4)
    alone = [teacher_forced(model, src[i:i + 1], tgt[i:i + 1], 6, 4) for i in range(4)]
    assert loss == pytest.approx(sum(a[0] for a in alone), rel=1e-5)
    assert torch.equal(tf, torch.cat([a[1] for a in alone]))
    assert torch.equal(gr, torch.cat([greedy(model, src[i:i + 1], 6, 4) for i in range(4)]))
    first, second = (src[:2], tgt[:2]), (src[2:], tgt[2:])
    after = evaluate_batches(model, [first, second], 6, 4, ignore_pad=False)
    before = evaluate_batches(model, [second, first], 6, 4, ignore_pad=False)
    assert after.loss == pytest.approx(before.loss) and after.acc_greedy == before.acc_greedy


class Peeker(Oracle):
    """Predicts its current input token again: greedy decoding then repeats its own output."""

    def predict(self, prefix):
        pos = int((prefix[0] >= 0).sum()) - 1
        return prefix[:, pos]


def test_greedy_never_feeds_ground_truth_inside_the_answer():
    src = torch.tensor([[2, 3, 4, 5, 6, 7, 8, 9]])
    tgt = torch.tensor([[3, 4, 5, 6, 7, 8, 9, 10]])
    preds = greedy(Peeker(4), src, answer_size=4, tgt_len=3)
    # Answer starts at position 4; input 6 (ground truth, question part) is repeated from there on.
    assert preds[0, 4:].tolist() == [6, 6, 6, 6]
    _, tf = teacher_forced(Peeker(4), src, tgt, 4, 3)
    assert tf[0, 4:].tolist() == [6, 7, 8, 9]  # teacher forcing sees the true inputs


class LastTwoPairs(Oracle):
    """Retrieval [k1 v1 .. k4 v4 q 10]: answers right when the query asks for pair 3 or 4, else v3 (wrong)."""

    def predict(self, prefix):
        if int((prefix[0] >= 0).sum()) - 1 != 9:  # only the answer position is scored
            return torch.ones(prefix.size(0), dtype=torch.long)
        keys, values, q = prefix[:, 0:8:2], prefix[:, 1:8:2], prefix[:, 8:9]
        pair = ((keys == q) * 1).argmax(1).clamp(min=2)
        return values.gather(1, pair[:, None])[:, 0]


def test_accuracy_by_queried_pair_is_counted_by_hand():
    spec = task_spec("retrieval")
    X, y = spec.sample(np.random.default_rng(3), 64)
    src, tgt = (torch.from_numpy(a) for a in stack_src_tgt(X, y))
    pair = spec.group_of(src)
    for tgt_len in (10, 5, 3):  # across segments the stand-in reads the earlier ones from its memory
        m = evaluate_batches(LastTwoPairs(0, vocab=37), [(src[:40], tgt[:40]), (src[40:], tgt[40:])], 1, tgt_len,
                             ignore_pad=False, group_of=spec.group_of)
        assert m.acc_tf == pytest.approx((pair >= 3).float().mean().item()) == pytest.approx(m.acc_greedy)
        assert sorted(m.by_group) == [1, 2, 3, 4]
        for g, v in m.by_group.items():
            assert v["n"] == (pair == g).sum().item()
            assert v["acc_tf"] == v["acc_greedy"] == (1.0 if g >= 3 else 0.0)
    assert evaluate_batches(LastTwoPairs(0, vocab=37), [(src, tgt)], 1, 10, ignore_pad=False).by_group == {}


# ---- the driver -------------------------------------------------------------------------------

TINY = ["--dataset", "copy", "--task_seq_len", "4", "--tgt_len", "3", "--eval_tgt_len", "3",
        "--num_mem_tokens", "2", "--n_layer", "1", "--d_model", "16", "--n_head", "2", "--d_head", "8",
        "--d_inner", "32", "--dropout", "0.1", "--lr", "1e-3", "--scheduler", "constant", "--log_interval", "5",
        "--eval_interval", "6", "--max_step", "12", "--n_train", "200", "--n_val", "16", "--n_test", "16",
        "--batch_size", "8", "--device", "cpu", "--scale", "smoke"]


def run_driver(tmp_path, *extra, env=None, check=True):
    args = [sys.executable, "-m", "rmt.train", *TINY, "--work_dir", str(tmp_path / "runs"),
            "--data", str(tmp_path / "data"), "--results_csv", str(tmp_path / "res.csv"), *extra]
    run = subprocess.run(args, cwd=ROOT, env={**ENV, **(env or {})}, capture_output=True, text=True, timeout=300)
    if check:
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    return run


def test_driver_end_to_end_writes_logs_checkpoints_and_a_results_row(tmp_path):
    run_driver(tmp_path, "--run_name", "e2e")
    run_dir = tmp_path / "runs" / "e2e"
    for name in ("log.txt", "config.json", "checkpoint_best.pt", "checkpoint_last.pt"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tb").iterdir())
    rows = pd.read_csv(tmp_path / "res.csv")
    assert len(rows) == 1
    row = rows.iloc[0]
    assert row.model_kind == "rmt" and row.n_segments == 4 and row.split == "test"
    assert 0.0 <= row.acc_greedy <= 1.0 and 0.0 <= row.exact_match <= 1.0
    # Eval-only on the best checkpoint appends a second row with the same test metrics.
    run_driver(tmp_path, "--eval_only", "--eval_checkpoint", str(run_dir / "checkpoint_best.pt"), "--run_name", "ev")
    rows = pd.read_csv(tmp_path / "res.csv")
    assert len(rows) == 2 and rows.acc_tf.iloc[1] == pytest.approx(row.acc_tf)


def test_script_eval_without_flags_uses_the_runs_own_segments(tmp_path):
    """A CPU-preset copy run trained on 3 segments of 8 is evaluated on 3 segments of 8 by the script's
    eval mode with no flags (the preset itself says 1 x 24): its task, data and segments come from
    the run's config.json. A flag given on the command line still wins."""
    csv, runs = tmp_path / "res.csv", tmp_path / "runs"
    script = ["bash", str(ROOT / "scripts" / "copy.sh")]
    train = [*script, "train", "--tgt_len", "8", "--eval_tgt_len", "8", "--num_mem_tokens", "2", "--max_step", "4",
             "--eval_interval", "4", "--n_train", "300", "--n_val", "16", "--n_test", "32", "--work_dir", str(runs),
             "--data", str(tmp_path / "data"), "--results_csv", str(csv), "--run_name", "r"]
    env = {**ENV, "RMT_PRESET": "cpu"}
    assert subprocess.run(train, cwd=tmp_path, env=env, capture_output=True, timeout=300).returncode == 0
    ckpt = str(runs / "r" / "checkpoint_best.pt")
    ev = subprocess.run([*script, "eval", "--eval_checkpoint", ckpt, "--work_dir", str(runs)], cwd=tmp_path, env=env,
                        capture_output=True, text=True, timeout=300)
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert "evaluating as trained" in ev.stdout and "= 3 segments of 8" in ev.stdout
    ev = subprocess.run([*script, "eval", "--eval_checkpoint", ckpt, "--work_dir", str(runs), "--tgt_len", "6",
                         "--eval_tgt_len", "6", "--run_name", "r-eval6"], cwd=tmp_path, env=env, capture_output=True,
                        text=True, timeout=300)
    assert ev.returncode == 0 and "= 4 segments of 6" in ev.stdout
    rows = pd.read_csv(csv)
    assert list(rows["run_id"]) == ["r", "r-eval", "r-eval6"]
    assert list(rows["n_segments"]) == [3, 3, 4] and list(rows["eval_tgt_len"]) == [8, 8, 6]
    assert rows["acc_tf"].iloc[1] == pytest.approx(rows["acc_tf"].iloc[0])  # the run's own test, measured again
    assert (rows["scale"] == "cpu-preset").all()  # the row of an evaluation keeps its run's scale


def test_mem_backprop_depth_means_the_same_as_in_the_lm_driver(tmp_path):
    """'all' (the default) is full BPTT, D truncates; the original's 0-for-full still trains exactly as
    'all', with a deprecation warning, and its row records the meaning that ran (-1)."""
    def weights(name, *flags):
        run = run_driver(tmp_path, "--run_name", name, "--max_step", "3", "--eval_interval", "3", *flags)
        return load_file(tmp_path / "runs" / name / "checkpoint_last.pt")["model"], run.stderr

    full, _ = weights("default")
    spelled, _ = weights("all", "--mem_backprop_depth", "all")
    old, warning = weights("zero", "--mem_backprop_depth", "0")
    truncated, _ = weights("one", "--mem_backprop_depth", "1")
    assert all(torch.equal(full[k], spelled[k]) and torch.equal(full[k], old[k]) for k in full)
    assert "FutureWarning" in warning and "Write --mem_backprop_depth all for full BPTT" in warning
    assert any(not torch.equal(full[k], truncated[k]) for k in full)  # 4 segments: depth 1 cuts the gradient
    rows = pd.read_csv(tmp_path / "res.csv").set_index("run_id")
    assert list(rows.loc[["default", "all", "zero", "one"], "mem_backprop_depth"]) == [-1, -1, -1, 1]
    bad = run_driver(tmp_path, "--mem_backprop_depth", "-2", check=False)
    assert bad.returncode == 2 and "expected all, -1, 0 or a positive number of segments" in bad.stderr


def test_retrieval_run_records_accuracy_by_queried_pair_beside_the_results(tmp_path):
    assert TINY[:4] == ["--dataset", "copy", "--task_seq_len", "4"]
    args = [sys.executable, "-m", "rmt.train", "--dataset", "retrieval", *TINY[4:], "--run_name", "pairs",
            "--work_dir", str(tmp_path / "runs"), "--data", str(tmp_path / "data"),
            "--results_csv", str(tmp_path / "res" / "synthetic.csv")]
    run = subprocess.run(args, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert "valid acc_tf_pair1" in (tmp_path / "runs" / "pairs" / "log.txt").read_text()
    row = pd.read_csv(tmp_path / "res" / "synthetic.csv").iloc[0]
    pairs = pd.read_csv(tmp_path / "res" / "groups" / "synthetic.csv")
    assert pairs.run_id.tolist() == ["pairs"] * 4 and pairs.group.tolist() == [1, 2, 3, 4]
    assert (pairs.group_name == "pair").all() and pairs.n_samples.sum() == 16  # the whole test split
    assert (pairs.acc_tf * pairs.n_samples).sum() / 16 == pytest.approx(row.acc_tf)
    assert len(read_results(tmp_path / "res")) == 1  # the results directory still holds one row


@pytest.mark.parametrize("curriculum", [[], ["--curriculum", "6"]], ids=["plain", "curriculum"])
def test_resume_after_hard_kill_is_bit_identical(curriculum, tmp_path):
    # With a curriculum, the stage changes at the validation of step 6: the checkpoint saved there
    # must hold the new stage, or the resumed run trains the old one.
    run_driver(tmp_path, "--run_name", "straight", "--no_results", *curriculum)
    killed = run_driver(tmp_path, "--run_name", "killed", "--no_results", *curriculum,
                        env={"RMT_KILL_AFTER_STEP": "7"}, check=False)
    assert killed.returncode != 0  # SIGKILL after step 7; the last checkpoint is from step 6
    run_driver(tmp_path, "--restart", "--restart_dir", str(tmp_path / "runs" / "killed"), "--no_results", *curriculum)
    a = torch.load(tmp_path / "runs" / "straight" / "checkpoint_last.pt", weights_only=True)
    b = torch.load(tmp_path / "runs" / "killed" / "checkpoint_last.pt", weights_only=True)
    assert a["step"] == b["step"] == 12 and a["extra"] == b["extra"]
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name


def test_recomputed_segments_train_the_same_weights(tmp_path):
    # Full BPTT over 4 segments with dropout, once plain and once recomputed segment by segment.
    run_driver(tmp_path, "--run_name", "plain", "--no_results")
    run_driver(tmp_path, "--run_name", "recomputed", "--no_results", "--recompute_segments")
    a = torch.load(tmp_path / "runs" / "plain" / "checkpoint_last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "runs" / "recomputed" / "checkpoint_last.pt", weights_only=True)["model"]
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5), name


def test_sqeq_with_small_numbers_trains_and_names_its_task(tmp_path):
    # the sqeq CPU preset's small-number variant: the flags reach the generator, the data and the results row
    assert TINY[:4] == ["--dataset", "copy", "--task_seq_len", "4"]
    args = [sys.executable, "-m", "rmt.train", *TINY[4:], "--dataset", "sqeq_cd", "--max_root", "5",
            "--shuffle_limit", "1", "--tgt_len", "30", "--eval_tgt_len", "30", "--num_mem_tokens", "4",
            "--max_step", "2", "--eval_interval", "2", "--n_test", "8", "--no_greedy_valid", "--run_name", "sq",
            "--work_dir", str(tmp_path / "runs"), "--data", str(tmp_path / "data"),
            "--results_csv", str(tmp_path / "res.csv")]
    run = subprocess.run(args, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    row = pd.read_csv(tmp_path / "res.csv").iloc[-1]
    assert row.task == "sqeq_cd-max_root5-shuffle_limit1" and row.n_segments == 6
    assert row.metric_name == "answer_acc" and 0 <= row.metric_value <= 1
    X, _ = load_arrays(tmp_path / "data", row.task, "train")
    answers = {sqeq_slots(x)[5] for x in X}  # roots within +-4
    assert answers and all(abs(int(r)) < 5 for a in answers if a for r in a.split(","))
    eqs = [sqeq_slots(x)[0] for x in X]
    assert not any(e.startswith(("2*", "-2*")) for e in eqs)  # shuffle_limit 1: the equation is +-monic


def test_time_limit_stops_training_then_tests_and_records_the_steps_run(tmp_path):
    run = run_driver(tmp_path, "--run_name", "timed", "--max_step", "1000000", "--max_time", "0.05")
    assert "time limit of 0.05 min reached" in run.stdout + run.stderr
    row = pd.read_csv(tmp_path / "res.csv").iloc[0]
    assert 0 < row.max_step < 1000000 and row.split == "test"
    ckpt = torch.load(tmp_path / "runs" / "timed" / "checkpoint_last.pt", weights_only=True)
    assert ckpt["step"] == row.max_step  # validated and saved at the step where time ran out


def test_bad_flags_and_missing_checkpoint_give_one_line(tmp_path):
    run = run_driver(tmp_path, "--tgt_len", "0", check=False)
    assert run.returncode == 2 and "--tgt_len must be positive" in run.stderr and "Traceback" not in run.stderr
    run = run_driver(tmp_path, "--eval_only", "--eval_checkpoint", str(tmp_path / "nope.pt"), check=False)
    assert run.returncode != 0 and "no checkpoint file" in run.stderr and "Traceback" not in run.stderr
    run = run_driver(tmp_path, "--task_seq_len", "1", "--num_tokens", "4", "--n_train", "100", check=False)
    assert run.returncode == 1 and "sample space is too small" in run.stderr and "Traceback" not in run.stderr
    run = run_driver(tmp_path, "--dataset", "sqeq_cd", "--task_seq_len", "4", check=False)
    assert run.returncode == 1 and "longer than the slot length 4" in run.stderr and "--n_train" not in run.stderr
    run = run_driver(tmp_path, "--attn_impl", "flex", check=False)
    assert run.returncode == 2 and "flex trains only on CUDA" in run.stderr and "Traceback" not in run.stderr
    # flags the original took and this driver cannot honour fail loudly rather than doing nothing
    run = run_driver(tmp_path, "--bptt_bp", check=False)
    assert run.returncode == 2 and "--bptt_bp applies to language modelling" in run.stderr
    run = run_driver(tmp_path, "--max_eval_steps", "0", check=False)
    assert run.returncode == 2 and "--max_eval_steps 0 would evaluate nothing" in run.stderr


def test_script_runs_from_another_directory(tmp_path):
    run = subprocess.run(["bash", str(ROOT / "scripts" / "copy.sh"), "train", *TINY, "--max_step", "2",
                          "--eval_interval", "2", "--work_dir", str(tmp_path / "runs"), "--data",
                          str(tmp_path / "data"), "--no_results", "--run_name", "s"],
                         cwd=tmp_path, env={**ENV, "RMT_PRESET": "cpu"}, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "runs" / "s" / "checkpoint_last.pt").is_file()
    bad = subprocess.run(["bash", str(ROOT / "scripts" / "copy.sh"), "fly"], cwd=tmp_path, env=ENV,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "usage" in bad.stderr
