"""Long-context question answering in the style of BABILong (Kuratov et al., 2024): the facts of a
bAbI story (rmt.tasks.babi) scattered through long natural text, the question at the end, answered
by RMT over a pretrained causal LM: a family of `rmt.train` (the samples: rmt.tasks.babilong).

    python3 -m rmt.train --dataset babilong --task qa1 --backbone smollm2-135m --n_segments 4 --tgt_len 64
    python3 -m rmt.train --dataset babilong --eval_only --eval_checkpoint runs/<run>/checkpoint_best.pt \\
        --n_segments 16                                  # the same model on 4x longer samples
    python3 -m rmt.train --dataset babilong ... --eval_only --sample_length 64k --n_test 50
    python3 -m rmt.train --dataset babilong --task qa1 --backbone smollm2-135m --eval_only --zero_shot \\
        --num_mem_tokens 0                               # the bare model, the whole sample in its context

A sample (BabiLong.sample) is haystack sentences from the text of --haystack (train.txt for the
training samples, valid.txt and test.txt for the others: disjoint text), the story's sentences
inserted in order at seeded sentence boundaries (with --story_in_earlier_segments only in the
segments before the question's, so that every answer needs memory), then " Question: <q>
Answer:" and the answer word, then the tokenizer's end token. Its length in the backbone's
tokens is exact: --sample_length (k = 1024, M = 1024^2; 0 for the story alone), by default
n_segments * tgt_len, the answer included; the haystack is cut to fit and read cyclically when
the split's text is shorter. Samples are built on the fly from (task, length, split,
--data_seed, index): nothing is stored, so a 1M-token sample never is. Every sample's question
ends at the same place (its length less the longest answer's tokens and the end token); a
shorter answer is followed by padding that no loss covers. (Were the answer to end the sample,
a two-token answer would move the question one token earlier, and the model could tell it
apart by the question's position alone.)

Training: the loss covers the answer tokens and the end token after them (so that a trained model
stops after its answer), nothing else. With --train_questions K a training sample asks
up to K - 1 of the story's other questions (other people in qa1, other objects in qa2 and qa3) and
their answers before the scored one: up to K answers a sample for the loss, where one answer token
a sample gives memory little to learn from; validation and test samples stay the same. Evaluation
(--eval_batch_size samples at a time): the sample up to "Answer:" is read segment by segment,
memory only and no logits, until the segment that holds the question; then the answer is generated
greedily, and a sample is right when the first word generated (after an article: "The hallway."
reads hallway; before the end token) is the answer (exact match). The row's metric is that
accuracy (`exact_match`); the loss column is the answer's teacher-forced loss. --memory_ablation
reset|shuffle replaces the memory every segment reads (shuffle: another sample's of the batch).
Baselines: --last_segment_only (the model sees the sample's last segment alone), --num_mem_tokens 0
(segments read independently), and --zero_shot (eval only: the bare backbone with the whole sample
in its context, in its chat template when it has one, within its position limit). Rows go to
experiments/results/babilong.csv.
"""
from __future__ import annotations

import math
import pathlib
import re
import time
from typing import NamedTuple

import numpy as np
import torch

from rmt import REPO_ROOT
from rmt.config import BOOL, FULL_BPTT
from rmt.errors import DataError, FlagError, UsageError
from rmt.families.base import (BackboneFamily, BatchSampler, SampledFamily, add_sample_args, backward_in_chunks,
                               check_sample_args, parameter_counts, run_kind, truncation)
from rmt.families.hf_lm import add_causal_rmt_args, causal_rmt, check_causal_rmt_args
from rmt.results import TestResult
from rmt.tasks.babi import PLACES, STORY_LENGTH, TASKS, Story, every_sentence, make_story
from rmt.tasks.babilong import ANSWER, QUESTION, Haystack, assemble, haystack_sentences, length_label, parse_length
from rmt.tasks.babilong import question_segment
from rmt.training.backbones import load_tokenizer

NAME = "babilong"
SPLITS = ("train", "valid", "test")
INSTRUCTION = " Answer the question with one word."  # --zero_shot: an instruct model is told the format
DEFAULTS = dict(lr=5e-5, scheduler="constant", warmup_step=0, log_interval=10, eval_interval=100, tgt_len=64,
                eval_tgt_len=64, batch_size=4, max_step=500, mem_backprop_depth=FULL_BPTT, num_mem_tokens=8,
                clip=1.0, optim="adam")


def add_args(p) -> None:
    g = p.add_argument_group("babilong (long-context QA over a pretrained Hugging Face causal LM)")
    g.add_argument("--task", choices=TASKS, default="qa1", help="the bAbI task whose stories are hidden")
    g.add_argument("--backbone", default=None, help="transformers causal-LM directory, hub name or known backbone "
                                                    "(smollm2-135m)")
    g.add_argument("--haystack", default=str(REPO_ROOT / "data" / "wikitext-2"),
                   help="directory with train.txt, valid.txt and test.txt: the text the facts hide in")
    g.add_argument("--n_segments", type=int, default=4, help="segments per sample")
    g.add_argument("--sample_length", default=None,
                   help="tokens per sample, answer included (4k, 64k, 1M; 0: the story alone); default "
                        "n_segments x tgt_len")
    g.add_argument("--story_in_earlier_segments", action=BOOL, default=False,
                   help="every story sentence in a segment before the question's, so that every answer needs "
                        "memory (default: anywhere in the sample, as BABILong places them)")
    g.add_argument("--last_segment_only", action=BOOL, default=False,
                   help="the baseline: the model sees the sample's last segment alone")
    g.add_argument("--zero_shot", action=BOOL, default=False,
                   help="with --eval_only: the bare backbone, the whole sample in its context (its chat template)")
    add_causal_rmt_args(g)
    g.add_argument("--answer_tokens", type=int, default=4, help="tokens generated for the answer")
    g.add_argument("--train_questions", type=int, default=1,
                   help="questions per training sample, up to every one its story answers (4 people in qa1): the "
                        "others asked and answered before the scored one, every answer in the loss, a denser "
                        "signal for memory; validation and test samples keep one question")
    add_sample_args(g, 20_000, 100, 200)
    p.set_defaults(**DEFAULTS)


def check_args(args) -> None:
    check_sample_args(args)
    if not args.backbone:
        raise UsageError("--backbone is required: a transformers causal LM (python3 -m rmt.tools.backbones get "
                         "smollm2-135m installs one offline)")
    if args.n_segments <= 0 or args.answer_tokens <= 0 or args.train_questions <= 0:
        raise UsageError("--n_segments, --answer_tokens and --train_questions must be positive")
    try:
        args.sample_tokens = parse_length(args.sample_length) if args.sample_length is not None \
            else args.n_segments * args.tgt_len
    except ValueError as e:
        raise UsageError(f"--sample_length: {e}")
    check_causal_rmt_args(args)
    if args.zero_shot and not (args.eval_only and args.num_mem_tokens == 0 and not args.eval_checkpoint):
        raise UsageError("--zero_shot evaluates the bare backbone: with --eval_only, --num_mem_tokens 0 and no "
                         "--eval_checkpoint")
    if args.zero_shot and args.fsdp:
        raise UsageError("--zero_shot runs the bare backbone in one process: drop --fsdp")
    if args.story_in_earlier_segments and args.sample_tokens <= args.tgt_len:
        raise UsageError("--story_in_earlier_segments needs samples of more than one segment (--n_segments 2 or a "
                         "longer --sample_length)")
    if args.last_segment_only and args.zero_shot:
        raise UsageError("--last_segment_only and --zero_shot are two different baselines: give one")


class Sample(NamedTuple):
    ids: np.ndarray  # the sample's token ids
    start: int  # where the scored answer starts (the same place in every sample of a length)
    answer: str  # the scored answer's word
    story_start: int  # where the story's first sentence starts
    targets: list[tuple[int, int]]  # the answers' token spans the loss covers, the scored one last


class BabiLong(BackboneFamily, SampledFamily):
    """bAbI stories in long text, answered by RMT over a pretrained causal LM (module docstring)."""

    results_csv = REPO_ROOT / "experiments" / "results" / "babilong.csv"
    select_by = "acc"

    def __init__(self, args, runtime):
        self.args, self.runtime = args, runtime
        self.length = args.sample_tokens
        t = args.tgt_len
        segments = max(1, math.ceil(self.length / t))  # of the sample; the model sees the last alone with -last
        self.n_segments = 1 if args.last_segment_only or args.zero_shot else segments  # zero-shot: one pass
        span = f"{segments}x{t}" if self.length == segments * t else length_label(self.length)
        how = "-last" if args.last_segment_only else "-zeroshot" if args.zero_shot else ""
        where = "-earlier" if args.story_in_earlier_segments else ""  # another test: every answer needs memory
        self.name = f"{NAME}-{args.task}-{span}{where}{how}"
        self.run_prefix = f"{self.name}-{run_kind(args)}"
        self.depth = truncation(args)

    def load_data(self, log) -> None:
        a = self.args
        self.tokenizer = load_tokenizer(a.backbone)
        self.haystacks = {}
        for split in SPLITS:
            path = pathlib.Path(a.haystack) / f"{split}.txt"
            try:
                sentences = haystack_sentences(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError) as e:
                raise DataError(f"cannot read the haystack text {path} ({type(e).__name__}); --haystack needs "
                                 "train.txt, valid.txt and test.txt (bash getdata.sh wt2, or your own text)") from None
            if not sentences:
                raise DataError(f"{path} holds no sentence for the haystack")
            ids = self.tokenizer([" " + s for s in sentences], add_special_tokens=False).input_ids
            self.haystacks[split] = Haystack([np.array(s, dtype=np.int64) for s in ids if s])
        self.sampler = BatchSampler(a.n_train, a.batch_size, a.seed)
        tok = self.tokenizer
        self.end_id = tok.eos_token_id  # after each answer, in the loss: a trained model stops there
        self.pad_id = next((i for i in (tok.pad_token_id, tok.eos_token_id) if i is not None), 0)
        self.answer_room = self.longest_answer()
        longest = self.longest_story()
        if self.length and self.length < longest:  # refused before a run directory exists
            raise FlagError(f"samples of {self.length} tokens cannot hold every {a.task} story (up to "
                             f"{longest} tokens with the questions and answers): give a longer --sample_length or "
                             "more segments")
        if not self.length and not a.eval_only and a.batch_size > 1:
            raise FlagError("--sample_length 0 (the story alone) gives samples of unequal lengths, which do not "
                             "batch: train with --batch_size 1, or give a --sample_length")
        room = question_segment(self.length - self.answer_room, a.tgt_len)
        if a.story_in_earlier_segments and room < longest:
            raise FlagError(f"--story_in_earlier_segments: the segments before the question's hold {room} tokens, "
                             f"too few for every {a.task} story (up to {longest}): give longer samples")
        log(f"{NAME}: {a.task} stories in the text of {a.haystack} (train/valid/test.txt), samples of "
            f"{self.length:,} tokens of the tokenizer of {a.backbone}")

    def longest_story(self) -> int:
        """Tokens of the longest story the task can draw, with its questions and answers."""
        facts, questions = every_sentence(self.args.task)
        longest = lambda texts: max(len(self.encode(t)) for t in texts)  # noqa: E731
        asked = 1 if self.args.eval_only else self.args.train_questions
        return (STORY_LENGTH[self.args.task][1] * longest([" " + f for f in facts])
                + asked * (longest([QUESTION.format(q) for q in questions]) + self.longest_answer()))

    def longest_answer(self) -> int:
        return max(len(self.told(p)) for p in PLACES)

    def told(self, answer: str) -> np.ndarray:
        """An answer's tokens as the loss covers them: the word, then the tokenizer's end token (if any)."""
        end = [] if self.end_id is None else [self.end_id]
        return np.concatenate([self.encode(ANSWER.format(answer)), np.array(end, dtype=np.int64)])

    def encode(self, text: str) -> np.ndarray:
        return np.array(self.tokenizer(text, add_special_tokens=False).input_ids, dtype=np.int64)

    def story(self, split: str, index: int) -> tuple[Story, np.random.Generator]:
        """The story of sample `index` of `split`, and the generator that goes on to place it."""
        a = self.args
        rng = np.random.default_rng([a.data_seed, SPLITS.index(split), TASKS.index(a.task), self.length, index])
        return make_story(a.task, rng), rng

    def sample(self, split: str, index: int) -> Sample:
        """Sample `index` of `split`. Its scored answer starts at the same place in every sample of
        a length: the answer's tokens, then padding up to the longest answer's. A training sample
        with --train_questions K asks up to K - 1 of the story's other questions first (a seeded
        choice and order), each answer padded alike."""
        a = self.args
        story, rng = self.story(split, index)
        facts = [self.encode(" " + f) for f in story.facts]
        asked = [(story.question, story.answer)]
        if split == "train" and a.train_questions > 1:
            others = rng.permutation(len(story.others))[: a.train_questions - 1]
            asked = [story.others[i] for i in others] + asked
        pieces, targets, at = [], [], 0
        for question, answer in asked:
            pieces.append(self.encode(QUESTION.format(question)))
            told = self.told(answer)
            at += len(pieces[-1])
            targets.append((at, at + len(told)))
            pieces.append(np.concatenate([told, np.full(self.answer_room - len(told), self.pad_id, dtype=np.int64)]))
            at += self.answer_room
        end_before = question_segment(self.length - self.answer_room, a.tgt_len) if a.story_in_earlier_segments \
            else None
        ids, first = assemble(facts, np.concatenate(pieces[:-1]), pieces[-1], self.haystacks[split], self.length,
                              rng, end_before)
        shift = len(ids) - at  # where the questions start
        return Sample(ids, len(ids) - self.answer_room, story.answer, first,
                      [(shift + begin, shift + end) for begin, end in targets])

    def batch(self, split: str, indices) -> tuple[torch.Tensor, torch.Tensor, list[str], list[bool]]:
        """Samples of equal length stacked: ids (B, L), labels (-100 but on the answer), answers, and
        whether each story starts before the segment of its question (so answering may need memory)."""
        samples = [self.sample(split, int(i)) for i in indices]
        ids = torch.from_numpy(np.stack([s.ids for s in samples]))
        labels = torch.full_like(ids, -100)
        for row, s in enumerate(samples):
            for begin, end in s.targets:  # the padding after each answer is no target
                labels[row, begin:end] = ids[row, begin:end]
        t = self.args.tgt_len
        earlier = [s.story_start < question_segment(s.start, t) for s in samples]
        if self.args.last_segment_only:
            ids, labels = ids[:, -t:], labels[:, -t:]
        return ids, labels, [s.answer for s in samples], earlier

    def build_model(self, checkpoint_state: dict | None = None):
        return causal_rmt(self.args, self.depth, checkpoint_state)

    def config_extras(self) -> dict:
        return {"task": self.name, "n_segments": self.n_segments, "sample_tokens": self.length,
                "backbone": self.args.backbone}

    def describe(self, model) -> str:
        a = self.args
        return (f"{self.name}: {a.task} in samples of {self.length:,} tokens, segments of {a.tgt_len}, "
                f"{a.num_mem_tokens} memory tokens; {parameter_counts(model)}; backbone {a.backbone}")

    # ---- the Family protocol (rmt.families.base) --------------------------------------------

    def train_batch(self, model, step: int) -> dict:
        args, runtime = self.args, self.runtime
        ids, labels, _, _ = self.batch("train", self.sampler.next_shard(runtime.rank, runtime.world))
        ids, labels = ids.to(runtime.device), labels.to(runtime.device)
        loss = lambda x, y: model(x, labels=y, labelled_logits_only=True).loss  # noqa: E731
        total = backward_in_chunks(runtime, args.batch_chunk, loss, ids, labels)
        return {"loss": total, "tokens": ids.numel()}

    def answer_rows(self, model, ids: torch.Tensor, labels: torch.Tensor,
                    starts: list[int]) -> tuple[float, list[list[int]]]:
        """Samples (B, L) whose questions end in the same segment, answers from starts[b] on (their
        tokens labelled in labels): the answers' teacher-forced NLL summed over their tokens, and
        each row's greedy answer tokens."""
        if self.args.zero_shot:
            return math.nan, [self._zero_shot(model.backbone, ids[b : b + 1], s) for b, s in enumerate(starts)]
        t = self.args.tgt_len
        cut = question_segment(starts[0], t)
        ablate = getattr(model, "ablate", None)  # a MemoryAblation (rmt.model.ablation) around the model
        width = max(starts) - cut
        prompt_mask = torch.arange(width, device=ids.device) < torch.tensor(starts, device=ids.device)[:, None] - cut
        with self.runtime.autocast():
            state = model.read(ids[:, :cut], read_memory=ablate) if cut else None
            out = model(ids[:, cut:], labels=labels[:, cut:], memory=state, labelled_logits_only=True)
            new = model.generate(ids[:, cut : cut + width], attention_mask=prompt_mask.long(),
                                 memory=ablate(state) if ablate else state, max_new_tokens=self.args.answer_tokens,
                                 eos_token_id=None)[:, width:]
        return out.loss.item() * int((labels != -100).sum()), new.tolist()

    def _zero_shot(self, backbone, ids: torch.Tensor, start: int) -> list[int]:
        """The bare backbone, the sample's text up to the question in its chat template (when it has one)."""
        text = self.tokenizer.decode(ids[0, :start]) + INSTRUCTION
        if self.tokenizer.chat_template:
            prompt = self.tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                        return_dict=True)["input_ids"]
        else:
            prompt = self.tokenizer(text, add_special_tokens=False).input_ids
        limit = getattr(backbone.config, "max_position_embeddings", None)
        if limit and len(prompt) + self.args.answer_tokens > limit:
            raise FlagError(f"--zero_shot: a prompt of {len(prompt):,} tokens does not fit the context of "
                             f"{limit:,} positions of --backbone {self.args.backbone}; give a shorter --sample_length")
        x = torch.tensor([prompt], device=ids.device)
        new = backbone.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=self.args.answer_tokens,
                                do_sample=False, pad_token_id=self.tokenizer.eos_token_id)[0, x.size(1):]
        return new.tolist()

    def first_word(self, tokens: list[int]) -> str:
        """The first word of a generated answer, lower case, after any article ("The hallway." -> hallway),
        before the end token (what a model says after it is not its answer)."""
        if self.end_id in tokens:
            tokens = tokens[: tokens.index(self.end_id)]
        words = [w.lower() for w in re.findall(r"[A-Za-z]+", self.tokenizer.decode(tokens, skip_special_tokens=True))]
        if words[:1] in (["the"], ["a"], ["an"]):
            words = words[1:]
        return words[0] if words else ""

    @torch.no_grad()
    def evaluate(self, model, split: str) -> dict:
        """Exact match of the first generated word, and the answer's teacher-forced loss per token;
        --eval_batch_size samples at a time (grouped by the segment their question ends in). Also
        the exact match of the samples whose story starts before the question's segment (memory
        may be needed: acc_needs_memory) and of those whose story lies in it (acc_in_segment)."""
        model.eval()
        n = {"valid": self.args.n_val, "test": self.args.n_test}[split]
        bsz, t = self.args.eval_batch_size or self.args.batch_size, self.args.tgt_len
        bsz = bsz if self.length else 1  # story-only samples differ in length: one at a time
        nll, n_tokens = 0.0, 0
        right = {True: 0, False: 0}  # by "the story starts before the question's segment"
        count = {True: 0, False: 0}
        for first in range(0, n, bsz):
            ids, labels, answers, earlier = self.batch(split, range(first, min(n, first + bsz)))
            starts = (labels != -100).int().argmax(1).tolist()
            groups: dict[int, list[int]] = {}
            for b, start in enumerate(starts):
                groups.setdefault(question_segment(start, t), []).append(b)
                count[earlier[b]] += 1
            for rows in groups.values():
                device = self.runtime.device
                loss, new = self.answer_rows(model, ids[rows].to(device), labels[rows].to(device),
                                             [starts[b] for b in rows])
                for tokens, b in zip(new, rows):
                    right[earlier[b]] += self.first_word(tokens) == answers[b]
                nll, n_tokens = nll + loss, n_tokens + int((labels[rows] != -100).sum())
        share = lambda k: right[k] / count[k] if count[k] else math.nan  # noqa: E731
        return {"loss": nll / n_tokens, "acc": (right[True] + right[False]) / n, "acc_needs_memory": share(True),
                "acc_in_segment": share(False), "n_needs_memory": count[True]}

    def test(self, model) -> TestResult:
        """Exact match on --n_test samples; the row's tokens_per_s is the test's own reading speed
        (every sample's tokens over the test's time: reading, answering, scoring)."""
        start = time.perf_counter()
        m = self.evaluate(model, "test")
        seconds, n = time.perf_counter() - start, self.args.n_test
        read = n * self.length if self.length else sum(len(self.sample("test", i).ids) for i in range(n))
        speed = read / seconds
        row = {"metric_name": "exact_match", "metric_value": m["acc"], "loss": m["loss"], "exact_match": m["acc"],
               "tokens_per_s": speed}
        n_memory = m["n_needs_memory"]
        groups = [{"group_name": "story", "group": group, "n_samples": size, "acc_greedy": acc}
                  for group, size, acc in (("starts before the question's segment", n_memory, m["acc_needs_memory"]),
                                           ("in the question's segment", self.args.n_test - n_memory,
                                            m["acc_in_segment"])) if size]
        return TestResult({**m, "samples": self.args.n_test, "sample_tokens": self.length,
                           "s_per_1k_tokens": 1000 / speed}, row, groups)
