"""The one training loop, shared by the language-model and the algorithmic-task drivers.

A driver supplies three callables:
- `train_batch(step) -> dict` runs forward and backward for one optimiser step (it owns the
  data, the carried memory state and gradient accumulation) and returns at least `loss` and
  `tokens`;
- `evaluate(split) -> dict` returns at least `loss` (and whatever metrics it reports);
- `extra_state()` returns the data position and carried memory, saved in every checkpoint;
  `resume()` hands it back to the driver, which restores them, so a resumed run continues bit
  for bit.
The loop owns the optimiser step, clipping, schedule, logging, evaluation, checkpoints, and a
clean stop on SIGTERM/SIGINT (a checkpoint is saved first).
"""
from __future__ import annotations

import math
import os
import pathlib
import signal
import time

import torch

from .checkpoint import load_file, save_atomic
from .runtime import rng_state, set_rng_state

LAST, BEST = "checkpoint_last.pt", "checkpoint_best.pt"


class StopRequest:
    """Turns SIGTERM/SIGINT into a flag the loop checks between steps."""

    def __init__(self):
        self.requested = False
        self._old = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._old[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.requested = True

    def restore(self):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


class Trainer:
    def __init__(self, model, raw_model, optimizer, schedule, runtime, logger, run_dir, args, model_config: dict,
                 select_by: str = "loss"):
        self.model, self.raw_model = model, raw_model  # raw_model: unwrapped, uncompiled (for saving)
        self.optimizer, self.schedule = optimizer, schedule
        self.runtime, self.logger, self.run_dir, self.args = runtime, logger, run_dir, args
        self.model_config = model_config
        self.select_by = select_by  # "loss" (lower is better) or a metric name (higher is better)
        self.step = 0
        self.best = None

    # ---- checkpoints --------------------------------------------------------------------------

    def state_dict(self, extra: dict) -> dict:
        return {
            "config": self.model_config, "model": self.raw_model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
            "scaler": self.runtime.scaler.state_dict(), "rng": rng_state(), "step": self.step,
            "best": self.best, "extra": extra,
        }

    def save(self, name: str, extra: dict) -> None:
        if self.runtime.is_main and self.run_dir is not None:
            save_atomic(self.state_dict(extra), self.run_dir / name)

    def resume(self, path: pathlib.Path) -> dict:
        """Load a training checkpoint; returns its driver-specific `extra` state."""
        ckpt = load_file(path, map_location=self.runtime.device)
        missing = {"model", "optimizer", "schedule", "rng", "step"} - set(ckpt)
        if missing:
            raise SystemExit(f"error: {path} is not a training checkpoint (missing {sorted(missing)})")
        self.raw_model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.schedule.load_state_dict(ckpt["schedule"])
        self.runtime.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        self.step, self.best = ckpt["step"], ckpt["best"]
        return ckpt["extra"]

    # ---- the loop -----------------------------------------------------------------------------

    def _is_better(self, metrics: dict) -> bool:
        if self.best is None:
            return True
        if self.select_by == "loss":
            return metrics["loss"] < self.best
        return metrics[self.select_by] > self.best

    def optimizer_step(self) -> float:
        scaler = self.runtime.scaler
        params = [p for p in self.raw_model.parameters() if p.requires_grad]
        self.runtime.all_reduce_grads(params)  # may give a rank zeros where another has a gradient
        params = [p for p in params if p.grad is not None]
        scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.args.clip) if self.args.clip > 0 else \
            torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
        scaler.step(self.optimizer)
        scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return float(grad_norm)

    def fit(self, train_batch, evaluate, extra_state, on_eval=None) -> None:
        args, log = self.args, self.logger
        stop = StopRequest()
        kill_after = int(os.environ.get("RMT_KILL_AFTER_STEP", "-1"))  # fault injection for resume tests
        window = {"loss": 0.0, "tokens": 0, "steps": 0, "t0": time.time(), "grad_norm": 0.0}
        t_start, time_limit = time.time(), getattr(args, "max_time", 0) * 60
        self.model.train()
        try:
            while self.step < args.max_step:
                if self.runtime.any_rank(stop.requested):  # all ranks stop at the same step
                    log.log(f"stop requested: checkpoint saved at step {self.step}")
                    self.save(LAST, extra_state())
                    break
                lr = self.schedule.step(self.step)
                out = train_batch(self.step)
                grad_norm = self.optimizer_step()
                self.step += 1
                window["loss"] += out["loss"]
                window["tokens"] += out["tokens"]
                window["steps"] += 1
                window["grad_norm"] += grad_norm
                log.advance(1, loss=f"{out['loss']:.3f}")
                if self.step % args.log_interval == 0 or self.step == args.max_step:
                    self._log_window(window, lr, out)
                out_of_time = time_limit > 0 and self.runtime.any_rank(time.time() - t_start > time_limit)
                if self.step % args.eval_interval == 0 or self.step == args.max_step or out_of_time:
                    self._validate(evaluate, extra_state, on_eval)
                if out_of_time:
                    log.log(f"time limit of {args.max_time:g} min reached at step {self.step}")
                    args.max_step = self.step  # results rows record the steps actually run
                    break
                if self.step == kill_after:
                    os.kill(os.getpid(), signal.SIGKILL)
        finally:
            stop.restore()

    def _validate(self, evaluate, extra_state, on_eval) -> None:
        metrics = evaluate("valid")
        self.schedule.observe(metrics["loss"])
        improved = self._is_better(metrics)
        if improved:
            self.best = metrics["loss"] if self.select_by == "loss" else metrics[self.select_by]
            self.save(BEST, extra_state())
        self.save(LAST, extra_state())
        self.logger.log(f"eval step {self.step} | " + " | ".join(f"valid {k} {v:.4f}" for k, v in metrics.items())
                        + (" | best" if improved else ""))
        self.logger.scalars(self.step, {f"valid/{k}": v for k, v in metrics.items()})
        if on_eval is not None:
            on_eval(metrics)
        self.model.train()

    def _log_window(self, window: dict, lr: float, out: dict) -> None:
        n = max(window["steps"], 1)
        elapsed = time.time() - window["t0"]
        loss = window["loss"] / n
        tok_s = window["tokens"] / max(elapsed, 1e-9) * self.runtime.world
        values = {"train/loss": loss, "train/lr": lr, "train/grad_norm": window["grad_norm"] / n,
                  "train/tokens_per_s": tok_s}
        values.update({f"train/{k}": v for k, v in out.items() if k not in ("loss", "tokens")})
        unit = "bpc" if getattr(self.args, "dataset", "") in ("enwik8", "text8") else "ppl"
        shown = loss / math.log(2) if unit == "bpc" else math.exp(min(loss, 50))
        self.logger.log(f"step {self.step:>7d}/{self.args.max_step} | lr {lr:.3g} | {elapsed / n * 1000:6.1f} ms/step"
                        f" | {tok_s:8.0f} tok/s | loss {loss:.4f} | {unit} {shown:.3f}")
        self.logger.scalars(self.step, values)
        self.last_tokens_per_s = tok_s
        window.update(loss=0.0, tokens=0, steps=0, t0=time.time(), grad_norm=0.0)


def result_row(args, model_cfg, runtime, run_dir, task: str, split: str, n_segments, train_time_s: float,
               tokens_per_s: float, **metrics) -> dict:
    """One results row (schema in rmt.results) with the columns every driver fills the same way."""
    from .results import model_kind, run_metadata

    return {
        **run_metadata(runtime.describe()), "run_id": run_dir.name if run_dir else "", "scale": args.scale,
        "task": task, "model_kind": model_kind(model_cfg.num_mem_tokens, model_cfg.mem_len, model_cfg.mem_at_end),
        "seed": args.seed, "n_layer": model_cfg.n_layer, "d_model": model_cfg.d_model, "n_head": model_cfg.n_head,
        "d_head": model_cfg.d_head, "d_inner": model_cfg.d_inner, "tgt_len": args.tgt_len,
        "eval_tgt_len": args.eval_tgt_len, "mem_len": model_cfg.mem_len, "num_mem_tokens": model_cfg.num_mem_tokens,
        "mem_backprop_depth": args.mem_backprop_depth, "mem_at_end": model_cfg.mem_at_end,
        "read_mem_from_cache": model_cfg.read_mem_from_cache, "n_segments": n_segments,
        "batch_size": args.batch_size, "max_step": args.max_step, "lr": args.lr, "split": split,
        "tokens_per_s": round(tokens_per_s, 1), "peak_mem_mb": round(runtime.peak_mem_mb(), 1),
        "train_time_s": round(train_time_s, 1), "run_dir": str(run_dir or ""),
        "config_json": {k: v for k, v in vars(args).items()}, **metrics,
    }
