"""What the drivers own and the model never touches: devices, DDP, precision, seeds, logging.

DDP is started by `torchrun` (it sets RANK / WORLD_SIZE / LOCAL_RANK); without it everything
runs in one process. Only rank 0 writes logs, checkpoints and results rows.
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import pathlib
import random
import shutil
import sys
import time

import numpy as np
import torch
import torch.distributed as dist

from rmt.errors import FlagError, RunError


class Runtime:
    def __init__(self, device: str = "auto", amp: str = "none", cuda_flag: bool = False):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        elif device == "cpu" and cuda_flag:
            device = "cuda"
        if device.startswith("cuda"):
            if not torch.cuda.is_available():
                raise FlagError("--device cuda requested but no CUDA device is available; use --device cpu")
            if device == "cuda":
                device = f"cuda:{local_rank}"
            torch.cuda.set_device(device)
        self.device = torch.device(device)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        if amp == "fp16" and self.device.type != "cuda":
            raise FlagError("--amp fp16 needs a CUDA device; use --amp bf16 or none on CPU")
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=amp == "fp16")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def describe(self) -> str:
        if self.device.type == "cuda":
            name = torch.cuda.get_device_name(self.device)
        else:
            name = f"cpu ({os.cpu_count()} cores)"
        return f"{name} x{self.world}" if self.world > 1 else name

    def peak_mem_mb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 2**20
        try:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
        except ImportError:  # pragma: no cover
            return float("nan")

    def available_bytes(self) -> int | None:
        """Memory free for this process's tensors: the GPU's free memory, or the machine's available
        memory (Linux); None when unknown."""
        if self.device.type == "cuda":
            return torch.cuda.mem_get_info(self.device)[0]
        return available_memory()

    def all_reduce_mean(self, t: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(t)
            t /= self.world
        return t

    def all_reduce_grads(self, params) -> None:
        """Average gradients over ranks in one flat buffer (DDP's effect, without its hooks,
        which do not fit several forward calls per backward through the memory).

        A parameter with no gradient on some ranks (e.g. an adaptive-softmax cluster without
        tokens in their rows) counts as zero there; one with no gradient anywhere stays None,
        as in one process. Without this the ranks' buffers differ in size."""
        if self.world == 1:
            return
        params = list(params)
        has_grad = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=self.device)
        dist.all_reduce(has_grad)
        for p, anywhere in zip(params, has_grad.tolist()):
            if anywhere and p.grad is None:
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in params if p.grad is not None]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        for g, part in zip(grads, flat.split([g.numel() for g in grads])):
            g.copy_(part.view_as(g))

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when `flag` is true on any (e.g. a stop signal seen by one)."""
        if self.world == 1:
            return flag
        t = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(t)
        return bool(t.item())

    def all_gather_rows(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's rows (dim 0) in rank order; shapes must match across ranks."""
        if self.world == 1:
            return t
        parts = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts)

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def available_memory() -> int | None:
    """The machine's available memory in bytes (Linux's MemAvailable), or None when unknown."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return None


def compile_model(model):
    """torch.compile with static shapes: one graph per segment shape, no recompiles while training."""
    return torch.compile(model, dynamic=False)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """All RNG states as tensors and plain values, so the checkpoint loads with weights_only."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def timestamp() -> str:
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def prepare_run_dir(args, default_name: str, checkpoint_bytes: int = 0) -> pathlib.Path:
    """WORK_DIR/RUN_NAME for a new run, or --restart_dir when resuming (logs continue there).
    Refused (RunError) when it cannot be written or its disk lacks room for two checkpoints of
    `checkpoint_bytes` (best and last) and the logs."""
    if args.restart:
        run_dir = pathlib.Path(args.restart_dir)
        if not (run_dir / "checkpoint_last.pt").is_file():
            raise RunError(f"no checkpoint_last.pt in --restart_dir {run_dir!s}; nothing to resume")
        if not os.access(run_dir, os.W_OK | os.X_OK):
            raise RunError(f"--restart_dir {run_dir} is not writable (read-only?): its checkpoints and logs go there")
    else:
        run_dir = pathlib.Path(args.work_dir) / (args.run_name or f"{default_name}-{timestamp()}")
    check_room(run_dir if run_dir.exists() else pathlib.Path(args.work_dir), 2 * checkpoint_bytes + 2**20)
    if not args.restart:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunError(f"cannot create the run directory {run_dir} ({e.strerror}); choose another --work_dir")
    lock_run_dir(run_dir)
    return run_dir


def check_room(path: pathlib.Path, need: int) -> None:
    """RunError unless the disk holding `path` (or its nearest existing parent) has `need` bytes free."""
    while not path.exists() and path != path.parent:
        path = path.parent
    free = shutil.disk_usage(path).free
    if free < need:
        raise RunError(f"the disk holding {path} has {free / 2**20:,.1f} MiB free; this run needs about "
                       f"{need / 2**20:,.1f} MiB for its checkpoints and logs: free space or choose another --work_dir")


_RUN_LOCKS: dict[str, object] = {}  # run directory -> its open lock file, held while the run lives


def lock_run_dir(run_dir: pathlib.Path) -> None:
    """Refuse a second live run in the same directory (same --run_name, or a restart of a running
    run) from another process; a run of this process there (called again in-process) has ended."""
    key = str(run_dir.resolve())
    release_run_dir(key)
    f = open(run_dir / ".lock", "a")
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise RunError(f"another run is using {run_dir} right now; give this one another --run_name")
    _RUN_LOCKS[key] = f


def release_run_dir(run_dir: str | pathlib.Path) -> None:
    f = _RUN_LOCKS.pop(str(pathlib.Path(run_dir).resolve()), None)
    if f is not None:
        f.close()


class RunLogger:
    """log.txt + stdout lines, TensorBoard scalars and, on a terminal, a tqdm progress bar."""

    def __init__(self, run_dir: pathlib.Path | None, enabled: bool = True, total: int = 0, initial: int = 0):
        self.enabled = enabled and run_dir is not None
        self.file = open(run_dir / "log.txt", "a") if self.enabled else None
        self.tb = None
        self.bar = None
        if self.enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb"))
            except ImportError:  # tensorboard is optional at run time
                self.tb = None
            if sys.stderr.isatty() and total:
                from tqdm import tqdm

                self.bar = tqdm(total=total, initial=initial, dynamic_ncols=True, leave=False)

    def log(self, msg: str) -> None:
        if not self.enabled:
            return
        line = f"{time.strftime('%H:%M:%S')} | {msg}"
        self.file.write(line + "\n")
        self.file.flush()
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def scalars(self, step: int, values: dict) -> None:
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)

    def advance(self, n: int = 1, **postfix) -> None:
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        if self.file is not None:
            self.file.close()
