"""Optimisers and learning-rate schedules with the original training scripts' rules.

- warm-up (cosine, constant, dev_perf): lr = lr0 * (step + 1) / warmup_step for step < warmup_step;
- cosine: eta_min + (lr0 - eta_min)(1 + cos(pi * step / max_step)) / 2 over the FULL max_step
  (the original did not shorten it by the warm-up);
- inv_sqrt: step / warmup^1.5 while step <= warmup, then step^-0.5 (1 at step 0 without warm-up);
- dev_perf: multiply by decay_rate after `patience` evaluations without improvement, not
  below lr_min (ReduceLROnPlateau's defaults: an improvement beats the best by a relative 1e-4);
- constant: warm-up only.
"""
from __future__ import annotations

import math

import torch


def parameter_groups(model, args) -> list[dict]:
    """One group at --lr, or with --mem_lr (the families over a pretrained backbone) a second for
    the wrapper's new parameters (model.memory_parameters()): they start from scratch where the
    backbone's weights are already trained, and at a backbone's fine-tuning rate barely move.
    lr_scale keeps the second group's ratio to --lr under every schedule."""
    params = list(model.parameters())
    if getattr(args, "mem_lr", None) is None:
        return [{"params": params}]
    own = {id(p) for p in model.memory_parameters().values()}
    return [{"params": [p for p in params if id(p) not in own]},
            {"params": [p for p in params if id(p) in own], "lr_scale": args.mem_lr / args.lr}]


def build_optimizer(params, args) -> torch.optim.Optimizer:
    if args.optim == "adam":
        return torch.optim.Adam(params, lr=args.lr)
    if args.optim == "sgd":
        return torch.optim.SGD(params, lr=args.lr, momentum=args.mom)
    if args.optim == "adagrad":
        return torch.optim.Adagrad(params, lr=args.lr)
    raise ValueError(f"unknown optimiser {args.optim!r}")


PLATEAU_THRESHOLD = 1e-4  # torch.optim.lr_scheduler.ReduceLROnPlateau's default (mode 'rel'), as the original


class LRSchedule:
    """Sets the learning rate from the step count; `observe(val_loss)` drives dev_perf."""

    def __init__(self, optimizer, args):
        self.optimizer = optimizer
        self.kind, self.lr0 = args.scheduler, args.lr
        self.warmup, self.max_step = args.warmup_step, args.max_step
        self.eta_min, self.lr_min = args.eta_min, args.lr_min
        self.decay_rate, self.patience = args.decay_rate, args.patience
        self.scale = 1.0  # dev_perf's accumulated decay
        self.best = math.inf
        self.bad_evals = 0

    def lr_at(self, step: int) -> float:
        if self.kind == "inv_sqrt":
            if step == 0 and self.warmup == 0:
                return self.lr0
            if step <= self.warmup:
                return self.lr0 * step / self.warmup**1.5
            return self.lr0 / math.sqrt(step)
        if step < self.warmup:
            return self.lr0 * (step + 1) / self.warmup  # the first update is not wasted at lr 0
        if self.kind == "cosine":
            return self.eta_min + (self.lr0 - self.eta_min) * (1 + math.cos(math.pi * step / self.max_step)) / 2
        if self.kind == "dev_perf":
            return max(self.lr0 * self.scale, self.lr_min)
        return self.lr0

    def step(self, step: int) -> float:
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr

    def observe(self, val_loss: float) -> None:
        if self.kind != "dev_perf":
            return
        if val_loss < self.best * (1 - PLATEAU_THRESHOLD):
            self.best, self.bad_evals = val_loss, 0
        else:
            self.bad_evals += 1
            if self.bad_evals > self.patience:
                self.scale *= self.decay_rate
                self.bad_evals = 0

    def state_dict(self) -> dict:
        return {"scale": self.scale, "best": self.best, "bad_evals": self.bad_evals}

    def load_state_dict(self, d: dict) -> None:
        self.scale, self.best, self.bad_evals = d["scale"], d["best"], d["bad_evals"]
