"""Benchmarks: throughput against the original code and the pip peer, long BPTT, long streams.

    python3 -m rmt.tools.benchmark throughput --configs copy enwik8 \\
        [--original /path/to/LM-RMT] [--peer] [--kinds baseline txl rmt] [--steps 20] \\
        [--variants eager fused flex+bf16+compile]
    python3 -m rmt.tools.benchmark bptt --segments 1 8 64      # peak memory, plain vs recomputed
    python3 -m rmt.tools.benchmark stream --tokens 8192 1048576  # constant-memory evaluation
    python3 -m rmt.tools.benchmark generation --configs gen --tokens 1024 8192 [--peer]
                                                     # tokens/s: cached decoding vs re-encoding
    python3 -m rmt.tools.benchmark hf --tokens 2048 --segment 512   # rmt.hf wrapper vs its bare backbone

Every measurement runs in a fresh child process, so its peak memory is its own (CUDA: peak
allocated; CPU: peak resident set above the process's size after building the model; for throughput
rows, which run under the default allocator, that includes what the heap kept). Rows are appended
to experiments/benchmarks/<mode>.csv with device, torch version and commit.
`--original` points at a checkout of the original LM-RMT code (nothing of it is copied here);
`--peer` needs `pip install recurrent-memory-transformer-pytorch`.

Our implementation runs once per `--variants` entry: an attention implementation (eager, fused,
flex) optionally joined with `+bf16` (autocast) and `+compile` (torch.compile). The peers always
run as they come (fp32, eager). Every throughput row carries the model FLOPs per token, the
achieved training TFLOP/s and its fraction of the matrix-product rate measured in the same run
(`mfu`, against the fp32 rate, or the bf16 rate for +bf16 variants), and, for our variants,
the ratio to the original (`vs_original`) and to the pip peer (`vs_peer`). On a shared machine,
`--repeats N` runs N rounds over all implementations and records each one's medians and the spread
of its training rate (`train_spread`), so a slow spell does not decide a ratio.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import pathlib
import re
import statistics
import subprocess
import sys

import torch

from rmt import REPO_ROOT
from rmt.atomic import atomic_write
from rmt.errors import exits_on_error
from rmt.results import run_metadata
from rmt.tools.measure import CONFIGS, matmul_gflops, parse_variant, train_flops_per_token

CSV_DIR = REPO_ROOT / "experiments" / "benchmarks"


def median_trial(trials: list[dict]) -> dict:
    """One throughput result from repeated runs: the median of each rate and of the peak memory,
    with the spread of the training rate ((max - min) / median) when there are several; the first
    error if any run failed."""
    errors = [t for t in trials if "error" in t]
    if errors:
        return errors[0]
    out = dict(trials[0])
    for key in ("train_tok_s", "eval_tok_s", "peak_mem_mb"):
        out[key] = statistics.median(t[key] for t in trials)
    if len(trials) > 1:
        rates = [t["train_tok_s"] for t in trials]
        out["train_spread"] = (max(rates) - min(rates)) / out["train_tok_s"]
    return out


def _child(kind: str, spec: dict) -> dict:
    """Run one measurement in a fresh interpreter; returns its JSON result (or an error)."""
    env = dict(os.environ)
    if kind != "throughput":
        # Memory modes: large blocks through mmap, so freed memory goes back to the OS and the peak
        # resident set tracks live tensors instead of what glibc's heap kept after earlier frees.
        # Never for timings: every large tensor then costs fresh page faults, which made CPU
        # element-wise ops several times slower (an add of 2.4M floats: 4.7 ms against 0.8 ms).
        env |= {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}
    cmd = [sys.executable, "-m", "rmt.tools.measure", kind, json.dumps(spec)]
    run = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if run.returncode != 0:
        lines = run.stderr.strip().splitlines() or ["failed"]
        # The exception line, not the hints some libraries print after it.
        errors = [ln for ln in lines if re.match(r"^[\w.]+(Error|Exception)\b", ln)]
        return {"error": (errors or lines)[-1][:300]}
    return json.loads(run.stdout.strip().splitlines()[-1])


def _append(rows: list[dict], path: pathlib.Path) -> None:
    """Append rows; only a column the file lacks makes it rewrite the file with a wider header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = []
    if path.exists() and path.stat().st_size:
        with open(path, newline="") as f:
            fields = next(csv.reader(f))
    new = sorted({k for r in rows for k in r} - set(fields))
    if fields and not new:
        with open(path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=fields).writerows(rows)
        return
    old = []
    if fields:
        with open(path, newline="") as f:
            old = list(csv.DictReader(f))
    def rewrite(f) -> None:
        writer = csv.DictWriter(f, fieldnames=fields + new)
        writer.writeheader()
        writer.writerows(old + rows)
    atomic_write(path, rewrite, text=True, newline="")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python3 -m rmt.tools.benchmark", description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=["throughput", "bptt", "stream", "generation", "hf"])
    p.add_argument("--configs", nargs="+", default=["copy"], choices=sorted(CONFIGS))
    p.add_argument("--kinds", nargs="+", default=["baseline", "txl", "rmt"], choices=["baseline", "txl", "rmt", "armt"],
                   help="armt: RMT's memory tokens written into associative memory (ours only)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=20, help="timed steps (after as many warm-up steps as --warmup)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=1,
                   help="throughput: rounds over all implementations; rows hold each one's median")
    p.add_argument("--batch", type=int, default=None, help="override the config's batch size")
    p.add_argument("--original", default=None, help="path to a checkout of the original LM-RMT code")
    p.add_argument("--variants", nargs="+", default=["eager"],
                   help="our variants to time: eager|fused|flex, optionally +bf16 and/or +compile")
    p.add_argument("--peer", action="store_true", help="also time recurrent-memory-transformer-pytorch (rmt only)")
    p.add_argument("--segments", type=int, nargs="+", default=[1, 8, 64], help="bptt: segments per step")
    p.add_argument("--tokens", type=int, nargs="+", default=None,
                   help="stream: tokens to evaluate (default 8192 1048576); generation: to generate (1024 8192)")
    p.add_argument("--segment", type=int, default=512, help="hf: segment length of the wrapper")
    p.add_argument("--mem", type=int, default=16, help="hf: memory tokens of the wrapper")
    p.add_argument("--csv", default=None, help="default: experiments/benchmarks/<mode>.csv")
    p.add_argument("--note", default=None, help="recorded with every row (e.g. what else shared the machine)")
    return p


def throughput_rows(args, config: str, kind: str, meta: dict, rates: tuple[float, float | None]) -> list[dict]:
    """Time every implementation of one (config, kind), in rounds; one row each, with mfu and ratios."""
    gflops, bf16_gflops = rates
    override = {"batch": args.batch} if args.batch else {}
    ours = [f"ours-{v}" for v in args.variants]
    impls = ours + (["original"] if args.original and kind != "armt" else []) + \
        (["peer"] if args.peer and kind == "rmt" else [])
    cfg = CONFIGS[config] | override
    flops = train_flops_per_token(cfg, kind)
    specs = {impl: dict(config=config, kind=kind, impl=impl, device=args.device, steps=args.steps,
                        warmup=args.warmup, original=args.original, override=override) for impl in impls}
    trials = {impl: [] for impl in impls}
    for _ in range(args.repeats):  # rounds of every implementation, so slow spells hit all alike
        for impl in impls:
            trials[impl].append(_child("throughput", specs[impl]))
    res = {impl: median_trial(t) for impl, t in trials.items()}
    rows = []
    for impl in impls:
        row = {**meta, "mode": "throughput", "config": config, "kind": kind, "impl": impl,
               "batch": cfg["batch"], "tgt_len": cfg["tgt_len"], "steps": args.steps,
               "repeats": args.repeats, "matmul_gflops": round(gflops, 1), "flops_per_token": flops, **res[impl]}
        if "error" not in res[impl]:
            bf16 = impl in ours and parse_variant(impl.removeprefix("ours-"))["bf16"]
            rate = bf16_gflops if bf16 and bf16_gflops else gflops
            row["train_tflops"] = res[impl]["train_tok_s"] * flops / 1e12
            row["mfu"] = row["train_tflops"] * 1e3 / rate
        for peer in ("original", "peer"):  # ratios once every implementation has run
            if impl in ours and "error" not in res[impl] and "error" not in res.get(peer, {"error": 1}):
                row[f"vs_{peer}"] = res[impl]["train_tok_s"] / res[peer]["train_tok_s"]
                row[f"vs_{peer}_eval"] = res[impl]["eval_tok_s"] / res[peer]["eval_tok_s"]
        rows.append(row)
    return rows


def generation_rows(args, config: str, tokens: int, meta: dict) -> list[dict]:
    """Generated tokens/s of cached decoding, re-encoding and (with --peer) the pip peer, with the
    cached decoder's speed-up over each."""
    impls = ["ours-cache", "ours-reencode"] + (["peer"] if args.peer else [])
    res = {impl: _child("generation", dict(config=config, tokens=tokens, impl=impl, device=args.device))
           for impl in impls}
    rows = [{**meta, "mode": "generation", "config": config, "impl": impl, **r} for impl, r in res.items()]
    fast = res["ours-cache"].get("tok_s")
    for row in rows[1:]:
        if fast and row.get("tok_s"):
            row["cache_speedup"] = fast / row["tok_s"]
    return rows


def hf_rows(args, tokens: int, meta: dict) -> list[dict]:
    """Time per token of the rmt.hf wrapper and of its bare backbone (one long pass, and the same
    segments without memory), with the wrapper's ratio to each; `vs_*_mem_aside` divides out the
    memory slots' share of the positions, (T + 2M) / T."""
    spec = dict(tokens=tokens, segment=args.segment, mem=args.mem, batch=args.batch or 1, device=args.device,
                steps=args.steps, warmup=args.warmup)
    impls = ["bare-long", "bare-segments", "rmt"]
    res = {impl: _child("hf", spec | {"impl": impl}) for impl in impls}
    rows = [{**meta, "mode": "hf", "config": "gpt2-4x256", "impl": impl, **spec, **r} for impl, r in res.items()]
    share = (args.segment + 2 * args.mem) / args.segment
    rmt = res["rmt"]
    for bare in impls[:2]:
        if "error" in rmt or "error" in res[bare]:
            continue
        for phase in ("train", "eval"):
            ratio = rmt[f"{phase}_ms_per_token"] / res[bare][f"{phase}_ms_per_token"]
            rows[-1][f"{phase}_vs_{bare}"] = ratio
            rows[-1][f"{phase}_vs_{bare}_mem_aside"] = ratio / share
    return rows


def shown(row: dict) -> str:
    keys = ("config", "kind", "impl", "segments", "recompute", "tokens", "train_tok_s", "eval_tok_s", "tok_s",
            "peak_mem_mb", "mfu", "vs_original", "vs_peer", "cache_speedup", "train_ms_per_token", "eval_ms_per_token",
            "train_vs_bare-long", "train_vs_bare-segments", "eval_vs_bare-long", "eval_vs_bare-segments", "error")
    return json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items() if k in keys})


@exits_on_error
def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats must be at least 1, got {args.repeats}")
    for variant in args.variants:
        try:
            parse_variant(variant)
        except ValueError as err:
            p.error(str(err))
    device = torch.device(args.device)
    meta = run_metadata(str(device) if device.type == "cpu" else torch.cuda.get_device_name(device))
    meta["device"] += f" ({os.cpu_count()} cores)" if device.type == "cpu" else ""
    if args.note:
        meta["note"] = args.note
    print(f"device {meta['device']}, torch {meta['torch_version']}")
    out = pathlib.Path(args.csv) if args.csv else CSV_DIR / f"{args.mode}.csv"
    if args.mode == "throughput":  # the rates behind mfu, measured in the same run
        n = 8192 if device.type == "cuda" else 1024
        bf16 = matmul_gflops(device, n, dtype=torch.bfloat16) if device.type == "cuda" else None
        rates = matmul_gflops(device, n), bf16
        print(f"fp32 matmul {rates[0]:.1f} GFLOP/s" + (f", bf16 matmul {rates[1]:.1f} GFLOP/s" if rates[1] else ""))
    n_rows = 0
    configs = ["gpt2-4x256"] if args.mode == "hf" else args.configs  # hf times its own backbone shape
    for config in configs:
        if args.mode == "throughput":
            batches = (throughput_rows(args, config, kind, meta, rates) for kind in args.kinds)
        elif args.mode == "bptt":
            batches = ([{**meta, "mode": "bptt", "config": config, "segments": s, "recompute": recompute,
                         **_child("bptt", dict(config=config, segments=s, recompute=recompute, device=args.device))}]
                       for recompute in (False, True) for s in args.segments)
        elif args.mode == "stream":
            batches = ([{**meta, "mode": "stream", "config": config,
                         **_child("stream", dict(config=config, tokens=n, batch=args.batch or 8, device=args.device))}]
                       for n in args.tokens or [8192, 1 << 20])
        elif args.mode == "generation":
            batches = (generation_rows(args, config, n, meta) for n in args.tokens or [1024, 8192])
        else:
            batches = (hf_rows(args, n, meta) for n in args.tokens or [2048])
        for rows in batches:  # written as measured: an interrupted run keeps what it finished
            _append(rows, out)
            n_rows += len(rows)
            for row in rows:
                print(shown(row))
    print(f"{n_rows} rows appended to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
