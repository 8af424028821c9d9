"""The measurements behind rmt.tools.benchmark, one per fresh process:

    python3 -m rmt.tools.measure throughput|bptt|stream|generation|hf SPEC_JSON   # prints one JSON result

Each builds one model (ours, the original code's, or the pip peer's) and times or measures it.
"""
from __future__ import annotations

import json
import pathlib
import resource
import sys
import time

import torch

from rmt.model.config import ATTN_IMPLS, ModelConfig
from rmt.training.runtime import compile_model

# Shapes of the paper's models. Memory size = the cache for txl, memory tokens for rmt.
CONFIGS = {
    "copy": dict(n_token=12, n_layer=4, n_head=4, d_model=128, d_head=64, d_inner=256, tgt_len=24, batch=32, mem=24),
    "enwik8": dict(n_token=204, n_layer=12, n_head=8, d_model=512, d_head=64, d_inner=2048, tgt_len=128, batch=8,
                   mem=10),
    # A byte-level LM of moderate size with segments of 128: what generation is timed at.
    "gen": dict(n_token=204, n_layer=4, n_head=8, d_model=256, d_head=32, d_inner=1024, tgt_len=128, batch=1,
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
    from rmt.model.recurrence import MemoryState
    from rmt.model.transformer import MemTransformerLM, init_weights

    opts = parse_variant(variant)
    model = MemTransformerLM(cfg["n_token"], cfg["n_layer"], cfg["n_head"], cfg["d_model"], cfg["d_head"],
                             cfg["d_inner"], tgt_len=cfg["tgt_len"], cutoffs=cfg.get("cutoffs", []),
                             mem_len=cfg["mem"] if kind == "txl" else 0,
                             num_mem_tokens=cfg["mem"] if kind in ("rmt", "armt") else 0,
                             memory="associative" if kind == "armt" else "tokens",
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
    from rmt.model.recurrence import MemoryState, run_segments
    from rmt.model.transformer import MemTransformerLM, init_weights

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
    from rmt.model.recurrence import MemoryState
    from rmt.model.transformer import MemTransformerLM, init_weights

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


def measure_generation(spec: dict) -> dict:
    """Child process: generate N tokens after a one-token prompt, batch 1, sampling at temperature 1.

    impl ours-cache: cached keys and values inside a segment; ours-reencode: the segment re-encoded
    for every token; peer: the pip package's `generate` (which re-encodes its current segment)."""
    torch.manual_seed(0)
    device = torch.device(spec["device"])
    cfg, n = CONFIGS[spec["config"]], spec["tokens"]
    prompt = torch.randint(0, cfg["n_token"], (1, 1), device=device)
    if spec["impl"] == "peer":
        from recurrent_memory_transformer_pytorch import RecurrentMemoryTransformer, RecurrentMemoryTransformerWrapper

        net = RecurrentMemoryTransformer(num_tokens=cfg["n_token"], dim=cfg["d_model"], depth=cfg["n_layer"],
                                         heads=cfg["n_head"], dim_head=cfg["d_head"], seq_len=cfg["tgt_len"],
                                         num_memory_tokens=cfg["mem"], use_xl_memories=False)
        wrapper = RecurrentMemoryTransformerWrapper(net).to(device)
        run = lambda: wrapper.generate(prompt, length=1 + n, temperature=1.0)  # noqa: E731
    else:
        from rmt.model.transformer import MemTransformerLM, init_weights

        model = MemTransformerLM(cfg["n_token"], cfg["n_layer"], cfg["n_head"], cfg["d_model"], cfg["d_head"],
                                 cfg["d_inner"], tgt_len=cfg["tgt_len"], num_mem_tokens=cfg["mem"]).to(device).eval()
        init_weights(model)
        use_cache = spec["impl"] == "ours-cache"
        run = lambda: model.generate(prompt, n, temperature=1.0, seed=0, use_cache=use_cache)  # noqa: E731
    rss0 = _rss_mb()
    with torch.no_grad():
        t0 = time.perf_counter()
        out = run()
        _sync(device)
        elapsed = time.perf_counter() - t0
    assert out.shape[-1] == n, out.shape
    return {"tokens": n, "time_s": elapsed, "tok_s": n / elapsed, "peak_mem_mb": _peak_mb(device, rss0)}


# A GPT-2-shaped causal LM for the Hugging Face wrapper's timing (rmt.hf), built from its config.
HF_CONFIG = dict(n_layer=4, n_embd=256, n_head=8, vocab_size=8192)


def measure_hf(spec: dict) -> dict:
    """Child process: time per token of RMTForCausalLM against its bare backbone on the same tokens.

    impl bare-long: the backbone over the whole input in one pass; bare-segments: the backbone over
    the input cut into independent segments (one batch); rmt: the wrapper, segments in order with
    memory. Training steps are forward, backward and an Adam step on the LM loss."""
    from transformers import GPT2Config, GPT2LMHeadModel, logging

    from rmt.hf import RMTForCausalLM

    logging.set_verbosity_error()
    torch.manual_seed(0)
    device = torch.device(spec["device"])
    b, n, t, m = spec["batch"], spec["tokens"], spec["segment"], spec["mem"]
    backbone = GPT2LMHeadModel(GPT2Config(**HF_CONFIG, n_positions=max(n, t + 2 * m), resid_pdrop=0.0,
                                          embd_pdrop=0.0, attn_pdrop=0.0)).to(device)
    model = RMTForCausalLM(backbone, m, t).to(device) if spec["impl"] == "rmt" else backbone
    shape = (b * n // t, t) if spec["impl"] == "bare-segments" else (b, n)
    ids = torch.randint(0, HF_CONFIG["vocab_size"], shape, device=device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def train():
        model(ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def infer():
        with torch.no_grad():
            model(ids)

    rss0 = _rss_mb()
    seconds = {}
    for name, fn in (("train", train), ("eval", infer)):
        model.train(name == "train")
        for _ in range(spec["warmup"]):
            fn()
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(spec["steps"]):
            fn()
        _sync(device)
        seconds[name] = (time.perf_counter() - t0) / spec["steps"]
    return {"train_ms_per_token": seconds["train"] * 1e3 / (b * n), "eval_ms_per_token": seconds["eval"] * 1e3 / (b * n),
            "peak_mem_mb": _peak_mb(device, rss0)}


def train_flops_per_token(cfg: dict, kind: str) -> float:
    """Model FLOPs of one training step per input token (forward + backward = 3x forward).

    Counted: every matrix product. Linear layers over all Q = T + 2M positions (memory tokens
    cost like tokens; ARMT: Q = T + M, write slots only), the relative-position projection over
    the K keys, the three attention products (content, position, values: Q x K x H*D each), the
    output softmax over T, and ARMT's associative read (W_q and A at every position, keys of
    6 * d_mem, the default d_mem) and write (W_k, W_v and the two products with A at the M slots).
    Not counted: element-wise work, norms, the embedding lookup.
    """
    t, c, hd, n_layer = cfg["tgt_len"], cfg["d_model"], cfg["n_head"] * cfg["d_head"], cfg["n_layer"]
    m = cfg["mem"] if kind in ("rmt", "armt") else 0
    q = t + (m if kind == "armt" else 2 * m)
    k = q + (cfg["mem"] if kind == "txl" else 0)
    per_layer = 2 * q * (3 * c * hd + hd * c + 2 * c * cfg["d_inner"]) + 2 * k * c * hd + 3 * 2 * q * k * hd
    if kind == "armt":
        d_mem = ModelConfig(n_token=1).d_mem  # the default, as the benchmark builds it
        d_key = 6 * d_mem
        per_layer += 2 * q * (c * d_mem + d_key * c) + 2 * m * (c * d_mem + c * c + 2 * d_key * c)
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




if __name__ == "__main__":
    mode, spec = sys.argv[1], json.loads(sys.argv[2])
    modes = {"throughput": measure_throughput, "bptt": measure_bptt, "stream": measure_stream,
             "generation": measure_generation, "hf": measure_hf}
    print(json.dumps(modes[mode](spec)))
