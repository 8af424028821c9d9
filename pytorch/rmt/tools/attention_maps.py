"""Attention maps of a trained model on one sample: how memory is read and written.

    python3 -m rmt.tools.attention_maps --checkpoint runs/<run>/checkpoint_best.pt --sample 0 [--heads]

A task run's checkpoint: sample K of its test split, every segment (or --segment S). A language
model's: the K-th segment of the valid split (--split), memory and cache carried from the split's
start, as evaluation carries them. One PNG per segment with a panel per layer, heads averaged;
--heads adds a PNG per layer with a panel per head. Rows are queries over [read memory | tokens |
write memory], columns keys over [XL cache | read memory | tokens | write memory]; the blocks are
marked. Colour is the probability on a square-root scale, so small weights stay visible.
Written to --out (default: <run dir>/attention/).
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import PowerNorm  # noqa: E402

from rmt.errors import exits_on_error
from rmt.lm.evaluation import corpus_name, default_data_dir, load_corpus  # noqa: E402
from rmt.model.recurrence import MemoryState  # noqa: E402
from rmt.tasks.registry import TASK_NAMES  # noqa: E402
from rmt.tasks.scoring import pad_to_segments  # noqa: E402
from rmt.tasks.storage import load_split  # noqa: E402
from rmt.families.tasks import resolve_task  # noqa: E402
from rmt.training.checkpoint import CheckpointError, load_model, run_config  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rmt.tools.attention_maps", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a checkpoint of ours with its run's config.json beside it")
    p.add_argument("--sample", type=int, default=0, help="task: test sample K; LM: the K-th segment of --split")
    p.add_argument("--segment", type=int, default=None, help="task: only this segment of the sample")
    p.add_argument("--split", default="valid", choices=["valid", "test"], help="LM: the split to read")
    p.add_argument("--heads", action="store_true", help="also one PNG per layer with every head")
    p.add_argument("--out", default=None, help="output directory (default: <run dir>/attention)")
    return p


def blocks(n_cache: int, n_mem: int, n_tokens: int, write: bool) -> tuple[list, list]:
    """(query blocks, key blocks) as (name, start, stop) along each axis, empty ones left out."""
    names = [("read", n_mem), ("tokens", n_tokens), ("write", n_mem if write else 0)]
    def spans(parts):
        out, start = [], 0
        for name, n in parts:
            if n:
                out.append((name, start, start + n))
            start += n
        return out
    return spans(names), spans([("cache", n_cache), *names])


def _panel(ax, prob: torch.Tensor, q_blocks, k_blocks, title: str) -> None:
    ax.imshow(prob.numpy(), cmap="viridis", norm=PowerNorm(0.5, vmin=0, vmax=1), interpolation="nearest",
              aspect="auto")
    for _, start, _ in q_blocks[1:]:
        ax.axhline(start - 0.5, color="white", lw=0.8)
    for _, start, _ in k_blocks[1:]:
        ax.axvline(start - 0.5, color="white", lw=0.8)
    ax.set_yticks([(a + b - 1) / 2 for _, a, b in q_blocks], [n for n, _, _ in q_blocks], fontsize=7)
    ax.set_xticks([(a + b - 1) / 2 for _, a, b in k_blocks], [n for n, _, _ in k_blocks], fontsize=7)
    ax.set_title(title, fontsize=8)


def plot_maps(maps: list[torch.Tensor], q_blocks, k_blocks, path: pathlib.Path, title: str) -> None:
    """maps: (Q, K) per panel; one row of panels in one PNG."""
    fig, axes = plt.subplots(1, len(maps), figsize=(3.2 * len(maps), 3.2), squeeze=False)
    for i, (ax, prob) in enumerate(zip(axes[0], maps)):
        _panel(ax, prob, q_blocks, k_blocks, f"{title} {i}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def segment_maps(model, x: torch.Tensor, state: MemoryState, out: pathlib.Path, stem: str, heads: bool):
    """Encode one segment (1, T) with attention returned; write its PNGs. Returns (paths, new state)."""
    cfg = model.config
    mlen = state.xl[0].size(1) if state.xl and cfg.mem_len > 0 else 0
    _, new_state, probs = model.encode(x, state, return_attention=True)
    q_blocks, k_blocks = blocks(mlen, cfg.num_mem_tokens, x.size(1), cfg.mem_at_end)
    paths = [out / f"{stem}_layers.png"]
    plot_maps([p[0].mean(0) for p in probs], q_blocks, k_blocks, paths[0], "layer")
    if heads:
        for i, p in enumerate(probs):
            paths.append(out / f"{stem}_layer{i}_heads.png")
            plot_maps(list(p[0]), q_blocks, k_blocks, paths[-1], f"layer {i}, head")
    return paths, new_state


def task_segments(args, train_args: dict, tgt_len: int):
    ns = argparse.Namespace(**train_args)
    spec, name, data_dir = resolve_task(ns)
    src, _ = load_split(data_dir, name, "test", spec.stacked)
    if not 0 <= args.sample < len(src):
        raise ValueError(f"--sample must be in 0..{len(src) - 1} (the test split of {name})")
    segs = list(pad_to_segments(src[args.sample : args.sample + 1], tgt_len).split(tgt_len, dim=1))
    return segs, name


def lm_segments(args, train_args: dict, tgt_len: int):
    dataset = train_args["dataset"]
    data = train_args.get("data") or default_data_dir(dataset)
    corpus = load_corpus(data, dataset)
    stream = getattr(corpus, args.split)
    if (args.sample + 1) * tgt_len > len(stream):
        raise ValueError(f"--sample {args.sample}: the {args.split} split has {len(stream) // tgt_len} segments")
    return [stream[k * tgt_len : (k + 1) * tgt_len].view(1, -1) for k in range(args.sample + 1)], \
        corpus_name(data, dataset)


@exits_on_error
def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    checkpoint = pathlib.Path(args.checkpoint)
    train_args = run_config(checkpoint).get("args", {})
    if not train_args.get("dataset"):
        parser.error(f"no config.json beside {checkpoint}: it names the task or corpus the maps are drawn on")
    try:
        model, _ = load_model(checkpoint)
    except CheckpointError as e:
        raise SystemExit(f"error: {e}")
    model.eval()
    is_task = train_args["dataset"] in TASK_NAMES
    tgt_len = model.config.tgt_len
    try:
        segs, name = (task_segments if is_task else lm_segments)(args, train_args, tgt_len)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}")
    if is_task and args.segment is not None and not 0 <= args.segment < len(segs):
        parser.error(f"--segment must be in 0..{len(segs) - 1}")
    out = pathlib.Path(args.out) if args.out else checkpoint.parent / "attention"
    out.mkdir(parents=True, exist_ok=True)
    state, written = MemoryState(), []
    with torch.no_grad():
        for s, x in enumerate(segs):
            wanted = (args.segment in (None, s)) if is_task else s == len(segs) - 1
            if not wanted:
                _, state = model.encode(x, state)
                continue
            paths, state = segment_maps(model, x, state, out, f"{name}_sample{args.sample}_segment{s}", args.heads)
            written += paths
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
