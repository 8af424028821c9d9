"""Algorithmic tasks on a segment-recurrent model: segmentation, answer loss and the three metrics.

A sample (B, T) is cut into segments of exactly `tgt_len` tokens; the last one is padded at
the end (the original's torch.chunk silently changed segment sizes instead). Padding after the
answer cannot influence it: attention is causal and memory only flows forward.

Metrics, over the last `answer_size` target positions:
- acc_tf: teacher-forced per-token accuracy (the ground-truth prefix is fed everywhere);
- acc_greedy: greedy autoregressive per-token accuracy: from the first answer position on,
  every input is the model's own previous prediction, across segment boundaries too;
- exact_match: fraction of samples whose whole greedy answer is right.
Positions whose target is padding are not counted when `ignore_pad` (quadratic equations).
With a task's `group_of` (retrieval: the queried pair), acc_tf and acc_greedy are also given per group.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from rmt.model.recurrence import MemoryState, run_segments

PAD = 0


def pad_to_segments(t: torch.Tensor, tgt_len: int) -> torch.Tensor:
    """(B, T) -> (B, n * tgt_len) padded at the end with PAD."""
    n = math.ceil(t.size(1) / tgt_len)
    return F.pad(t, (0, n * tgt_len - t.size(1)), value=PAD)


def segments(t: torch.Tensor, tgt_len: int) -> list[torch.Tensor]:
    """(B, T) -> list of (B, tgt_len) segments, the last padded."""
    return list(pad_to_segments(t, tgt_len).split(tgt_len, dim=1))


def scored_mask(tgt: torch.Tensor, answer_size: int, ignore_pad: bool) -> torch.Tensor:
    """(B, T) bool: the answer positions that count for loss-free metrics."""
    mask = torch.zeros_like(tgt, dtype=torch.bool)
    mask[:, -answer_size:] = True
    return mask & (tgt != PAD) if ignore_pad else mask


def answer_loss(model, src, tgt, answer_size: int, tgt_len: int, depth: int | None,
                recompute: bool = False) -> torch.Tensor:
    """Mean NLL over the last answer_size targets; memory and cache start fresh for every sample."""
    nlls, _ = run_segments(model, segments(src, tgt_len), segments(tgt, tgt_len), MemoryState(), depth, recompute)
    nll = torch.cat(nlls, dim=1)[:, : src.size(1)]  # (B, T), padding dropped
    return nll[:, -answer_size:].float().mean()


@torch.no_grad()
def teacher_forced(model, src, tgt, answer_size: int, tgt_len: int):
    """Returns (answer loss summed over samples, argmax predictions (B, T))."""
    state, preds, nlls = MemoryState(), [], []
    for x, y in zip(segments(src, tgt_len), segments(tgt, tgt_len)):
        hidden, state = model.encode(x, state)
        nlls.append(model.nll(hidden, y))
        preds.append(model.log_probs(hidden).argmax(-1))
    t = src.size(1)
    nll = torch.cat(nlls, dim=1)[:, :t]
    return nll[:, -answer_size:].float().mean(1).sum().item(), torch.cat(preds, dim=1)[:, :t]


@torch.no_grad()
def greedy(model, src, answer_size: int, tgt_len: int) -> torch.Tensor:
    """Greedy predictions (B, T) with no ground truth fed inside the answer (-1 before it)."""
    b, t = src.shape
    start = t - answer_size  # first answer target; its input src[start] is the last question token
    x = pad_to_segments(src, tgt_len).clone()
    preds = torch.full((b, t), -1, dtype=torch.long, device=src.device)
    state = MemoryState()
    for lo in range(0, x.size(1), tgt_len):
        hi = lo + tgt_len
        if hi <= start:  # the question only: its inputs are legitimately known
            _, state = model.encode(x[:, lo:hi], state)
            continue
        new_state = state
        for p in range(max(start, lo), min(hi, t)):
            # Attention is causal, so positions after p (not generated yet) cannot affect p.
            hidden, new_state = model.encode(x[:, lo:hi], state)
            preds[:, p] = model.log_probs(hidden[:, p - lo : p - lo + 1]).argmax(-1)[:, 0]
            if p + 1 < x.size(1):
                x[:, p + 1] = preds[:, p]
        if p + 1 < hi:  # the memory must be written from the fully generated segment
            hidden, new_state = model.encode(x[:, lo:hi], state)
        state = new_state
    return preds


class TaskMetrics(NamedTuple):
    loss: float
    acc_tf: float
    acc_greedy: float
    exact_match: float
    answer_acc: float  # quadratic equations: every character of the final answer slot right (greedy); else = exact_match
    n_samples: int
    by_group: dict = {}  # group -> {"n": samples, "acc_tf": .., "acc_greedy": ..} when a group_of is given


def evaluate_batches(model, batches, answer_size: int, tgt_len: int, ignore_pad: bool, with_greedy: bool = True,
                     answer_slot: int = 0, group_of=None) -> TaskMetrics:
    """Aggregate the metrics over an iterable of (src, tgt) batches (per group too, with `group_of`)."""
    loss = tf_hits = gr_hits = exact = answer_ok = counted = n = 0
    per_sample = []  # with group_of: (group, tf hits, greedy hits, scored positions) of every sample
    for src, tgt in batches:
        batch_loss, tf_pred = teacher_forced(model, src, tgt, answer_size, tgt_len)
        mask = scored_mask(tgt, answer_size, ignore_pad)
        loss += batch_loss
        tf_right = tf_pred.eq(tgt) & mask
        tf_hits += tf_right.sum().item()
        counted += mask.sum().item()
        n += src.size(0)
        if with_greedy:
            gr = greedy(model, src, answer_size, tgt_len)
            right = gr.eq(tgt)
            gr_hits += (right & mask).sum().item()
            exact += right[:, -answer_size:].all(1).sum().item()
            # The answer slot's characters are the targets of the slot's inputs, one position earlier:
            # the original checked the slot's own target positions, which leave out the first answer
            # character (teacher-forced there, generated here), so '8,11' passed for '9,11'.
            span = min(answer_slot + 1, answer_size) if answer_slot else answer_size
            answer_ok += right[:, -span:].all(1).sum().item()
        if group_of is not None:
            gr_right = (right & mask).sum(1) if with_greedy else torch.zeros_like(mask.sum(1))
            per_sample.append(torch.stack([group_of(src), tf_right.sum(1), gr_right, mask.sum(1)], 1))
    nan = float("nan")
    by_group = {}
    if per_sample:
        group, tf_g, gr_g, scored = torch.cat(per_sample).T
        for g in group.unique().tolist():
            rows = group == g
            c = max(scored[rows].sum().item(), 1)
            by_group[g] = {"n": rows.sum().item(), "acc_tf": tf_g[rows].sum().item() / c,
                           "acc_greedy": gr_g[rows].sum().item() / c if with_greedy else nan}
    return TaskMetrics(
        loss=loss / max(n, 1), acc_tf=tf_hits / max(counted, 1),
        acc_greedy=gr_hits / max(counted, 1) if with_greedy else nan,
        exact_match=exact / max(n, 1) if with_greedy else nan,
        answer_acc=answer_ok / max(n, 1) if with_greedy else nan, n_samples=n, by_group=by_group,
    )
