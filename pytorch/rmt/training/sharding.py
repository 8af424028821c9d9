"""FSDP2 (`fully_shard`) for the families over a Hugging Face backbone (`--fsdp`).

Each decoder layer of the backbone is its own shard group and the wrapper (memory, embeddings,
final norm, LM head) the root one: between uses a process holds 1/world of every parameter,
gradient and optimizer moment, so a backbone too large for one device trains on several.
torchrun starts the processes as for DDP; the gradients arrive averaged and sharded, so the
trainer's own all-reduce is skipped.

Checkpoints stay ordinary: the full state dict is gathered to rank 0 and written as one file
(loadable without --fsdp for evaluation), and a sharded run resumes from it on any number of
processes. The optimizer's state is keyed by parameter name there (torch.distributed.checkpoint's
full format), so a run trained with --fsdp resumes with --fsdp.
"""
from __future__ import annotations

import torch
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)
from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor

# Methods of the wrapper that run the backbone outside forward: FSDP must gather for them too.
FORWARD_METHODS = ("read", "generate")
GATHERED = StateDictOptions(full_state_dict=True, cpu_offload=True)  # whole tensors, on rank 0 only


def shard(model: torch.nn.Module) -> torch.nn.Module:
    """Shard `model` in place across the default process group; returns it."""
    from rmt.hf.modeling import decoder_layers  # only the families over a Hugging Face backbone shard

    layers = decoder_layers(model)
    if not layers:
        raise ValueError(f"--fsdp: the backbone of {type(model).__name__} names no decoder layer class "
                         "(_no_split_modules) to shard by")
    for layer in layers:
        fully_shard(layer)
    fully_shard(model)
    for name in FORWARD_METHODS:
        if hasattr(model, name):
            register_fsdp_forward_method(model, name)
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    return isinstance(model, FSDPModule)


def whole(t: torch.Tensor) -> torch.Tensor:
    """A sharded value (a gradient norm) made whole on every rank; any other tensor as it is."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def gathered_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """(model, optimizer) full state dicts on rank 0 (empty elsewhere); every rank must call it."""
    return (get_model_state_dict(model, options=GATHERED),
            get_optimizer_state_dict(model, optimizer, options=GATHERED))


def load_gathered(model: torch.nn.Module, model_state: dict, optimizer: torch.optim.Optimizer | None = None,
                  optimizer_state: dict | None = None, from_rank0: bool = False) -> None:
    """Full state dicts (as gathered_state returns them) into the shards: read on every rank, or
    with from_rank0 on rank 0 only (the others pass {}) and broadcast from there."""
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=from_rank0)
    set_model_state_dict(model, model_state, options=options)
    if optimizer is not None:
        set_optimizer_state_dict(model, optimizer, optimizer_state, options=options)
