"""Benchmarks: throughput against the original code and the pip peer, long BPTT, long streams.

    python3 -m rmt.benchmark throughput --configs copy enwik8 \\
        [--original /path/to/LM-RMT] [--peer] [--kinds baseline txl rmt] [--steps 20] \\
        [--variants eager fused flex+bf16+compile]
    python3 -m rmt.benchmark bptt --segments 1 8 64      # peak memory, plain vs recomputed
    python3 -m rmt.benchmark stream --tokens 8192 1048576  # constant-memory evaluation

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
import resource
import statistics
import subprocess
import sys
import time

import torch

from .config import ATTN_IMPLS
from .results import run_metadata
from .runtime import REPO_ROOT as REPO, compile_model

CSV_DIR = REPO / "experiments" / "benchmarks"

# Shapes of the paper's models. Memory size = the cache for txl, memory tokens for rmt.
CONFIGS = {
    "copy": dict(n_token=12, n_layer=4, n_head=4, d_model=128, d_head=64, d_inner=256, tgt_len=24, batch=32, mem=24),
    "enwik8": dict(n_token=204, n_layer=12, n_head=8, d_model=512, d_head=64, d_inner=2048, tgt_len=128, batch=8,
                   mem=10),
    "tiny": dict(n_token=16, n_layer=1, n_head=2, d_model=16, d_head=8, d_inner=32, tgt_len=8, batch=2, mem=4),
    "wt103": dict(n_token=267735, n_layer=16, n_head=10, d_model=410, d_head=41, d_inner=2100, tgt_len=150, batch=4,
                  mem=10, cutoffs=[20000, 40000, 200000]),
}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak_mb(device: torch.device, rss0: float) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else _rss_mb() - rss0


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- the three implementations, each as (build, train_step, eval_step) ---------------------------

def parse_variant(variant: str) -> dict:
    """'flex+bf16+compile' -> {'attn_impl': 'flex', 'bf16': True, 'compile': True}."""
    impl, *opts = variant.split("+")
    if impl not in ATTN_IMPLS or not set(opts) <= {"bf16", "compile"}:
        raise ValueError(f"bad variant {variant!r}: an attention implementation {ATTN_IMPLS}, then +bf16, +compile")
    return {"attn_impl": impl, "bf16": "bf16" in opts, "compile": "compile" in opts}


def _ours(cfg, kind, device, variant):
    from .memory import MemoryState
    from .model import MemTransformerLM, init_weights

    opts = parse_variant(variant)
    model = MemTransformerLM(cfg["n_token"], cfg["n_layer"], cfg["n_head"], cfg["d_model"], cfg["d_head"],
                             cfg["d_inner"], tgt_len=cfg["tgt_len"], cutoffs=cfg.get("cutoffs", []),
                             mem_len=cfg["mem"] if kind == "txl" else 0,
                             num_mem_tokens=cfg["mem"] if kind == "rmt" else 0,
                             attn_impl=opts["attn_impl"]).to(device)
    init_weights(model)
    run_model = compile_model(model) if opts["compile"] else model
    state = {"s": MemoryState()}

    def step(x, y, train):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=opts["bf16"]):
            nll, new = run_model(x, y, state["s"])
        state["s"] = new.detach()  # LM-style: memory carried along the stream, detached each step
        return nll.float().mean()

    return model, step


def _original(cfg, kind, device, path):
    root = pathlib.Path(path) / "pytorch"
    sys.path[:0] = [str(root), str(root / "utils")]  # it imports its utils both ways
    if torch.version.cuda is None:  # its softmax module parses the CUDA version at import time
        torch.version.cuda = "12.0"
    from mem_transformer import MemTransformerLM as Original  # noqa: E402 (user-supplied checkout)

    m = cfg["mem"]
    model = Original(cfg["n_token"], cfg["n_layer"], cfg["n_head"], cfg["d_model"], cfg["d_head"], cfg["d_inner"],
                     0.0, 0.0, tie_weight=True, d_embed=cfg["d_model"], div_val=1,
                     tie_projs=[False] + [True] * len(cfg.get("cutoffs", [])), pre_lnorm=False,
                     tgt_len=cfg["tgt_len"], ext_len=0, mem_len=m if kind == "txl" else 0,
                     num_mem_tokens=m if kind == "rmt" else 0, mem_at_end=True, cutoffs=cfg.get("cutoffs", []),
                     same_length=False, attn_type=0, clamp_len=-1, sample_softmax=-1).to(device)
    state = {"mems": (), "mem": None}

    def step(x, y, train):
        x, y = x.t().contiguous(), y.t().contiguous()  # the original is time-major
        if kind == "rmt":
            mem = state["mem"] if state["mem"] is not None else model.mem_tokens.repeat(1, x.size(1), 1)
            ret = model(x, y, *state["mems"], mem_tokens=mem)
            state["mem"], loss, state["mems"] = ret[0].detach(), ret[1], tuple(ret[2:])
        else:
            ret = model(x, y, *state["mems"])
            loss, state["mems"] = ret[0], tuple(ret[1:])
        return loss.float().mean()

    return model, step


def _peer(cfg, kind, device):
    from recurrent_memory_transformer_pytorch import RecurrentMemoryTransformer

    model = RecurrentMemoryTransformer(num_tokens=cfg["n_token"], dim=cfg["d_model"], depth=cfg["n_layer"],
                                       heads=cfg["n_head"], dim_head=cfg["d_head"], seq_len=cfg["tgt_len"],
                                       num_memory_tokens=cfg["mem"], use_xl_memories=False).to(device)
    state = {"mem": None}

    def step(x, y, train):
        logits, mem, _ = model(x, state["mem"])
        state["mem"] = mem.detach()
        return torch.nn.functional.cross_entropy(logits.transpose(1, 2), y)

    return model, step


def measure_throughput(spec: dict) -> dict:
    """Child process: build one implementation, time training and evaluation steps."""
    torch.manual_seed(0)
    device = torch.device(spec["device"])
    cfg, kind, impl = CONFIGS[spec["config"]] | spec.get("override", {}), spec["kind"], spec["impl"]
    if impl.startswith("ours"):
        model, step = _ours(cfg, kind, device, impl.removeprefix("ours-"))
    elif impl == "original":
        model, step = _original(cfg, kind, device, spec["original"])
    else:
        model, step = _peer(cfg, kind, device)
    rss0 = _rss_mb()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    b, t = cfg["batch"], cfg["tgt_len"]
    data = torch.randint(0, cfg["n_token"], (spec["warmup"] + spec["steps"] + 1, b, t + 1), device=device)

    def run(n, offset, train):
        for i in range(n):
            x, y = data[offset + i, :, :-1], data[offset + i, :, 1:]
            if train:
                loss = step(x, y, True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
                opt.step()
                opt.zero_grad(set_to_none=True)
            else:
                step(x, y, False)

    def timed(train: bool) -> float:
        """Warm-up steps, then the timed steps (on the following batches); seconds."""
        run(spec["warmup"], 0, train)
        _sync(device)
        t0 = time.perf_counter()
        run(spec["steps"], spec["warmup"], train)
        _sync(device)
        return time.perf_counter() - t0

    model.train()
    train_s = timed(True)
    model.eval()
    with torch.no_grad():
        eval_s = timed(False)
    n_params = sum(p.numel() for p in model.parameters())
    return {"train_tok_s": spec["steps"] * b * t / train_s, "eval_tok_s": spec["steps"] * b * t / eval_s,
            "peak_mem_mb": _peak_mb(device, rss0), "n_params": n_params}


def measure_bptt(spec: dict) -> dict:
    """Child process: one training step of BPTT over S segments; peak memory and time."""
    from .memory import MemoryState, run_segments
    from .model import MemTransformerLM, init_weights

    torch.manual_seed(0)
    device = torch.device(spec["device"])
    cfg = CONFIGS[spec["config"]]
    model = MemTransformerLM(cfg["n_token"], cfg["n_layer"], cfg["n_head"], cfg["d_model"], cfg["d_head"],
                             cfg["d_inner"], tgt_len=cfg["tgt_len"], mem_len=spec.get("mem_len", 0),
                             num_mem_tokens=cfg["mem"]).to(device)
    init_weights(model)
    b, t, s = cfg["batch"], cfg["tgt_len"], spec["segments"]
    data = torch.randint(0, cfg["n_token"], (b, s * t + 1), device=device)
    xs, ys = list(data[:, :-1].split(t, 1)), list(data[:, 1:].split(t, 1))
    rss0 = _rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    nlls, _ = run_segments(model, xs, ys, MemoryState(), None, recompute=spec["recompute"])
    torch.stack([n.mean() for n in nlls]).mean().backward()
    _sync(device)
    return {"time_s": time.perf_counter() - t0, "peak_mem_mb": _peak_mb(device, rss0)}


def measure_stream(spec: dict) -> dict:
    """Child process: evaluate a stream of N tokens segment by segment, state carried."""
    from .memory import MemoryState
    from .model import MemTransformerLM, init_weights

    torch.manual_seed(0)
    device = torch.device(spec["device"])
    cfg = CONFIGS[spec["config"]]
    model = MemTransformerLM(cfg["n_token"], cfg["n_layer"], cfg["n_head"], cfg["d_model"], cfg["d_head"],
                             cfg["d_inner"], tgt_len=cfg["tgt_len"], mem_len=cfg["mem"],
                             num_mem_tokens=cfg["mem"]).to(device).eval()
    init_weights(model)
    b, t = spec["batch"], cfg["tgt_len"]
    n_seg = spec["tokens"] // (b * t)
    g = torch.Generator(device="cpu").manual_seed(0)
    rss0 = _rss_mb()
    state, total, t0 = MemoryState(), 0.0, time.perf_counter()
    with torch.no_grad():
        for _ in range(n_seg):  # tokens are drawn on the fly: the stream itself is never held
            seg = torch.randint(0, cfg["n_token"], (b, t + 1), generator=g).to(device)
            nll, state = model(seg[:, :-1], seg[:, 1:], state)
            total += nll.sum().item()
    _sync(device)
    elapsed = time.perf_counter() - t0
    tokens = n_seg * b * t
    return {"tokens": tokens, "time_s": elapsed, "us_per_token": elapsed / tokens * 1e6,
            "peak_mem_mb": _peak_mb(device, rss0), "mean_nll": total / tokens}


def train_flops_per_token(cfg: dict, kind: str) -> float:
    """Model FLOPs of one training step per input token (forward + backward = 3x forward).

    Counted: every matrix product. Linear layers over all Q = T + 2M positions (memory tokens
    cost like tokens), the relative-position projection over the K keys, the three attention
    products (content, position, values: Q x K x H*D each), and the output softmax over T.
    Not counted: element-wise work, norms, the embedding lookup.
    """
    t, c, hd, n_layer = cfg["tgt_len"], cfg["d_model"], cfg["n_head"] * cfg["d_head"], cfg["n_layer"]
    m = cfg["mem"] if kind == "rmt" else 0
    q = t + 2 * m
    k = q + (cfg["mem"] if kind == "txl" else 0)
    per_layer = 2 * q * (3 * c * hd + hd * c + 2 * c * cfg["d_inner"]) + 2 * k * c * hd + 3 * 2 * q * k * hd
    softmax = 2 * t * c * cfg["n_token"]
    return 3 * (n_layer * per_layer + softmax) / t


def matmul_gflops(device: torch.device, n: int = 1024, reps: int = 10, dtype=torch.float32) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


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
    env = {**os.environ, "PYTHONPATH": str(REPO / "pytorch")}
    if kind != "throughput":
        # Memory modes: large blocks through mmap, so freed memory goes back to the OS and the peak
        # resident set tracks live tensors instead of what glibc's heap kept after earlier frees.
        # Never for timings: every large tensor then costs fresh page faults, which made CPU
        # element-wise ops several times slower (an add of 2.4M floats: 4.7 ms against 0.8 ms).
        env |= {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536"}
    cmd = [sys.executable, "-m", "rmt.benchmark", "_child", kind, json.dumps(spec)]
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
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields + new)
        writer.writeheader()
        writer.writerows(old + rows)
    os.replace(tmp, path)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_child"]:
        fn = {"throughput": measure_throughput, "bptt": measure_bptt, "stream": measure_stream}[argv[1]]
        print(json.dumps(fn(json.loads(argv[2]))))
        return 0
    p = argparse.ArgumentParser(prog="python -m rmt.benchmark", description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=["throughput", "bptt", "stream"])
    p.add_argument("--configs", nargs="+", default=["copy"], choices=sorted(CONFIGS))
    p.add_argument("--kinds", nargs="+", default=["baseline", "txl", "rmt"], choices=["baseline", "txl", "rmt"])
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
    p.add_argument("--tokens", type=int, nargs="+", default=[8192, 1 << 20], help="stream: tokens to evaluate")
    p.add_argument("--csv", default=None, help="default: experiments/benchmarks/<mode>.csv")
    p.add_argument("--note", default=None, help="recorded with every row (e.g. what else shared the machine)")
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
    if args.mode == "throughput":  # the rates behind mfu, measured in the same run
        n = 8192 if device.type == "cuda" else 1024
        gflops = matmul_gflops(device, n)
        bf16_gflops = matmul_gflops(device, n, dtype=torch.bfloat16) if device.type == "cuda" else None
        print(f"fp32 matmul {gflops:.1f} GFLOP/s" + (f", bf16 matmul {bf16_gflops:.1f} GFLOP/s" if bf16_gflops else ""))
    override = {"batch": args.batch} if args.batch else {}
    out = pathlib.Path(args.csv) if args.csv else CSV_DIR / f"{args.mode}.csv"
    rows = []
    for config in args.configs:
        if args.mode == "throughput":
            for kind in args.kinds:
                ours = [f"ours-{v}" for v in args.variants]
                impls = ours + (["original"] if args.original else []) + (["peer"] if args.peer and kind == "rmt" else [])
                cfg = CONFIGS[config] | override
                flops = train_flops_per_token(cfg, kind)
                specs = {impl: dict(config=config, kind=kind, impl=impl, device=args.device, steps=args.steps,
                                    warmup=args.warmup, original=args.original, override=override) for impl in impls}
                trials = {impl: [] for impl in impls}
                for _ in range(args.repeats):  # rounds of every implementation, so slow spells hit all alike
                    for impl in impls:
                        trials[impl].append(_child("throughput", specs[impl]))
                res = {impl: median_trial(t) for impl, t in trials.items()}
                kind_rows = []
                for impl in impls:
                    row = {**meta, "mode": "throughput", "config": config, "kind": kind, "impl": impl,
                           "batch": cfg["batch"], "tgt_len": cfg["tgt_len"], "steps": args.steps,
                           "repeats": args.repeats, "matmul_gflops": round(gflops, 1), "flops_per_token": flops,
                           **res[impl]}
                    if "error" not in res[impl]:
                        bf16 = impl in ours and parse_variant(impl.removeprefix("ours-"))["bf16"]
                        rate = bf16_gflops if bf16 and bf16_gflops else gflops
                        row["train_tflops"] = res[impl]["train_tok_s"] * flops / 1e12
                        row["mfu"] = row["train_tflops"] * 1e3 / rate
                    kind_rows.append(row)
                for row in kind_rows:  # ratios once every implementation has run
                    for peer in ("original", "peer"):
                        if row["impl"] in ours and "error" not in res[row["impl"]] \
                                and "error" not in res.get(peer, {"error": 1}):
                            row[f"vs_{peer}"] = res[row["impl"]]["train_tok_s"] / res[peer]["train_tok_s"]
                            row[f"vs_{peer}_eval"] = res[row["impl"]]["eval_tok_s"] / res[peer]["eval_tok_s"]
                    rows.append(row)
                    _append([row], out)  # kind by kind: an interrupted run keeps what it finished
                    print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()
                                      if k in ("config", "kind", "impl", "train_tok_s", "eval_tok_s", "peak_mem_mb",
                                               "mfu", "vs_original", "vs_peer", "error")}))
        elif args.mode == "bptt":
            for recompute in (False, True):
                for s in args.segments:
                    res = _child("bptt", dict(config=config, segments=s, recompute=recompute, device=args.device))
                    rows.append({**meta, "mode": "bptt", "config": config, "segments": s, "recompute": recompute,
                                 **res})
                    _append(rows[-1:], out)
                    print(json.dumps(rows[-1] | {"command": None}))
        else:
            for n in args.tokens:
                res = _child("stream", dict(config=config, tokens=n, batch=args.batch or 8, device=args.device))
                rows.append({**meta, "mode": "stream", "config": config, **res})
                _append(rows[-1:], out)
                print(json.dumps(rows[-1] | {"command": None}))
    print(f"{len(rows)} rows appended to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
