"""The one training loop, for language modelling and the algorithmic tasks alike.

The Trainer owns the model's optimiser and schedule, the optimiser step (gradient all-reduce,
clipping, AMP scaling), validation and model selection, checkpoints, logging, the time limit
and a clean stop on SIGTERM/SIGINT (a checkpoint is saved first). What differs between a corpus
and a task lives in a *family* (rmt.families.base.Family): the trainer calls its `train_batch`,
`evaluate`, `after_validation`, `state_dict` and `load_state_dict` (data position and carried
memory, saved in every checkpoint, so that a resumed run continues bit for bit).

Divergence: a step whose loss or gradient norm is not finite (outside fp16, whose scaler skips
its own overflows) is never applied. The run stops with a one-line error and exit status 1,
checkpoint_last.pt and checkpoint_best.pt keep the last validated state, and no results row is
written; `--skip_nonfinite` drops such steps and trains on. A non-finite validation loss stops
the run the same way (nothing is saved from it).
"""
from __future__ import annotations

import math
import os
import pathlib
import shutil
import signal
import time

import torch

from rmt.errors import CheckpointError, RunError
from rmt.lm.evaluation import metric_name
from rmt.training import sharding
from rmt.training.checkpoint import first_line, load_file, save_atomic
from rmt.training.optim import LRSchedule, build_optimizer, parameter_groups
from rmt.training.runtime import compile_model, rng_state, set_rng_state

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
    def __init__(self, model, args, runtime, logger, run_dir: pathlib.Path | None, select_by: str = "loss"):
        self.raw_model = model  # unwrapped, uncompiled: what is saved and evaluated
        self.sharded = sharding.is_sharded(model)  # FSDP2 (--fsdp): state gathered to save, scattered to load
        self.model = compile_model(model) if args.compile else model
        self.optimizer = build_optimizer(parameter_groups(model, args), args)
        self.schedule = LRSchedule(self.optimizer, args)
        self.args, self.runtime, self.logger, self.run_dir = args, runtime, logger, run_dir
        self.select_by = select_by  # "loss" (lower is better) or a metric name (higher is better)
        self.step = 0
        self.skipped = 0  # steps dropped for a non-finite loss or gradient (--skip_nonfinite)
        self.best = None
        self.tokens_per_s = 0.0  # of the last logged window, for the results row

    # ---- checkpoints --------------------------------------------------------------------------

    def state_dict(self, family) -> dict:
        if self.sharded:  # a collective: every rank gathers, rank 0 receives
            model, optimizer = sharding.gathered_state(self.raw_model, self.optimizer)
        else:
            model, optimizer = self.raw_model.state_dict(), self.optimizer.state_dict()
        return {
            "config": self.raw_model.config.to_dict(), "model": model,
            "optimizer": optimizer, "schedule": self.schedule.state_dict(),
            "scaler": self.runtime.scaler.state_dict(), "rng": rng_state(), "step": self.step,
            "best": self.best, "extra": family.state_dict(),
        }

    def save(self, name: str, family) -> None:
        state = self.state_dict(family)  # on every rank: the family may gather rows from all of them
        if self.runtime.is_main and self.run_dir is not None:
            try:
                save_atomic(state, self.run_dir / name)
            except OSError as e:  # a full disk, a short write: the atomic writer kept the previous file
                free = shutil.disk_usage(self.run_dir).free
                raise RunError(f"cannot write {self.run_dir / name} ({e.strerror or e}; {free / 2**20:,.1f} MiB free "
                               f"on its disk); the previous {name}, if any, is kept: free space and resume with "
                               f"--restart --restart_dir {self.run_dir}") from None

    def resume(self, path: pathlib.Path, family) -> None:
        """Load a training checkpoint into the model, the optimiser, the loop and the family."""
        ckpt = load_file(path, map_location=self.runtime.device)
        missing = {"model", "optimizer", "schedule", "rng", "step"} - set(ckpt)
        if missing:
            raise CheckpointError(f"{path} is not a training checkpoint (missing {sorted(missing)})")
        try:
            saved = set(ckpt["optimizer"]["param_groups"][0])
            if saved != set(self.optimizer.param_groups[0]):  # another --optim: loading would not notice
                raise ValueError(f"the checkpoint's optimiser has settings {sorted(saved - {'params'})}")
            if self.sharded:
                sharding.load_gathered(self.raw_model, ckpt["model"], self.optimizer, ckpt["optimizer"])
            else:
                self.raw_model.load_state_dict(ckpt["model"])
                self.optimizer.load_state_dict(ckpt["optimizer"])
            self.schedule.load_state_dict(ckpt["schedule"])
            self.runtime.scaler.load_state_dict(ckpt["scaler"])
            set_rng_state(ckpt["rng"])
            self.step, self.best = int(ckpt["step"]), ckpt["best"]
            family.load_state_dict(ckpt["extra"])
        except (RuntimeError, KeyError, ValueError, TypeError, IndexError, AttributeError) as e:
            raise CheckpointError(f"{path} does not fit this run ({type(e).__name__}: {first_line(e)}); restart "
                             "with the flags it was trained with (model sizes, --optim, --mem_lr, task)")

    def load_best(self) -> None:
        """The best validated weights into the model (kept as is when none was saved): rank 0's,
        or, for a sharded model (tested on every rank), rank 0's file scattered to all."""
        found = self.runtime.is_main and self.run_dir is not None and (self.run_dir / BEST).is_file()
        if self.sharded:
            if self.runtime.any_rank(found):
                state = load_file(self.run_dir / BEST)["model"] if self.runtime.is_main else {}
                sharding.load_gathered(self.raw_model, state, from_rank0=True)
        elif found:
            self.raw_model.load_state_dict(load_file(self.run_dir / BEST, self.runtime.device)["model"])

    # ---- the loop -----------------------------------------------------------------------------

    def optimizer_step(self, loss: float) -> float | None:
        """Apply the accumulated gradients; returns their norm, or None for a dropped step."""
        scaler = self.runtime.scaler
        params = [p for p in self.raw_model.parameters() if p.requires_grad]
        if not self.sharded:  # FSDP has averaged (and sharded) them in the backward
            self.runtime.all_reduce_grads(params)  # may give a rank zeros where another has a gradient
        params = [p for p in params if p.grad is not None]
        scaler.unscale_(self.optimizer)
        if self.args.clip > 0:
            grad_norm = sharding.whole(torch.nn.utils.clip_grad_norm_(params, self.args.clip))
        elif self.sharded:
            grad_norm = sharding.whole(torch.nn.utils.get_total_norm([p.grad for p in params]))
        else:
            grad_norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params]))
        bad = not (math.isfinite(loss) and math.isfinite(float(grad_norm)))
        if not scaler.is_enabled() and self.runtime.any_rank(bad):  # every rank drops the same step
            self.optimizer.zero_grad(set_to_none=True)
            self._nonfinite(f"loss {loss:.4g}, gradient norm {float(grad_norm):.4g}")
            return None
        scaler.step(self.optimizer)
        scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return float(grad_norm)

    def _nonfinite(self, what: str) -> None:
        if self.args.skip_nonfinite:
            self.skipped += 1
            if self.skipped == 1 or self.skipped % 100 == 0:
                self.logger.log(f"step {self.step + 1}: {what}; step skipped (--skip_nonfinite; {self.skipped} so far)")
            return
        message = (f"training diverged at step {self.step + 1} ({what}); the step was not applied. "
                   f"{LAST} keeps the last validated state and no results row is written: lower --lr or "
                   "--clip, raise --warmup_step, or pass --skip_nonfinite to skip such steps")
        self.logger.log(f"error: {message}")
        raise RunError(message)

    def fit(self, family) -> bool:
        """Train to --max_step (or --max_time). Returns False when stopped by a signal, True when
        training ended (the step count reached, or the time limit: `self.step` says which)."""
        args, log = self.args, self.logger
        stop = StopRequest()
        kill_after = int(os.environ.get("RMT_KILL_AFTER_STEP", "-1"))  # fault injection for resume tests
        window = Window()
        t_start, time_limit = time.time(), args.max_time * 60
        self.model.train()
        try:
            while self.step < args.max_step:
                if self.runtime.any_rank(stop.requested):  # all ranks stop at the same step
                    log.log(f"stop requested: checkpoint saved at step {self.step}")
                    self.save(LAST, family)
                    return False
                lr = self.schedule.step(self.step)
                out = family.train_batch(self.model, self.step)
                grad_norm = self.optimizer_step(out["loss"])
                if grad_norm is not None:
                    window.add(out, grad_norm)
                self.step += 1
                log.advance(1, loss=f"{out['loss']:.3f}")
                if (self.step % args.log_interval == 0 or self.step == args.max_step) and window.steps:
                    self._log_window(window, lr, out)
                out_of_time = time_limit > 0 and self.runtime.any_rank(time.time() - t_start > time_limit)
                if self.step % args.eval_interval == 0 or self.step == args.max_step or out_of_time:
                    self.validate(family)
                if out_of_time:
                    log.log(f"time limit of {args.max_time:g} min reached at step {self.step}")
                    return True
                if self.step == kill_after:
                    os.kill(os.getpid(), signal.SIGKILL)
            return True
        finally:
            stop.restore()

    def _is_better(self, metrics: dict) -> bool:
        if self.best is None:
            return True
        if self.select_by == "loss":
            return metrics["loss"] < self.best
        return metrics[self.select_by] > self.best

    def validate(self, family) -> None:
        metrics = family.evaluate(self.raw_model, "valid")
        if not math.isfinite(metrics["loss"]):
            message = (f"the validation loss at step {self.step} is {metrics['loss']}: the model diverged; "
                       f"{LAST} and {BEST} keep the last good validation, no results row is written (lower --lr)")
            self.logger.log(f"error: {message}")
            raise RunError(message)
        self.schedule.observe(metrics["loss"])
        improved = self._is_better(metrics)
        if improved:
            self.best = metrics[self.select_by]
            self.save(BEST, family)
        note = family.after_validation(metrics, self.step)
        if note:
            self.best = None  # selection restarts (a harder curriculum stage)
        self.save(LAST, family)  # after the stage change: a run resumed from here trains the new stage
        self.logger.log(f"eval step {self.step} | " + " | ".join(f"valid {k} {v:.4f}" for k, v in metrics.items())
                        + (" | best" if improved else ""))
        self.logger.scalars(self.step, {f"valid/{k}": v for k, v in metrics.items()})
        if note:
            self.logger.log(note)
        self.model.train()

    def _log_window(self, window: "Window", lr: float, out: dict) -> None:
        n, elapsed = window.steps, window.elapsed()
        loss = window.loss / n
        tok_s = window.tokens / max(elapsed, 1e-9) * self.runtime.world
        values = {"train/loss": loss, "train/lr": lr, "train/grad_norm": window.grad_norm / n,
                  "train/tokens_per_s": tok_s}
        values.update({f"train/{k}": v for k, v in out.items() if k not in ("loss", "tokens")})
        unit = metric_name(getattr(self.args, "dataset", ""))
        shown = loss / math.log(2) if unit == "bpc" else math.exp(min(loss, 50))
        self.logger.log(f"step {self.step:>7d}/{self.args.max_step} | lr {lr:.3g} | {elapsed / n * 1000:6.1f} ms/step"
                        f" | {tok_s:8.0f} tok/s | loss {loss:.4f} | {unit} {shown:.3f}")
        self.logger.scalars(self.step, values)
        self.tokens_per_s = tok_s
        window.reset()


class Window:
    """Sums over the steps since the last log line."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.loss, self.tokens, self.steps, self.grad_norm, self.t0 = 0.0, 0, 0, 0.0, time.time()

    def add(self, out: dict, grad_norm: float) -> None:
        self.loss += out["loss"]
        self.tokens += out["tokens"]
        self.grad_norm += grad_norm
        self.steps += 1

    def elapsed(self) -> float:
        return time.time() - self.t0
