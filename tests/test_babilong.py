"""BABILong-style long-context QA (rmt.tasks.babi, rmt.tasks.babilong): the story generator checked
by an interpreter of its own, samples of exact length, the answer-only loss, exact-match scoring,
and the family driven by rmt.train on a tiny GPT-2 with a word-level tokenizer built here."""
import json
import os
import random
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_gpt2, tiny_llama

transformers = pytest.importorskip("transformers")

from rmt import config, train  # noqa: E402
from rmt.tasks import babi  # noqa: E402
from rmt.families import babilong as babilong_family  # noqa: E402
from rmt.families.babilong import BabiLong  # noqa: E402
from rmt.tasks.babilong import ANSWER, Haystack, assemble, haystack_sentences, parse_length  # noqa: E402
from rmt.tools import compare, memory_attention, memory_probe  # noqa: E402
from rmt.tools.compare import babilong_section  # noqa: E402
from rmt.tools.plots import babilong_points  # noqa: E402
from rmt.training.checkpoint import load_file  # noqa: E402

# ---- the stories ------------------------------------------------------------------------------------------

MOVE = re.compile(r"^(\w+) (?:went|journeyed|travelled|moved|went back) to the (\w+)\.$")
TAKE = re.compile(r"^(\w+) (?:picked up|got|grabbed|took) the (\w+)\.$")
DROP = re.compile(r"^(\w+) (?:dropped|discarded|put down|left) the (\w+)\.$")


def interpret(facts, question):
    """A second reading of a story, written from the sentences alone: the answer, or an AssertionError
    where the story breaks the world's rules."""
    where, holder, trail = {}, {}, {}
    for fact in facts:
        if m := MOVE.match(fact):
            where[m[1]] = m[2]
            for obj, who in holder.items():
                if who == m[1] and trail[obj][-1] != m[2]:
                    trail[obj].append(m[2])
        elif m := TAKE.match(fact):
            person, obj = m[1], m[2]
            assert person in where and obj not in holder, fact
            assert obj not in trail or trail[obj][-1] == where[person], fact  # taken where it lies
            holder[obj] = person
            if not trail.get(obj) or trail[obj][-1] != where[person]:
                trail.setdefault(obj, []).append(where[person])
        elif m := DROP.match(fact):
            assert holder.pop(m[2]) == m[1], fact
        else:
            raise AssertionError(f"not a story sentence: {fact}")
    if m := re.match(r"^Where is (\w+)\?$", question):
        return where[m[1]]
    if m := re.match(r"^Where is the (\w+)\?$", question):
        return where[holder[m[1]]] if m[1] in holder else trail[m[1]][-1]
    m = re.match(r"^Where was the (\w+) before the (\w+)\?$", question)
    assert trail[m[1]][-1] == m[2]
    return trail[m[1]][-2]


@pytest.mark.parametrize("task", babi.TASKS)
def test_every_answer_follows_from_the_story(task):
    rng = np.random.default_rng(7)
    for _ in range(300):
        story = babi.make_story(task, rng)
        assert interpret(story.facts, story.question) == story.answer
        assert story.answer in babi.PLACES and len(story.facts) >= babi.STORY_LENGTH[task][0]
        for question, answer in story.others:  # the story's other questions, also answered by it
            assert interpret(story.facts, question) == answer and question != story.question
    asked = lambda story: {q for q, _ in (*story.others, (story.question, story.answer))}  # noqa: E731
    if task == "qa1":  # every person who moved is asked about, once
        story = babi.make_story(task, rng)
        assert asked(story) == {f"Where is {p}?" for p in babi.whereabouts(story.facts)}


@pytest.mark.parametrize("task", babi.TASKS)
def test_whereabouts_are_each_persons_last_place(task):
    """babi.whereabouts, read off the sentences, agrees with the interpreter's answer to "Where is X?"
    for everyone who moved, and names nobody who did not."""
    rng = np.random.default_rng(3)
    for _ in range(100):
        story = babi.make_story(task, rng)
        where = babi.whereabouts(story.facts)
        assert set(where) == {m[1] for f in story.facts if (m := MOVE.match(f))}
        assert all(interpret(story.facts, f"Where is {p}?") == place for p, place in where.items())


def test_the_tasks_need_their_supporting_facts():
    rng = np.random.default_rng(1)
    qa2 = [babi.make_story("qa2", rng) for _ in range(100)]
    assert all(s.question.startswith("Where is the") for s in qa2)
    # the object's place is never the place it was picked up in alone: its carrier moved it on
    qa3 = [babi.make_story("qa3", rng) for _ in range(100)]
    assert all(" before the " in s.question for s in qa3)
    with pytest.raises(ValueError, match="unknown bAbI task 'qa9'"):
        babi.make_story("qa9", rng)


# ---- samples ----------------------------------------------------------------------------------------------

def test_lengths_parse_in_binary_units():
    assert [parse_length(s) for s in ("0", "512", "4k", "64K", "1M")] == [0, 512, 4096, 65536, 1 << 20]
    with pytest.raises(ValueError, match="optional k or M"):
        parse_length("1.5k")


def test_facts_go_in_order_between_haystack_sentences_and_the_length_is_exact():
    hay = Haystack([np.full(n, 100 + i) for i, n in enumerate((3, 5, 2, 7, 4))])
    facts = [np.array([1, 1]), np.array([2]), np.array([3, 3, 3])]
    question, answer = np.array([8, 8]), np.array([9])
    for length in (9, 10, 40, 500):
        ids, first = assemble(facts, question, answer, hay, length, np.random.default_rng(length))
        assert len(ids) == length and list(ids[-3:]) == [8, 8, 9]
        assert ids[first] == 1 and all(t >= 100 for t in ids[:first])  # where the story starts
        story = [t for t in ids[:-3] if t < 100]
        assert story == [1, 1, 2, 3, 3, 3]  # each fact once, in order, whole
    assert len(assemble(facts, question, answer, hay, 0, np.random.default_rng(0))[0]) == 9  # the story alone
    with pytest.raises(ValueError, match="cannot hold its story"):
        assemble(facts, question, answer, hay, 8, np.random.default_rng(0))


def test_facts_can_be_kept_before_a_token():
    """end_before (--story_in_earlier_segments): the last fact ends by that token, the facts stay
    whole and in order, the length stays exact; a story that cannot end there is refused."""
    hay = Haystack([np.full(n, 100 + i) for i, n in enumerate((3, 5, 2, 7, 4))])
    facts = [np.array([1, 1]), np.array([2]), np.array([3, 3, 3])]
    question, answer = np.array([8, 8]), np.array([9])
    for seed in range(30):
        ids, first = assemble(facts, question, answer, hay, 40, np.random.default_rng(seed), end_before=14)
        story = [i for i, t in enumerate(ids[:-3]) if t < 100]
        assert len(ids) == 40 and [ids[i] for i in story] == [1, 1, 2, 3, 3, 3] and story[-1] < 14
    ends = {max(i for i, t in enumerate(assemble(facts, question, answer, hay, 40, np.random.default_rng(seed))[0][:-3])
                if t < 100) for seed in range(30)}
    assert max(ends) >= 14  # without end_before the story reaches further
    with pytest.raises(ValueError, match="cannot end before token 5"):
        assemble(facts, question, answer, hay, 40, np.random.default_rng(0), end_before=5)


def test_haystack_sentences_skip_headings():
    text = " = Title = \n\n The river is long . It flows north .\n = = Part = = \n A third one !\n"
    assert haystack_sentences(text) == ["The river is long .", "It flows north .", "A third one !"]


# ---- the family over a tiny GPT-2 -------------------------------------------------------------------------

HAY_WORDS = [f"w{i}" for i in range(40)]


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    """A tiny GPT-2 with a word-level tokenizer over the story words, and a haystack text dir whose
    splits use disjoint words (so a test can tell where a sample's text came from)."""
    return story_backbone(tmp_path_factory.mktemp("babilong"), tiny_gpt2)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """The same over a tiny Llama (SmolLM2's architecture): the FSDP and LoRA recipes."""
    return story_backbone(tmp_path_factory.mktemp("babilong-llama"), tiny_llama)


def story_backbone(root, build):
    story_words = {w for s in (*babi.MOVES, *babi.TAKES, *babi.DROPS) for w in re.findall(r"\w+", s)}
    story_words |= {*babi.PEOPLE, *babi.PLACES, *babi.OBJECTS, "Where", "is", "was", "the", "before", "Question",
                    "Answer", "one", "word", "with"}
    model_dir = build(root / "model", [".", "?", ":", *sorted(story_words), *HAY_WORDS], split_punctuation=True,
                      n_positions=128)
    hay = root / "hay"
    hay.mkdir()
    rng = random.Random(0)
    for k, split in enumerate(("train", "valid", "test")):
        words = HAY_WORDS[k * 13 : (k + 1) * 13]
        lines = [" ".join(rng.choice(words) for _ in range(rng.randint(4, 12))) + " ." for _ in range(300)]
        (hay / f"{split}.txt").write_text(" = Heading = \n" + "\n".join(lines) + "\n")
    return model_dir, hay


def flags(backbone, tmp_path, *extra):
    model_dir, hay = backbone
    return ["--dataset", "babilong", "--task", "qa1", "--backbone", str(model_dir), "--haystack", str(hay),
            "--n_segments", "3", "--tgt_len", "32", "--num_mem_tokens", "2", "--batch_size", "2", "--max_step", "4",
            "--eval_interval", "2", "--log_interval", "2", "--n_train", "16", "--n_val", "3", "--n_test", "4",
            "--lr", "1e-3", "--device", "cpu", "--work_dir", str(tmp_path / "runs"),
            "--results_csv", str(tmp_path / "res" / "babilong.csv"), *extra]


def family(backbone, tmp_path, *extra):
    args, _ = config.parse_training_args(flags(backbone, tmp_path, *extra))
    fam = BabiLong(args, runtime=type("R", (), {"device": torch.device("cpu"), "autocast": staticmethod(
        lambda: torch.autocast("cpu", enabled=False))})())
    fam.load_data(lambda _: None)
    return fam


def test_samples_are_exact_deterministic_and_their_splits_draw_on_their_own_text(backbone, tmp_path):
    fam = family(backbone, tmp_path)
    tok = fam.tokenizer
    seen = {}
    for split in ("train", "valid", "test"):
        ids, start, answer, story, _ = fam.sample(split, 5)
        assert len(ids) == 96 and tok.decode(ids[start:]).strip() == answer
        assert tok.decode(ids[story:]).split()[0] in babi.PEOPLE  # the first fact: "Mary went to ..."
        again = fam.sample(split, 5).ids
        assert np.array_equal(ids, again) and not np.array_equal(ids, fam.sample(split, 6)[0])
        seen[split] = {w for w in tok.decode(ids).split() if w in HAY_WORDS}
    assert not (seen["train"] & seen["valid"]) and not (seen["valid"] & seen["test"]) and seen["test"]
    long = family(backbone, tmp_path, "--sample_length", "2k")
    ids, start, answer, _, _ = long.sample("test", 0)
    assert len(ids) == 2048 and long.n_segments == 64 and long.name == "babilong-qa1-64x32"
    text = tok.decode(ids[:start])
    assert text.rstrip().endswith("Answer :") and "Where is" in text


def test_the_question_ends_at_the_same_place_whatever_the_answers_length(backbone, tmp_path, monkeypatch):
    """A two-token answer ("hallway" here, as in SmolLM2's tokenizer) must not move the question one
    token earlier: the model would tell that answer apart by the question's position alone."""
    plain = BabiLong.encode
    monkeypatch.setattr(BabiLong, "encode", lambda self, text: np.concatenate([plain(self, text), plain(self, text)])
                        if text == ANSWER.format("hallway") else plain(self, text))
    fam = family(backbone, tmp_path)
    ids, labels, answers, _ = fam.batch("test", range(40))
    assert fam.answer_room == 2 and "hallway" in answers and len(set(answers)) >= 4 and ids.size(1) == 96
    assert set((labels != -100).int().argmax(1).tolist()) == {94}  # where every answer starts
    for row, answer in enumerate(answers):
        assert int((labels[row] != -100).sum()) == (2 if answer == "hallway" else 1)  # the padding is no target
        assert fam.tokenizer.decode(ids[row, :94]).rstrip().endswith("Answer :")


def test_the_loss_covers_the_answer_tokens_only(backbone, tmp_path):
    fam = family(backbone, tmp_path)
    ids, labels, answers, _ = fam.batch("train", [0, 1])
    for row, answer in zip(range(2), answers):
        supervised = (labels[row] != -100).nonzero().flatten()
        assert fam.tokenizer.decode(ids[row, supervised]).strip() == answer and supervised[-1] == ids.size(1) - 1
    model = fam.build_model().eval()
    with torch.no_grad():
        out = model(ids, labels=labels)
        logits = out.logits
    masked = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
    assert out.loss.item() == pytest.approx(masked.item())


def test_training_samples_can_ask_several_questions_each_answer_in_the_loss(backbone, tmp_path):
    """--train_questions K: the story's other questions asked and answered before the scored one,
    in training samples only; the scored answer keeps its place, and the other splits their samples."""
    one = family(backbone, tmp_path, "--n_segments", "4")
    three = family(backbone, tmp_path, "--n_segments", "4", "--train_questions", "3")
    ids, labels, answers, _ = three.batch("train", range(8))
    assert ids.size(1) == 128
    counts = []
    for row in range(8):
        sample, text = three.sample("train", row), three.tokenizer.decode(ids[row])
        assert sample.start == 128 - three.answer_room and sample.targets[-1][0] == sample.start
        story = three.story("train", row)[0]
        asked = re.findall(r"Question : (Where is \w+ \?) Answer : (\w+)", text)
        assert len(asked) == min(3, 1 + len(story.others)) and asked[-1][1] == answers[row] == story.answer
        counts.append(len(asked))
        for (question, answer), (begin, end) in zip(asked, sample.targets):  # each answer a target, nothing else
            assert interpret(story.facts, question.replace(" ?", "?")) == answer
            assert three.tokenizer.decode(ids[row, begin:end]).strip() == answer
        assert int((labels[row] != -100).sum()) == len(asked)  # one token per answer in this vocabulary
    assert max(counts) == 3
    for split in ("valid", "test"):
        for i in range(4):
            assert np.array_equal(one.sample(split, i).ids, three.sample(split, i).ids)



def test_an_answer_ends_with_the_end_token_in_the_loss_and_scoring_stops_there(backbone, tmp_path, monkeypatch):
    """With an end-of-text token, the loss covers it after every answer (a trained model learns to
    stop: otherwise what follows a one-token answer is never trained, "bedroom" runs on into
    "bedroomway"); the question still ends at the same token, and the scored word ends there."""
    plain = babilong_family.load_tokenizer

    def with_end(path):
        tok = plain(path)
        tok.eos_token = "[UNK]"
        return tok
    monkeypatch.setattr(babilong_family, "load_tokenizer", with_end)
    fam = family(backbone, tmp_path, "--n_segments", "4", "--train_questions", "3")
    end = fam.end_id
    assert end == 0 and fam.answer_room == 2  # one-token answers here, then the end
    ids, labels, answers, _ = fam.batch("test", range(10))
    assert set((labels != -100).int().argmax(1).tolist()) == {126}
    for row, answer in enumerate(answers):
        assert labels[row, 126:].tolist() == [ids[row, 126], end] and fam.tokenizer.decode(ids[row, 126:127]) == answer
    train, train_labels, _, _ = fam.batch("train", range(6))
    for row in range(6):
        sample = fam.sample("train", row)
        for begin, stop in sample.targets:  # every answer of a training sample: the word, then the end
            assert stop - begin == 2 and train[row, stop - 1] == end and (train_labels[row, begin:stop] != -100).all()
        assert int((train_labels[row] != -100).sum()) == 2 * len(sample.targets)
    enc = lambda s: fam.tokenizer(s, add_special_tokens=False).input_ids  # noqa: E731
    assert fam.first_word(enc("bedroom") + [end] + enc("kitchen")) == "bedroom"
    assert fam.first_word([end] + enc("kitchen")) == ""

def test_exact_match_takes_the_first_word(backbone, tmp_path):
    fam = family(backbone, tmp_path)
    enc = lambda s: fam.tokenizer(s, add_special_tokens=False).input_ids  # noqa: E731
    assert fam.first_word(enc("kitchen . garden")) == "kitchen"
    assert fam.first_word(enc(": Mary kitchen")) == "mary"  # lower case: never equal to a place
    assert fam.first_word(enc(". ?")) == ""
    assert fam.first_word(enc("the kitchen .")) == "kitchen" and fam.first_word(enc("the")) == ""


def test_reading_a_prefix_then_answering_equals_one_pass(backbone, tmp_path):
    """Evaluation reads the text before the question's segment as memory only: the same numbers."""
    fam = family(backbone, tmp_path, "--sample_length", "200")
    model = fam.build_model().eval()
    ids, labels, _, _ = fam.batch("test", [1])
    start = int((labels[0] != -100).nonzero()[0])
    loss, (new,) = fam.answer_rows(model, ids, labels, [start])
    with torch.no_grad():
        whole = model(ids, labels=labels).loss.item() * (ids.size(1) - start)
        ref, seq = [], ids[:, :start]
        for _ in range(4):
            ref.append(int(model(seq).logits[0, -1].argmax()))
            seq = torch.cat([seq, torch.tensor([[ref[-1]]])], 1)
    assert loss == pytest.approx(whole, rel=1e-5) and new == ref


def test_batched_evaluation_equals_one_sample_at_a_time(backbone, tmp_path):
    one = family(backbone, tmp_path, "--sample_length", "200", "--eval_batch_size", "1", "--n_test", "7")
    many = family(backbone, tmp_path, "--sample_length", "200", "--eval_batch_size", "4", "--n_test", "7")
    model = one.build_model().eval()
    torch.manual_seed(0)
    with torch.no_grad():
        model.memory.normal_()  # memory that differs between slots, so that a row reading another's would show
    a, b = one.evaluate(model, "test"), many.evaluate(model, "test")
    assert a["acc"] == b["acc"] and a["loss"] == pytest.approx(b["loss"], rel=1e-5)


def test_babilong_trains_tests_and_evaluates_at_other_lengths(backbone, tmp_path):
    assert train.main(flags(backbone, tmp_path, "--run_name", "rmt")) == 0
    best = tmp_path / "runs" / "rmt" / "checkpoint_best.pt"
    for extra in (["--n_segments", "6"], ["--sample_length", "1k"], ["--memory_ablation", "reset"],
                  ["--memory_ablation", "shuffle", "--eval_batch_size", "2"]):
        assert train.main(["--dataset", "babilong", "--eval_only", "--eval_checkpoint", str(best), "--work_dir",
                           str(tmp_path / "runs"), *extra]) == 0
    assert train.main(flags(backbone, tmp_path, "--run_name", "last", "--last_segment_only")) == 0
    assert train.main(flags(backbone, tmp_path, "--run_name", "zs", "--eval_only", "--zero_shot",
                            "--num_mem_tokens", "0")) == 0
    rows = pd.read_csv(tmp_path / "res" / "babilong.csv")
    assert list(rows.task) == ["babilong-qa1-3x32", "babilong-qa1-6x32", "babilong-qa1-32x32",
                               "babilong-qa1-3x32-mem_reset", "babilong-qa1-3x32-mem_shuffle", "babilong-qa1-3x32-last",
                               "babilong-qa1-3x32-zeroshot"]
    assert (rows.metric_name == "exact_match").all() and rows.metric_value.between(0, 1).all()
    assert list(rows.n_segments) == [3, 6, 32, 3, 3, 1, 1]
    tested = json.loads((tmp_path / "runs" / "rmt-eval" / "test.json").read_text())["test"]
    assert tested["sample_tokens"] == 96  # the last evaluation of the run wrote its test.json
    points = babilong_points(rows)  # the plot's and compare's view: every point under its training run
    assert set(points.series) == {"rmt (RMT, 2 memory)", "rmt (RMT, 2 memory), memory reset",
                                  "rmt (RMT, 2 memory), memory shuffle", "last (last segment only)",
                                  "bare model, zero-shot"}
    rmt = points[points.series == "rmt (RMT, 2 memory)"]
    assert list(rmt.tokens) == [96, 192, 1024] and (rmt.trained == 96).all()
    assert list(rmt.acc) == list(rows.metric_value[:3])
    section = babilong_section(rows)
    assert "| run (model) | trained | 96 | 192 | 1k |" in section and "| `rmt (RMT, 2 memory)` | 96 |" in section
    assert compare.main(["--results", str(tmp_path / "res"), "--plots", str(tmp_path / "plots")]) == 0
    assert (tmp_path / "plots" / "babilong_qa1.png").stat().st_size > 0


def test_samples_of_other_data_seeds_are_pooled_and_a_repeat_replaces_its_row():
    def row(acc, n, data_seed, date):
        cfg = {"task": "qa1", "sample_tokens": 1048576, "n_test": n, "data_seed": data_seed, "eval_only": True,
               "eval_checkpoint": "runs/s2/checkpoint_best.pt", "num_mem_tokens": 8}
        return {"run_id": "s2-eval", "date": date, "task": "babilong-qa1-8192x128", "split": "test",
                "metric_name": "exact_match", "metric_value": acc, "config_json": json.dumps(cfg)}
    rows = pd.DataFrame([row(0.0, 1, 0, "d1"), row(1.0, 1, 1, "d2"), row(0.5, 2, 2, "d3"), row(1.0, 2, 2, "d4")])
    point = babilong_points(rows).iloc[0]  # seeds 0 and 1 once each, seed 2 measured twice: its last counts
    assert (point.series, point.samples, point.acc) == ("s2 (RMT, 8 memory)", 4, pytest.approx(3 / 4))
    assert "| `s2 (RMT, 8 memory)` | — | 0.75 (4) |" in babilong_section(rows)


def test_resume_continues_bit_for_bit(backbone, tmp_path):
    assert train.main(flags(backbone, tmp_path, "--run_name", "straight", "--no_results")) == 0
    assert train.main(flags(backbone, tmp_path, "--run_name", "cut", "--no_results", "--max_step", "2")) == 0
    assert train.main(flags(backbone, tmp_path, "--no_results", "--restart", "--restart_dir",
                            str(tmp_path / "runs" / "cut"))) == 0
    a, b = (load_file(tmp_path / "runs" / name / "checkpoint_last.pt") for name in ("straight", "cut"))
    assert a["step"] == b["step"] == 4 and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def torchrun(*argv):
    """rmt.train in 2 gloo processes; fails the test with their stderr."""
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "rmt.train", *argv], env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]


# SGD without clipping: a step differs visibly when the gradient does
SENSITIVE = ("--optim", "sgd", "--lr", "0.5", "--clip", "0", "--no_results", "--max_step", "2")


def assert_same_weights(tmp_path, one, two, atol=1e-6):
    a, b = (load_file(tmp_path / "runs" / name / "checkpoint_last.pt")["model"] for name in (one, two))
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=0, msg=name)


def test_ddp_two_processes_match_one_process(backbone, tmp_path):
    """torchrun: each process trains on its shard of every batch (every answer is one token here, so
    the mean of the shards' answer losses is the batch's)."""
    assert train.main(flags(backbone, tmp_path, "--run_name", "one", *SENSITIVE)) == 0
    torchrun(*flags(backbone, tmp_path, "--run_name", "two", *SENSITIVE))
    assert_same_weights(tmp_path, "one", "two")


@pytest.mark.parametrize("recipe", [("--fsdp",), ("--lora", "4"), ("--fsdp", "--lora", "4")])
def test_fsdp_and_lora_over_two_processes_match_one_process(llama, tmp_path, recipe):
    """FSDP2 shards a Llama decoder layer by layer (the root: memory, tied embeddings, norm); LoRA
    trains adapters and memory over DDP or FSDP. Two processes step as one does, and the checkpoint
    is the unsharded state dict."""
    lora = [f for f in recipe if f != "--fsdp"]
    assert train.main(flags(llama, tmp_path, "--run_name", "one", *lora, *SENSITIVE)) == 0
    torchrun(*flags(llama, tmp_path, "--run_name", "two", *recipe, *SENSITIVE))
    assert_same_weights(tmp_path, "one", "two")
    trained = load_file(tmp_path / "runs" / "two" / "checkpoint_last.pt")
    built = family(llama, tmp_path, *lora).build_model().state_dict()
    moved = {k for k in built if not torch.equal(trained["model"][k], built[k])}
    if lora:  # the backbone's own weights stay as loaded; adapters (B starts at 0) and memory move
        assert "memory" in moved and any("lora_B" in k for k in moved) and all("lora_" in k for k in moved - {"memory"})
    else:
        assert len(moved) == len(built)


def test_associative_memory_shards_too(llama, tmp_path):
    """ARMT's hooks and per-layer memories under FSDP2: two processes step as one does."""
    armt = ["--memory", "associative", "--d_mem", "4"]
    assert train.main(flags(llama, tmp_path, "--run_name", "one", *armt, *SENSITIVE)) == 0
    torchrun(*flags(llama, tmp_path, "--run_name", "two", "--fsdp", *armt, *SENSITIVE))
    assert_same_weights(tmp_path, "one", "two")


def test_a_sharded_run_resumes_exactly_and_its_checkpoint_evaluates_in_one_process(llama, tmp_path):
    adam = ["--fsdp", "--no_results", "--max_step", "4"]
    torchrun(*flags(llama, tmp_path, "--run_name", "straight", *adam))
    torchrun(*flags(llama, tmp_path, "--run_name", "cut", *adam[:-1], "2"))
    torchrun(*flags(llama, tmp_path, "--restart", "--restart_dir", str(tmp_path / "runs" / "cut"), *adam))
    a, b = (load_file(tmp_path / "runs" / name / "checkpoint_last.pt") for name in ("straight", "cut"))
    assert a["step"] == b["step"] == 4
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    for k, state in a["optimizer"]["state"].items():  # Adam's moments too, keyed by parameter name
        assert all(torch.equal(v, b["optimizer"]["state"][k][n]) for n, v in state.items()), k
    assert train.main(["--dataset", "babilong", "--eval_only", "--eval_checkpoint",
                       str(tmp_path / "runs" / "straight" / "checkpoint_best.pt"), "--work_dir", str(tmp_path / "runs"),
                       "--results_csv", str(tmp_path / "res.csv")]) == 0
    tested = json.loads((tmp_path / "runs" / "straight" / "test.json").read_text())["test"]
    evaluated = pd.read_csv(tmp_path / "res.csv").iloc[0]
    assert evaluated.exact_match == tested["acc"]  # the run's own test, on all ranks, gave the same


def test_a_curriculum_stage_starts_from_the_shorter_stage(backbone, tmp_path):
    assert train.main(flags(backbone, tmp_path, "--run_name", "one-seg", "--n_segments", "1", "--tgt_len", "96",
                            "--no_results")) == 0
    best = tmp_path / "runs" / "one-seg" / "checkpoint_best.pt"
    assert train.main(flags(backbone, tmp_path, "--run_name", "two-seg", "--n_segments", "2", "--tgt_len", "96",
                            "--init_checkpoint", str(best), "--optim", "sgd", "--lr", "1e-12", "--clip", "0",
                            "--no_results")) == 0
    start, end = load_file(best)["model"], load_file(tmp_path / "runs" / "two-seg" / "checkpoint_last.pt")["model"]
    for name in start:  # a step of lr 1e-12 moves nothing visible: stage 2 began at stage 1's weights
        torch.testing.assert_close(end[name], start[name], atol=1e-8, rtol=0, msg=name)
    assert train.main(["--dataset", "babilong", "--eval_only", "--eval_checkpoint",  # a stage evaluates as any run
                       str(tmp_path / "runs" / "two-seg" / "checkpoint_last.pt"), "--work_dir", str(tmp_path / "runs"),
                       "--n_segments", "4", "--no_results"]) == 0
    # a stage may add --memory_residual: the earlier weights, the new projection from zero
    assert train.main(flags(backbone, tmp_path, "--run_name", "residual", "--n_segments", "2", "--tgt_len", "96",
                            "--init_checkpoint", str(best), "--memory_residual", "--max_step", "1",
                            "--no_results")) == 0
    residual = load_file(tmp_path / "runs" / "residual" / "checkpoint_last.pt")["model"]
    assert "memory_proj.weight" in residual and set(residual) - set(start) == {"memory_proj.weight"}
    # an associative stage may start from it too: the backbone and memory as trained, W_v from zero
    assert train.main(flags(backbone, tmp_path, "--run_name", "assoc", "--n_segments", "2", "--tgt_len", "96",
                            "--init_checkpoint", str(best), "--memory", "associative", "--optim", "sgd", "--lr", "1e-12",
                            "--clip", "0", "--no_results")) == 0
    assoc = load_file(tmp_path / "runs" / "assoc" / "checkpoint_last.pt")["model"]
    for name in start:
        torch.testing.assert_close(assoc[name], start[name], atol=1e-8, rtol=0, msg=name)
    assert set(assoc) - set(start) and all(k.startswith("assoc.") for k in set(assoc) - set(start))
    with pytest.raises(SystemExit, match="does not fit this model"):  # anything else missing is refused
        train.main(flags(backbone, tmp_path, "--run_name", "back", "--n_segments", "2", "--tgt_len", "96",
                         "--init_checkpoint", str(tmp_path / "runs" / "residual" / "checkpoint_last.pt"),
                         "--no_results"))


def test_story_only_samples_are_scored_one_at_a_time(backbone, tmp_path):
    # --sample_length 0: every sample is its story alone, of its own length; batching them crashed
    for task in ("qa1", "qa2"):
        assert train.main(flags(backbone, tmp_path, "--task", task, "--run_name", f"zs-{task}", "--eval_only",
                                "--zero_shot", "--num_mem_tokens", "0", "--sample_length", "0",
                                "--eval_batch_size", "4", "--n_test", "6")) == 0
    rows = pd.read_csv(tmp_path / "res" / "babilong.csv")
    assert list(rows.task) == ["babilong-qa1-0-zeroshot", "babilong-qa2-0-zeroshot"]


@pytest.mark.parametrize("extra, message", [
    (["--task", "qa9"], "invalid choice: 'qa9'"),
    (["--sample_length", "0"], "--sample_length 0 (the story alone) gives samples of unequal lengths"),
    (["--sample_length", "60"], "cannot hold every qa1 story (up to"),
    (["--sample_length", "two"], "--sample_length: a sample length is a number"),
    (["--backbone", "smollm2-nonexistent/x"], "--backbone smollm2-nonexistent/x"),
    (["--zero_shot"], "--zero_shot evaluates the bare backbone"),
    (["--story_in_earlier_segments", "--n_segments", "1"], "--story_in_earlier_segments needs samples of more"),
    (["--story_in_earlier_segments"], "the segments before the question's hold 64 tokens, too few for every"),
    (["--lora", "-1"], "--lora is a LoRA rank"),
    (["--train_questions", "0"], "--train_questions must be positive"),
    (["--train_questions", "4", "--n_segments", "1", "--tgt_len", "96"], "cannot hold every qa1 story (up to"),
    (["--fsdp"], "--fsdp shards over the processes of torchrun"),
    (["--lora", "4", "--freeze_backbone"], "--lora already freezes the backbone's own weights"),
    (["--memory_residual", "--num_mem_tokens", "0"], "--memory_residual maps the written memory tokens"),
    (["--memory_residual", "--memory", "associative"], "does not take --memory_norm or --memory_residual"),
])
def test_bad_flags_are_one_line_errors(backbone, tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit) as e:
        train.main(flags(backbone, tmp_path, *extra))
    assert e.value.code != 0
    err = str(e.value.code) + capsys.readouterr().err
    assert message in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_associative_memory_trains_resumes_exactly_and_evaluates_at_other_lengths(llama, tmp_path):
    """--memory associative (ARMT over the backbone's layers): the family's whole path, rows
    named armt, a cut run resumed equal to a straight one."""
    armt = ["--memory", "associative", "--d_mem", "4"]
    assert train.main(flags(llama, tmp_path, "--run_name", "straight", *armt)) == 0
    assert train.main(flags(llama, tmp_path, "--run_name", "cut", *armt, "--no_results", "--max_step", "2")) == 0
    assert train.main(flags(llama, tmp_path, "--restart", "--restart_dir", str(tmp_path / "runs" / "cut"),
                            "--no_results", *armt)) == 0
    a, b = (load_file(tmp_path / "runs" / name / "checkpoint_last.pt") for name in ("straight", "cut"))
    assert a["step"] == b["step"] == 4 and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert any(k.startswith("assoc.memories.0.") for k in a["model"])
    best = tmp_path / "runs" / "straight" / "checkpoint_best.pt"
    for extra in (["--n_segments", "6"], ["--memory_ablation", "reset"]):
        assert train.main(["--dataset", "babilong", "--eval_only", "--eval_checkpoint", str(best), "--work_dir",
                           str(tmp_path / "runs"), *extra]) == 0
    rows = pd.read_csv(tmp_path / "res" / "babilong.csv")
    assert list(rows.model_kind) == ["armt"] * 3
    assert list(rows.task) == ["babilong-qa1-3x32", "babilong-qa1-6x32", "babilong-qa1-3x32-mem_reset"]
    assert set(babilong_points(rows).series) == {"straight (ARMT, 2 memory)", "straight (ARMT, 2 memory), memory reset"}


def test_the_story_can_be_kept_out_of_the_questions_segment(backbone, tmp_path):
    """--story_in_earlier_segments: every story sentence in a segment before the question's (so
    every answer needs memory), in every split; the task's name says so."""
    fam = family(backbone, tmp_path, "--story_in_earlier_segments", "--n_segments", "4")
    assert fam.name == "babilong-qa1-4x32-earlier"
    anywhere = family(backbone, tmp_path, "--n_segments", "4")
    for split in ("train", "valid", "test"):
        ids, labels, answers, earlier = fam.batch(split, range(12))
        assert all(earlier)
        for row, answer in zip(ids, answers):
            tail = fam.tokenizer.decode(row[96:]).split("Question")[0]
            assert not any(person in tail for person in babi.PEOPLE)
            assert fam.tokenizer.decode(row[-1:]).strip() == answer
    tails = [anywhere.tokenizer.decode(anywhere.sample("test", i)[0][96:]).split("Question")[0] for i in range(12)]
    assert any(any(person in tail for person in babi.PEOPLE) for tail in tails)
    assert train.main(flags(backbone, tmp_path, "--story_in_earlier_segments", "--n_segments", "4", "--run_name", "e",
                            "--max_step", "2")) == 0
    assert json.loads((tmp_path / "runs" / "e" / "test.json").read_text())["test"]["n_needs_memory"] == 4
    rows = pd.read_csv(tmp_path / "res" / "babilong.csv")
    assert list(rows.task) == ["babilong-qa1-4x32-earlier"]
    assert list(babilong_points(rows).series) == ["e (RMT, 2 memory, story in earlier segments)"]


def test_memory_attention_splits_the_questions_attention_between_memory_and_tokens(backbone, tmp_path, capsys):
    """rmt.tools.memory_attention: per layer, the question's last token's attention on the read
    slots and on its segment's tokens, which sum to 1 (it never sees the write slots), at the
    checkpoint's own length or another; a checkpoint of another family is refused."""
    assert train.main(flags(backbone, tmp_path, "--run_name", "m", "--max_step", "1", "--no_results")) == 0
    best = tmp_path / "runs" / "m" / "checkpoint_best.pt"
    for extra in ([], ["--n_segments", "4", "--story_in_earlier_segments"]):
        assert memory_attention.main(["--checkpoint", str(best), "--samples", "3", *extra]) == 0
        table = pd.read_csv(tmp_path / "runs" / "m" / "memory_attention.csv")
        assert list(table.layer) == [0, 1]
        np.testing.assert_allclose(table.read_memory + table.tokens, 1.0, atol=2e-4)  # 4 decimals each
        assert (table.read_memory > 0).all() and (table.largest_slot <= table.read_memory + 1e-4).all()
    assert "babilong-qa1-4x32-earlier, 3 test samples" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="not a checkpoint of a babilong run"):
        memory_attention.main(["--checkpoint", str(tmp_path / "nowhere" / "checkpoint_best.pt")])


def test_a_probe_finds_labels_written_linearly_and_not_in_noise():
    """memory_probe.probe: features that hold the label along one direction give a perfect test
    score; features that hold nothing score about chance (1/6 here)."""
    rng = np.random.default_rng(0)
    y_train, y_test = rng.integers(0, 6, 300), rng.integers(0, 6, 200)
    code = rng.normal(size=(6, 40))
    noisy = lambda y: code[y] + 0.3 * rng.normal(size=(len(y), 40))  # noqa: E731
    acc, _ = memory_probe.probe(noisy(y_train), y_train, noisy(y_test), y_test, 6)
    assert acc == 1.0
    acc, _ = memory_probe.probe(rng.normal(size=(300, 40)), y_train, rng.normal(size=(200, 40)), y_test, 6)
    assert acc < 0.3


def test_memory_probe_reads_the_memory_each_question_reads(backbone, tmp_path, capsys):
    """rmt.tools.memory_probe: the features of a batch are the memory each sample's question
    segment reads alone; one row per person with the test stories that move them; a checkpoint
    of another family is refused."""
    assert train.main(flags(backbone, tmp_path, "--run_name", "p", "--max_step", "1", "--no_results")) == 0
    best = tmp_path / "runs" / "p" / "checkpoint_best.pt"
    extra = ["--n_segments", "4"]
    model, family = memory_attention.load_qa_model(best, 12, [*extra, "--story_in_earlier_segments"])
    x, where = memory_probe.written_memory(model, family, "test", 5, batch=3)
    x = x["read"]
    for i in (0, 4):
        ids, start, _, _, _ = family.sample("test", i)
        alone = model.read(torch.from_numpy(ids[None, : (start - 1) // 32 * 32])).mem.flatten(1).double().numpy()
        np.testing.assert_allclose(x[i], alone[0], atol=1e-5)
        assert where[i] == babi.whereabouts(family.story("test", i)[0].facts)
    # layer 2 is the tiny GPT-2's last: without --memory_norm the state is what that layer wrote
    by_layer, _ = memory_probe.written_memory(model, family, "test", 5, batch=2, layers=[0, 2])
    np.testing.assert_allclose(by_layer["layer 2"], x, atol=1e-5)
    assert memory_probe.main(["--checkpoint", str(best), "--samples", "60", "--test_samples", "12", *extra]) == 0
    table = pd.read_csv(tmp_path / "runs" / "p" / "memory_probe.csv")
    moved = [babi.whereabouts(family.story("test", i)[0].facts) for i in range(12)]
    assert len(table) and set(table.person) <= set(babi.PEOPLE)
    assert all(n == sum(p in w for w in moved) for p, n in zip(table.person, table.test))
    assert table.probe.between(0, 1).all() and table.most_common_place.between(0, 1).all()
    assert (table.features == "read").all()
    assert "babilong-qa1-4x32-earlier: where each person is" in capsys.readouterr().out
    assert memory_probe.main(["--checkpoint", str(best), "--samples", "60", "--test_samples", "12", "--layers", "0",
                              "2", *extra]) == 0
    by_layer = pd.read_csv(tmp_path / "runs" / "p" / "memory_probe.csv")
    assert sorted(set(by_layer.features)) == ["layer 0", "layer 2"] and len(by_layer) == 2 * len(table)
    with pytest.raises(SystemExit, match="--layers must be 0 to 2"):
        memory_probe.main(["--checkpoint", str(best), "--layers", "1", "3", *extra])
    with pytest.raises(SystemExit, match="not a checkpoint of a babilong run"):
        memory_probe.main(["--checkpoint", str(tmp_path / "nowhere" / "checkpoint_best.pt")])


def test_accuracy_is_split_by_whether_the_story_starts_before_the_questions_segment(backbone, tmp_path):
    """The test's groups: samples whose story starts in an earlier segment (where memory may be
    needed) and samples whose story lies in the question's segment; the last-segment baseline
    sees none of an earlier start."""
    n, shape = 20, ["--n_segments", "2", "--tgt_len", "64", "--n_test", "20"]
    fam = family(backbone, tmp_path, *shape)
    _, labels, _, earlier = fam.batch("test", range(n))
    assert any(earlier) and not all(earlier)
    for b in range(n):
        _, start, _, story, _ = fam.sample("test", b)
        assert earlier[b] == (story < (start - 1) // 64 * 64)
    assert train.main(flags(backbone, tmp_path, "--run_name", "g", *shape)) == 0
    groups = pd.read_csv(tmp_path / "res" / "groups" / "babilong.csv")
    assert set(groups.group) == {"starts before the question's segment", "in the question's segment"}
    assert groups.n_samples.sum() == n and groups.acc_greedy.between(0, 1).all()
    tested = json.loads((tmp_path / "runs" / "g" / "test.json").read_text())["test"]
    assert tested["n_needs_memory"] == sum(earlier)
    assert tested["acc"] == pytest.approx((tested["acc_needs_memory"] * sum(earlier)
                                           + tested["acc_in_segment"] * (n - sum(earlier))) / n)
