"""Checkpoint files: plain state dicts written atomically, read with `weights_only=True`.

A model file is {"config": ModelConfig dict, "model": state_dict}; a training checkpoint adds
optimizer, scheduler, scaler, RNG, data position and carried memory state to the same dict.
"""
from __future__ import annotations

import json
import os
import pathlib

import torch

from rmt.atomic import atomic_write
from rmt.errors import CheckpointError  # noqa: F401 (raised here; importers take it from here too)


def save_atomic(obj: dict, path: str | os.PathLike) -> None:
    """torch.save through the atomic writer: an interrupted save keeps the previous file."""
    atomic_write(path, lambda f: torch.save(obj, f))


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (load_state_dict's run over many)."""
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else ""


def load_file(path: str | os.PathLike, map_location="cpu") -> dict:
    """Load a checkpoint dict safely; a bad file raises CheckpointError with one clear line."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file {path}")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001
        # Garbage bytes reach the weights-only unpickler, which fails in many ways (struct.error,
        # zipfile.BadZipFile, UnpicklingError, OSError, ...); it never runs code, so any of them
        # just means "not a checkpoint".
        first = f"{type(e).__name__}: {first_line(e)}" if first_line(e) else type(e).__name__
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({first}); it may be truncated or a pickled module: "
            "re-save it as a state dict"
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, expected a dict of state dicts")
    weights = obj.get("model")
    bad = next((k for k, t in weights.items() if torch.is_tensor(t) and t.is_floating_point()
                and not torch.isfinite(t).all()), None) if isinstance(weights, dict) else None
    if bad is not None:  # a diverged model would be evaluated (or trained on) as if it were one
        raise CheckpointError(f"{path} holds non-finite weights (NaN or inf in {bad}): the run diverged before "
                              "it was saved; use an earlier checkpoint")
    return obj


def load_model(path: str | os.PathLike, map_location="cpu"):
    """Rebuild a MemTransformerLM from a file holding {"config", "model"} (any checkpoint of ours)."""
    from rmt.model.transformer import MemTransformerLM

    ckpt = load_file(path, map_location)
    if "config" not in ckpt or "model" not in ckpt:
        raise CheckpointError(f"{path} has no 'config'/'model' entries; is it an original-code file? "
                              "convert it with `python -m rmt.tools.convert from-original`")
    try:
        model = MemTransformerLM.from_config(ckpt["config"])
        model.load_state_dict(ckpt["model"])
    except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:  # a dict of ours, not a model
        raise CheckpointError(f"{path} does not hold a usable model ({type(e).__name__}: {first_line(e)})") from None
    return model, ckpt


def run_config(checkpoint: str | os.PathLike) -> dict:
    """The training run's config.json beside a checkpoint (its flags under "args"), or {}."""
    try:
        cfg = json.loads((pathlib.Path(checkpoint).parent / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return cfg if isinstance(cfg, dict) else {}
