"""Language-model pieces shared by `rmt.train` and `rmt.evaluate`: where the corpora live, the
adaptive-softmax settings, and THE evaluation loop.

Evaluation follows the original `evaluate`: a fresh pass over the split from
position 0 in B parallel rows of `tgt_len` tokens; memory starts from the learned initial
memory once and is carried (with the XL cache) across the whole split, never reset (unless the
run was trained with --reset_memory_every N: then afresh every N segments, as it trained). The loss
is the token-weighted mean NLL in nats; ppl = exp(loss), and for the byte/character corpora
(enwik8, text8) bpc = loss / ln 2, bits per character.
"""
from __future__ import annotations

import contextlib
import math
import pathlib

import torch

from rmt import REPO_ROOT
from rmt.errors import DataError
from rmt.lm.corpus import Corpus, get_lm_corpus
from rmt.lm.prepare import read_meta
from rmt.model.recurrence import MemoryState

DATA_DIRS = {"wt103": "wikitext-103", "wt2": "wikitext-2", "ptb": "penn", "enwik8": "enwik8", "text8": "text8",
             "lm1b": "one-billion-words"}  # getdata.sh layout under data/
BPC_DATASETS = ("enwik8", "text8")
# Adaptive input/softmax cluster boundaries (TXL): (cutoffs, tie the tail projections?)
ADAPTIVE = {"wt103": ([20000, 40000, 200000], True), "wt2": ([20000, 40000, 200000], True),
            "lm1b": ([60000, 100000, 640000], False)}


def default_data_dir(dataset: str) -> pathlib.Path:
    return REPO_ROOT / "data" / DATA_DIRS[dataset]


def load_corpus(data_dir, dataset: str) -> Corpus:
    """get_lm_corpus, with a missing or malformed directory turned into one line and exit 1."""
    corpus_name(data_dir, dataset)  # a corpus of the other level fails here, before any encoding
    try:
        return get_lm_corpus(data_dir, dataset)
    except (FileNotFoundError, ValueError) as e:
        raise DataError(f"{e}")


def corpus_name(data_dir, dataset: str) -> str:
    """The name results rows give the corpus: the one `prepare text` recorded, else the dataset's.

    A corpus of your own read as a paper dataset (enwik8 format, say) is not that dataset: its
    rows must never be matched to the paper's enwik8 rows, so they carry their own name."""
    meta = read_meta(data_dir)
    if meta.get("dataset") and meta["dataset"] != dataset:
        raise DataError(f"{data_dir} is a {meta.get('level')}-level corpus; train or evaluate it with "
                         f"--dataset {meta['dataset']}, not {dataset}")
    return str(meta.get("name") or dataset)


def adaptive_softmax(dataset: str, n_token: int, cutoffs=None) -> tuple[list[int], list[bool]]:
    """(cutoffs, tie_projs) of the original for `dataset`, cutoffs clipped to the vocabulary.

    wt103/wt2 tie the tail-cluster projections of input and output, lm1b does not; the head
    cluster's projection is never tied (the original's tie_projs = [False] + ...).
    """
    if dataset not in ADAPTIVE:
        raise ValueError(f"--adaptive is for the word-level corpora {sorted(ADAPTIVE)}, not {dataset}")
    base, tie = ADAPTIVE[dataset]
    cutoffs = [c for c in (base if cutoffs is None else cutoffs) if c < n_token]
    return cutoffs, [False] + [tie] * len(cutoffs)


def metric_name(dataset: str) -> str:
    return "bpc" if dataset in BPC_DATASETS else "ppl"


def lm_metrics(loss: float, dataset: str) -> dict:
    """{"loss": nats per token, and "bpc" (enwik8/text8) or "ppl"}."""
    if metric_name(dataset) == "bpc":
        return {"loss": loss, "bpc": loss / math.log(2)}
    return {"loss": loss, "ppl": math.exp(loss) if loss < 700 else math.inf}


@contextlib.contextmanager
def eval_lengths(model, tgt_len: int, eval_tgt_len: int):
    """The original reset_length for evaluation: with an XL cache, mem_len + tgt_len - eval_tgt_len
    so the cache spans the training context; restored afterwards. (Without a cache the original
    changed ext_len instead, which had no effect; we leave it.)"""
    cfg = model.config
    saved = cfg.tgt_len, cfg.ext_len, cfg.mem_len
    if cfg.mem_len > 0:
        model.reset_length(eval_tgt_len, cfg.ext_len, max(1, cfg.mem_len + tgt_len - eval_tgt_len))
    try:
        yield
    finally:
        model.reset_length(*saved)


@torch.no_grad()
def nll_sum(model, batches, max_steps: int = -1, autocast=contextlib.nullcontext,
            reset_every: int = 0) -> tuple[float, int, int, list]:
    """Summed NLL (nats) and token count over `batches` (x, y), memory carried throughout, or
    started afresh every `reset_every` segments when that is positive (as the run trained).

    Returns (nll sum, tokens, segments, mean NLL by position in the segment); max_steps >= 0
    caps the number of batches. The last list shows where in a segment the loss is: with too
    little memory the first positions, which see no earlier context, are the expensive ones."""
    was_training = model.training
    model.eval()
    state = MemoryState()  # learned initial memory once per pass, then carried, never reset
    total = torch.zeros((), dtype=torch.float64)
    by_pos, count = torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64)
    n_tokens = n_segments = 0
    for i, (x, y) in enumerate(batches):
        if 0 <= max_steps <= i:
            break
        if reset_every > 0 and i % reset_every == 0:
            state = MemoryState()
        with autocast():
            nll, state = model(x, y, state)
        per_pos = nll.double().sum(0)
        total = total.to(nll.device) + per_pos.sum()
        if len(by_pos) < len(per_pos):  # the first batch, or one longer than all before
            by_pos, count = (torch.cat([t.to(nll.device), t.new_zeros(len(per_pos) - len(t)).to(nll.device)])
                             for t in (by_pos, count))
        by_pos[:len(per_pos)] += per_pos
        count[:len(per_pos)] += y.size(0)
        n_tokens += y.numel()
        n_segments += 1
    model.train(was_training)
    return float(total), n_tokens, n_segments, (by_pos / count.clamp(min=1)).tolist()


def evaluate_split(model, corpus: Corpus, split: str, batch_size: int, tgt_len: int, ext_len: int = 0,
                   max_steps: int = -1, runtime=None, shard: bool = False, reset_every: int = 0) -> dict:
    """Evaluate one split of `corpus`: {"loss", "ppl" | "bpc", "tokens", "segments", "by_position"}
    (by_position: mean NLL in nats at each position of a segment, on this process's rows).

    With `shard` and several ranks, each rank takes its rows of the same B-row layout and the
    sums are all-reduced, so the result equals one process evaluating every row."""
    device = runtime.device if runtime is not None else next(model.parameters()).device
    world = runtime.world if runtime is not None else 1
    shard = shard and world > 1 and corpus.dataset != "lm1b" and batch_size % world == 0
    rank, world = (runtime.rank, world) if shard else (0, 1)
    it = corpus.get_iterator(split, batch_size, tgt_len, ext_len, rank=rank, world_size=world)
    batches = ((x.to(device), y.to(device)) for x, y in it)
    autocast = runtime.autocast if runtime is not None else contextlib.nullcontext
    total, n_tokens, n_segments, by_position = nll_sum(model, batches, max_steps, autocast, reset_every)
    if shard:  # means over ranks: their ratio is the token-weighted mean of all rows
        sums = runtime.all_reduce_mean(torch.tensor([total, n_tokens], dtype=torch.float64, device=device))
        total, n_tokens = float(sums[0]) * world, int(round(float(sums[1]) * world))
    if n_tokens == 0:
        raise ValueError(f"the {split} split gave no batches of {batch_size} rows")
    return {**lm_metrics(total / n_tokens, corpus.dataset), "tokens": n_tokens, "segments": n_segments,
            "by_position": by_position}
