"""Convert state dicts between the original LM-RMT code's parameter names and ours.

    python -m rmt.tools.convert from-original ORIG.pt OURS.pt [--config CONFIG.json]
    python -m rmt.tools.convert to-original OURS.pt ORIG.pt

ORIG.pt is either a bare state dict saved from the original `MemTransformerLM`
(`torch.save(model.state_dict(), path)`) or a dict {"config": kwargs, "state_dict": ...}
(the golden-file format). A bare state dict needs `--config` with the constructor kwargs.
The original saved whole pickled modules; load one in the original code base and save its
`state_dict()` first. OURS.pt is {"config": ModelConfig dict, "model": state_dict}.
"""
from __future__ import annotations

import argparse
import json
import re
import sys

from rmt.errors import exits_on_error
from rmt.model.config import ModelConfig
from rmt.model.layers import PositionalEmbedding
from rmt.training.checkpoint import CheckpointError, first_line, load_file, save_atomic

# (original name prefix, our name prefix); {i} stands for a layer or cluster index.
_NAME_PAIRS = [
    ("layers.{i}.dec_attn.", "layers.{i}.attn."),
    ("layers.{i}.pos_ff.CoreNet.0.", "layers.{i}.ff.fc1."),
    ("layers.{i}.pos_ff.CoreNet.3.", "layers.{i}.ff.fc2."),
    ("layers.{i}.pos_ff.layer_norm.", "layers.{i}.ff.layer_norm."),
    ("word_emb.emb_projs_{i}", "word_emb.emb_projs.{i}"),
    ("crit.out_projs_{i}", "crit.out_projs.{i}"),
]


def _rules(forward: bool):
    def pattern(template):
        return "^" + re.escape(template).replace(r"\{i\}", r"(\d+)")

    return [(pattern(a), b.replace("{i}", r"\1")) if forward else (pattern(b), a.replace("{i}", r"\1"))
            for a, b in _NAME_PAIRS]


_RENAMES, _BACK = _rules(forward=True), _rules(forward=False)
_UNSUPPORTED = re.compile(r"^(r_emb|r_bias)$|\.r_emb$")


def _rename(name: str, rules) -> str:
    for pattern, repl in rules:
        new, n = re.subn(pattern, repl, name)
        if n:
            return new
    return name


def from_original(state_dict: dict) -> dict:
    """Original parameter names/shapes -> ours. Tied tensors keep sharing storage."""
    out = {}
    for name, value in state_dict.items():
        if name == "pos_emb.inv_freq":
            continue  # a constant we rebuild
        if _UNSUPPORTED.search(name):
            raise ValueError(f"parameter {name} belongs to attn_type 1 or 3, which this code does not support")
        if name == "mem_tokens":
            value = value.reshape(value.shape[0], value.shape[-1])  # (M, 1, C) -> (M, C)
        out[_rename(name, _RENAMES)] = value
    return out


def to_original(state_dict: dict, d_model: int) -> dict:
    """Our names/shapes -> the original's, ready for `load_state_dict(strict=True)` there."""
    out = {}
    for name, value in state_dict.items():
        if name == "mem_tokens":
            value = value.unsqueeze(1)  # (M, C) -> (M, 1, C)
        out[_rename(name, _BACK)] = value
    out["pos_emb.inv_freq"] = PositionalEmbedding(d_model).inv_freq
    return out


def load_original_model(state_dict: dict, config: dict):
    """Build our model holding the weights of an original-code state dict."""
    from rmt.model.transformer import MemTransformerLM

    model = MemTransformerLM.from_config(ModelConfig.from_dict(config))  # extra keys ignored
    missing, unexpected = model.load_state_dict(from_original(state_dict), strict=False)
    if missing or unexpected:
        raise ValueError(f"state dict does not match the config: missing {missing}, unexpected {unexpected}")
    return model


def _cmd_from_original(args) -> None:
    obj = load_file(args.src)
    if "state_dict" in obj:
        state_dict, config = obj["state_dict"], obj.get("config")
    else:
        state_dict, config = obj, None
    if args.config:
        with open(args.config) as f:
            config = json.load(f)
    if config is None:
        raise ValueError(f"{args.src} has no 'config'; pass --config with the original constructor kwargs as JSON")
    model = load_original_model(state_dict, config)
    save_atomic({"config": model.config.to_dict(), "model": model.state_dict()}, args.dst)
    print(f"wrote {args.dst}")


def _cmd_to_original(args) -> None:
    obj = load_file(args.src)
    if "model" not in obj or "config" not in obj:
        raise ValueError(f"{args.src} is not one of our model files (no 'config'/'model')")
    cfg = ModelConfig.from_dict(obj["config"])
    config = {k: v for k, v in cfg.to_dict().items() if k != "mem_init"}
    save_atomic({"config": config, "state_dict": to_original(obj["model"], cfg.d_model)}, args.dst)
    print(f"wrote {args.dst}")


@exits_on_error
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rmt.tools.convert", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("from-original", help="original-code state dict -> our model file")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--config", help="JSON file with the original constructor kwargs")
    p.set_defaults(func=_cmd_from_original)
    p = sub.add_parser("to-original", help="our model file -> original-code state dict + config")
    p.add_argument("src")
    p.add_argument("dst")
    p.set_defaults(func=_cmd_to_original)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (CheckpointError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (TypeError, KeyError, AttributeError, RuntimeError) as e:  # weights or config of another shape
        print(f"error: {args.src} does not convert ({type(e).__name__}: {first_line(e)}); check that it is a "
              f"model file of the kind {args.cmd} reads and that --config describes it", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
