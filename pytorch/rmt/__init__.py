"""Recurrent Memory Transformer (Bulatov et al., NeurIPS 2022) on a Transformer-XL core.

    from rmt import MemTransformerLM, ModelConfig, MemoryState, run_segments, score, classify
    model = MemTransformerLM.from_config(ModelConfig(n_token=100, num_mem_tokens=4))
    loss, state = model(x, y, MemoryState())       # memory is a value passed in and out

`rmt.hf` wraps Hugging Face models (RMTForCausalLM, RMTForSequenceClassification); it needs
transformers and is imported only when used. The names above load on first use, so `import rmt`
stays light.
"""
import importlib
import pathlib

# The checkout the package is installed from (editable): data/, runs/ and experiments/ live here.
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

_PUBLIC = {
    "MemTransformerLM": "rmt.model.transformer",
    "ModelConfig": "rmt.model.config",
    "MemoryState": "rmt.model.recurrence",
    "run_segments": "rmt.model.recurrence",
    "score": "rmt.model.recurrence",
    "classify": "rmt.model.recurrence",
    "MemoryAblation": "rmt.model.ablation",
}
__all__ = [*_PUBLIC, "REPO_ROOT"]


def __getattr__(name: str):
    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
        globals()[name] = value  # once: later lookups skip this function
        return value
    if name == "hf":  # a subpackage, imported on first use as any other would be
        return importlib.import_module("rmt.hf")
    raise AttributeError(f"module 'rmt' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_PUBLIC])
