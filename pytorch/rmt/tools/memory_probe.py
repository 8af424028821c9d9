"""Does the written memory hold the facts? A linear probe on the state that a long-context QA
model's question segment reads.

    python3 -m rmt.tools.memory_probe --checkpoint runs/<run>/checkpoint_best.pt [--samples 512 --test_samples 128]

Memory fails to carry a fact in one of two ways: the write never puts it there, or the question's
segment never reads it. rmt.tools.memory_attention shows the reading; this tool shows the
writing. Samples of a babilong checkpoint, every story in the segments before the question's
(--story_in_earlier_segments is implied; --n_segments and the other sample flags may be given
again), are read as evaluation reads them, up to the question's segment; the memory that segment
reads, all slots flattened, is the feature (with --layers L ...: what the write slots hold after
backbone layer L, in the segment before the question's, to find where a fact could be written).
For each person, a multinomial logistic regression (standardised features, L2 chosen on a fifth
of the train samples held out) learns from train samples where that person is at the end of the
story, and is scored on test samples. Beside it, what reading nothing scores: the test share of
the train samples' most common place. A probe far above that means the place is written, whether
or not the question reads it. Printed and written to <run dir>/memory_probe.csv (--out to choose).
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np
import pandas as pd
import torch

from rmt.atomic import atomic_write
from rmt.errors import UsageError, exits_on_error
from rmt.tasks.babi import PEOPLE, PLACES, whereabouts
from rmt.tasks.babilong import question_segment
from rmt.tools.memory_attention import load_qa_model

PENALTIES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # L2 weights tried, per feature and sample


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rmt.tools.memory_probe", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a babilong run's checkpoint, its config.json beside it")
    p.add_argument("--samples", type=int, default=512, help="train samples 0..N-1 the probes learn from")
    p.add_argument("--test_samples", type=int, default=128, help="test samples 0..N-1 the probes are scored on")
    p.add_argument("--batch", type=int, default=16, help="samples read at once")
    p.add_argument("--layers", type=int, nargs="+", default=None,
                   help="probe the write slots' states after these backbone layers (0: the embeddings) instead")
    p.add_argument("--out", default=None, help="the CSV (default: <run dir>/memory_probe.csv)")
    return p


@torch.no_grad()
def written_memory(model, family, split: str, n: int, batch: int,
                   layers: list[int] | None = None) -> tuple[dict[str, np.ndarray], list[dict[str, str]]]:
    """Features of samples 0..n-1, each (n, slots x width) float64, by source: "read", the memory
    the question's segment reads; or with layers, "layer L" for each, the write slots' states after
    backbone layer L (0: the embeddings) in the segment before the question's. And where each
    person is at the end of each story."""
    m, t = model.config.num_mem_tokens, family.args.tgt_len
    features, places = {}, []
    for lo in range(0, n, batch):
        samples = [family.sample(split, i) for i in range(lo, min(n, lo + batch))]
        cut = question_segment(samples[0].start, t)  # the same for every sample of a length
        ids = torch.from_numpy(np.stack([s.ids[:cut] for s in samples]))
        if not layers:
            found = {"read": model.read(ids).mem}
        else:
            state = model.read(ids[:, : cut - t]) if cut > t else None
            seg = ids[:, cut - t :]
            read = model.initial_memory(len(seg)) if state is None else state.mem
            out = model.call_backbone(*model.laid_out(model.embed(seg), torch.ones_like(seg), read), logits_to_keep=1)
            found = {f"layer {k}": out.hidden_states[k][:, m + t :] for k in layers}
        for source, mem in found.items():
            features.setdefault(source, []).append(mem.flatten(1).double().numpy())
        places += [whereabouts(family.story(split, i)[0].facts) for i in range(lo, min(n, lo + batch))]
    return {source: np.concatenate(f) for source, f in features.items()}, places


def _with_bias(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)


def _fit(x: torch.Tensor, y: torch.Tensor, classes: int, penalty: float) -> torch.Tensor:
    """Weights (features + 1, classes) of an L2-penalised softmax regression, by L-BFGS."""
    xb = _with_bias(x)
    w = torch.zeros(xb.size(1), classes, dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xb @ w, y) + penalty * w[:-1].pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach()


def _predict(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return (_with_bias(x) @ w).argmax(1)


def probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
          classes: int) -> tuple[float, float]:
    """Test accuracy of a softmax probe from features to labels 0..classes-1 (its L2 weight chosen
    on the last fifth of the train rows, then refitted on them all), and the penalty chosen."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-8  # standardised on the train rows alone
    tx, ty = torch.from_numpy((train_x - mean) / std), torch.from_numpy(train_y)
    split = len(tx) * 4 // 5
    scores = [(_predict(_fit(tx[:split], ty[:split], classes, lam), tx[split:]) == ty[split:]).double().mean().item()
              for lam in PENALTIES]
    best = PENALTIES[int(np.argmax(scores))]
    w = _fit(tx, ty, classes, best)
    hits = _predict(w, torch.from_numpy((test_x - mean) / std)) == torch.from_numpy(test_y)
    return hits.double().mean().item(), best


def memory_probe(model, family, n_train: int, n_test: int, batch: int, layers: list[int] | None = None) -> pd.DataFrame:
    """One row per source of features and person: test samples, the probe's accuracy, the most
    common place's share."""
    train_x, train_where = written_memory(model, family, "train", n_train, batch, layers)
    test_x, test_where = written_memory(model, family, "test", n_test, batch, layers)
    rows = []
    for person in PEOPLE:
        pick = lambda where: np.array([i for i, w in enumerate(where) if person in w], dtype=np.int64)  # noqa: E731
        label = lambda where, idx: np.array([PLACES.index(where[i][person]) for i in idx], dtype=np.int64)  # noqa: E731
        tr, te = pick(train_where), pick(test_where)
        if len(tr) < 10 or not len(te):
            continue  # too few stories move this person to fit or score a probe
        ytr, yte = label(train_where, tr), label(test_where, te)
        most_common = float((yte == np.bincount(ytr).argmax()).mean())
        for source in train_x:
            acc, penalty = probe(train_x[source][tr], ytr, test_x[source][te], yte, len(PLACES))
            rows.append({"features": source, "person": person, "train": len(tr), "test": len(te), "probe": acc,
                         "most_common_place": most_common, "penalty": penalty})
    return pd.DataFrame(rows)


@exits_on_error
def main(argv=None) -> int:
    args, extra = build_parser().parse_known_args(argv)
    checkpoint = pathlib.Path(args.checkpoint)
    if min(args.samples, args.test_samples, args.batch) <= 0:
        raise UsageError("--samples, --test_samples and --batch must be positive")
    model, family = load_qa_model(checkpoint, args.test_samples, [*extra, "--story_in_earlier_segments"])
    layers = model.backbone.config.num_hidden_layers
    if args.layers and not all(0 <= k <= layers for k in args.layers):
        raise UsageError(f"--layers must be 0 to {layers} (the backbone's layers), got {args.layers}")
    table = memory_probe(model, family, args.samples, args.test_samples, args.batch, args.layers)
    if table.empty:
        raise UsageError(f"fewer than 10 of {args.samples} train stories move any one person: give more --samples")
    out = pathlib.Path(args.out) if args.out else checkpoint.parent / "memory_probe.csv"
    text = table.to_csv(index=False, float_format="%.4g")
    atomic_write(out, lambda f: f.write(text), text=True, encoding="utf-8")
    what = "the memory the question's segment reads" if not args.layers else \
        "the write slots after each layer, in the segment before the question's"
    print(f"{family.name}: where each person is, read by a linear probe from {what} ({args.samples} train, "
          f"{args.test_samples} test samples)")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}", formatters={"penalty": "{:g}".format}))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
