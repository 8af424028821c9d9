"""Generate text from a trained language model (Transformer-XL or RMT).

    python3 -m rmt.generate --checkpoint runs/<run>/checkpoint_best.pt --prompt "The valley of" \\
        --max_new_tokens 200 --temperature 0.8 --top_k 40 --seed 0

The prompt (--prompt TEXT or --prompt_file F) is encoded with the vocabulary of the corpus the
run was trained on (read from its config.json; --dataset/--data override): words for the word
corpora, UTF-8 bytes for enwik8-format corpora, characters for text8. Decoding continues segment
by segment as training did, memory written and the XL cache updated at every boundary, with cached
keys and values inside a segment (--no_cache re-encodes the segment for every token, for
comparison). A run of the hf_lm family (RMT over a Hugging Face causal LM) reads the prompt with
its backbone's tokenizer (--chat: in its chat template, as a user turn) and decodes with the
backbone's own key/value cache (rmt.hf), stopping at the backbone's end-of-sequence id. --temperature
0 is greedy. The continuation is printed to stdout; a line of timing to stderr.
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

import torch

from rmt import config
from rmt.errors import exits_on_error
from rmt.families import hf_lm
from rmt.lm.corpus import DATASETS, load_vocab
from rmt.lm.evaluation import default_data_dir
from rmt.lm.text import TextCodec
from rmt.model.generation import generate
from rmt.tasks.registry import TASK_NAMES
from rmt.training import session
from rmt.training.backbones import load_tokenizer
from rmt.training.checkpoint import CheckpointError, load_model, run_config
from rmt.training.runtime import Runtime


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rmt.generate", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="a language-model checkpoint of ours")
    prompt = p.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="the prompt text")
    prompt.add_argument("--prompt_file", help="a UTF-8 file holding the prompt")
    p.add_argument("--max_new_tokens", type=int, default=100, help="tokens to generate (default 100)")
    p.add_argument("--temperature", type=float, default=1.0, help="0: greedy (default 1.0)")
    p.add_argument("--top_k", type=int, default=0, help="sample from the k likeliest tokens (0: all)")
    p.add_argument("--top_p", type=float, default=1.0, help="nucleus sampling mass (1.0: all)")
    p.add_argument("--seed", type=int, default=None, help="makes sampling reproducible")
    p.add_argument("--dataset", default=None, choices=DATASETS, help="corpus (default: the run's)")
    p.add_argument("--data", default=None, help="data directory (default: the run's)")
    p.add_argument("--no_cache", action="store_true", help="re-encode the segment for every token (slow)")
    p.add_argument("--chat", action="store_true",
                   help="hf_lm runs: put the prompt in the backbone's chat template as a user turn (instruct models)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    return p


def read_prompt(args, parser) -> str:
    if args.prompt is not None:
        return args.prompt
    try:
        return pathlib.Path(args.prompt_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        parser.error(f"cannot read --prompt_file {args.prompt_file}: {e}")


@exits_on_error
def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.max_new_tokens <= 0 or args.temperature < 0 or args.top_k < 0 or not 0 < args.top_p <= 1:
        parser.error("need --max_new_tokens >= 1 (a generation of nothing is refused, not printed as the prompt), "
                     "--temperature >= 0, --top_k >= 0 and 0 < --top_p <= 1")
    text = read_prompt(args, parser)
    train_args = run_config(args.checkpoint).get("args", {})
    dataset = args.dataset or train_args.get("dataset")
    if dataset in TASK_NAMES:
        parser.error(f"{args.checkpoint} is a {dataset} task run; generation is for language models "
                     "(the task evaluation decodes greedily: python -m rmt.evaluate --checkpoint ...)")
    if dataset == hf_lm.NAME:
        return generate_pretrained(args, parser, train_args, text)
    if dataset is None:
        parser.error(f"no config.json beside {args.checkpoint} names its corpus; pass --dataset and --data")
    data = args.data or (train_args.get("data") if train_args.get("dataset") == dataset else None) \
        or default_data_dir(dataset)
    runtime = Runtime(args.device)
    try:
        model, _ = load_model(args.checkpoint, runtime.device)
    except CheckpointError as e:
        raise SystemExit(f"error: {e}")
    try:
        vocab = load_vocab(data, dataset)
        codec = TextCodec(vocab, dataset)
        ids = codec.encode(text)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}")
    if len(vocab) != model.config.n_token:
        raise SystemExit(f"error: {args.checkpoint} has a vocabulary of {model.config.n_token}, {dataset} in {data} "
                         f"has {len(vocab)}; pass the --dataset/--data it was trained on")
    if not ids:
        parser.error("the prompt encodes to no tokens; give at least one word or character")
    prompt = torch.tensor([ids], device=runtime.device)
    model.config.ext_len = 0  # generation continues the stream token by token: no extended context
    t0 = time.time()
    new = generate(model, prompt, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                   top_p=args.top_p, seed=args.seed, use_cache=not args.no_cache)
    elapsed = time.time() - t0
    print(codec.decode(new[0].tolist()))
    print(timing(len(ids), new.size(1), elapsed, runtime), file=sys.stderr)
    return 0


def generate_pretrained(args, parser, train_args: dict, text: str) -> int:
    """An hf_lm run: its wrapper rebuilt as the run built it, the backbone's tokenizer both ways."""
    if args.no_cache:
        parser.error("--no_cache compares our own decoders; an hf_lm run decodes with the backbone's cache")
    runtime = Runtime(args.device)
    defaults = vars(config.training_parser(hf_lm.NAME).parse_args([]))  # flags newer than the run
    run_args = argparse.Namespace(**{**defaults, **train_args, "eval_only": True, "eval_checkpoint": args.checkpoint})
    model = session.build_model(run_args, hf_lm.PretrainedLM(run_args, runtime), runtime).eval()
    tokenizer = load_tokenizer(train_args["backbone"])
    if args.chat:
        if not tokenizer.chat_template:
            parser.error(f"--chat: the tokenizer of {train_args['backbone']} has no chat template")
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                            tokenize=True, return_dict=True)["input_ids"]
    else:
        ids = tokenizer(text, add_special_tokens=False).input_ids
    if not ids:
        parser.error("the prompt encodes to no tokens")
    t0 = time.time()
    out = model.generate(torch.tensor([ids], device=runtime.device), max_new_tokens=args.max_new_tokens,
                         do_sample=args.temperature > 0, temperature=args.temperature or 1.0, top_k=args.top_k,
                         top_p=args.top_p, seed=args.seed)  # stops at the backbone's eos id
    elapsed = time.time() - t0
    new = out[0, len(ids):].tolist()
    print(tokenizer.decode(new, skip_special_tokens=True))
    print(timing(len(ids), len(new), elapsed, runtime), file=sys.stderr)
    return 0


def timing(n_prompt: int, n_new: int, elapsed: float, runtime) -> str:
    return (f"{n_prompt} prompt tokens, {n_new} generated in {elapsed:.2f} s "
            f"({n_new / max(elapsed, 1e-9):.1f} tokens/s) | {runtime.describe()}")


if __name__ == "__main__":
    sys.exit(main())
