"""Save and load algorithmic datasets in the original LM-RMT `.npy` layout.

    {dir}/{task}_{split}_X.npy, {dir}/{task}_{split}_y.npy   split in train/val/test, int64 (N, *)
    {dir}/{task}_meta.json                                    generator, kwargs, seed, sizes, vocab_size, ...

Writes are atomic (temp file in the same directory, then os.replace), so an interrupted run never leaves a
truncated array under the final name. Loading returns batch-first int64 tensors (N, T).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from rmt.atomic import atomic_write
from rmt.tasks.generators import DEFAULT_SIZES, make_splits, stack_src_tgt
from rmt.tasks.registry import TASK_NAMES, TaskSpec
from rmt.training.runtime import available_memory

SPLITS = ("train", "val", "test")


def split_paths(data_dir: str | os.PathLike, task: str, split: str) -> tuple[Path, Path]:
    """Paths of the X and y arrays of one split."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    d = Path(data_dir)
    return d / f"{task}_{split}_X.npy", d / f"{task}_{split}_y.npy"


def meta_path(data_dir: str | os.PathLike, task: str) -> Path:
    return Path(data_dir) / f"{task}_meta.json"


def _how_to_make(data_dir: str | os.PathLike, task: str) -> str:
    """The command that writes `task` into `data_dir`, for error messages."""
    base = max((n for n in TASK_NAMES if task.startswith(n)), key=len, default="TASK")
    rename = "" if base == task else f" --task_name {task}"
    return f"make it with: python3 -m rmt.tools.generate_data {base} --out {data_dir}{rename}"


def save_array(path: Path, arr: np.ndarray) -> None:
    """Atomically write one int64 array as .npy."""
    atomic_write(path, lambda f: np.save(f, np.ascontiguousarray(arr, dtype=np.int64), allow_pickle=False))


def save_meta(data_dir: str | os.PathLike, task: str, meta: dict) -> Path:
    """Atomically write {task}_meta.json."""
    path = meta_path(data_dir, task)
    text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))
    return path


def dataset_meta(spec: TaskSpec, seed: int, sizes: dict[str, int], task_name: str | None = None) -> dict:
    """What a driver needs to know about a written dataset (vocabulary, lengths) and how it was made."""
    return dict(task=spec.name, task_name=task_name or spec.name, generator=spec.generator.__name__,
                kwargs=dict(spec.default_kwargs), seed=seed, sizes=dict(sizes), stacked=spec.stacked,
                vocab_size=spec.vocab_size, sample_len=spec.sample_len, answer_size=spec.answer_size)


def save_dataset(data_dir: str | os.PathLike, task: str, splits: dict[str, tuple[np.ndarray, np.ndarray]],
                 meta: dict | None = None) -> list[Path]:
    """Write every split's X and y (and the meta file if given); returns the written paths."""
    written = []
    for split, (X, y) in splits.items():
        for path, arr in zip(split_paths(data_dir, task, split), (X, y)):
            save_array(path, arr)
            written.append(path)
    if meta is not None:
        written.append(save_meta(data_dir, task, meta))
    return written


def split_bytes(spec: TaskSpec, sizes: dict[str, int]) -> int:
    """The bytes the inputs and targets of `sizes` samples of `spec` occupy (a lower bound on what
    generating them needs)."""
    X, y = spec.generator(np.random.default_rng(0), 0, **spec.default_kwargs)
    return sum(sizes.values()) * (X.shape[1] * X.itemsize + y.shape[1] * y.itemsize)


def write_dataset(spec: TaskSpec, data_dir: str | os.PathLike, seed: int = 0,
                  sizes: dict[str, int] | None = None, task_name: str | None = None) -> list[Path]:
    """Generate de-duplicated disjoint splits of `spec` from `seed` and save them under `data_dir`
    (a ValueError, before any generation, when data_dir cannot be a directory we write into)."""
    try:
        Path(data_dir).mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file in the way, a read-only place
        raise ValueError(f"cannot write the task data into {data_dir} ({e.strerror or type(e).__name__}): give "
                         "a directory that can be created and written (--data / --out)") from None
    if not os.access(data_dir, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write the task data into {data_dir}: the directory is not writable (--data / --out)")
    sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
    need, free = split_bytes(spec, sizes), available_memory()
    if free is not None and need > free:  # numpy would fail mid-generation, or the machine swap
        raise ValueError(f"{sum(sizes.values()):,} samples of {spec.name} take at least {need / 2**30:,.1f} GiB, more "
                         f"than the {free / 2**30:,.1f} GiB available: ask for fewer (--train/--val/--test, "
                         "--n_train/--n_val/--n_test) or shorter samples")
    splits = make_splits(spec.generator, np.random.default_rng(seed), sizes, **spec.default_kwargs)
    name = task_name or spec.name
    return save_dataset(data_dir, name, splits, dataset_meta(spec, seed, sizes, name))


def _load_npy(path: Path, data_dir, task: str) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such dataset file; {_how_to_make(data_dir, task)}")
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        reason = str(e).replace("\n", " ")
        raise ValueError(f"{path}: corrupt .npy file ({reason}); {_how_to_make(data_dir, task)}") from None
    if arr.ndim != 2 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"{path}: expected a 2-D integer array, got {arr.dtype} {arr.shape}; "
                         f"{_how_to_make(data_dir, task)}")
    return arr


def load_arrays(data_dir: str | os.PathLike, task: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """The stored (X, y) numpy arrays of one split, checked for shape and pairing."""
    x_path, y_path = split_paths(data_dir, task, split)
    X, y = _load_npy(x_path, data_dir, task), _load_npy(y_path, data_dir, task)
    if len(X) != len(y):
        raise ValueError(f"{x_path}: {len(X)} rows but {y_path.name} has {len(y)}; {_how_to_make(data_dir, task)}")
    return X, y


def load_split(data_dir: str | os.PathLike, task: str, split: str, stacked: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(src, tgt) int64 tensors (N, T), batch-first; stacked tasks get next-token pairs over [X, y]."""
    X, y = load_arrays(data_dir, task, split)
    src, tgt = stack_src_tgt(X, y) if stacked else (X, y)
    return (torch.from_numpy(np.ascontiguousarray(src, dtype=np.int64)),
            torch.from_numpy(np.ascontiguousarray(tgt, dtype=np.int64)))


def load_meta(data_dir: str | os.PathLike, task: str) -> dict:
    """The {task}_meta.json written with the dataset."""
    path = meta_path(data_dir, task)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such dataset meta file; {_how_to_make(data_dir, task)}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: corrupt JSON ({e}); {_how_to_make(data_dir, task)}") from None
    except OSError as e:  # unreadable (permissions, a directory of that name)
        raise ValueError(f"{path}: cannot read it ({e.strerror or type(e).__name__})") from None
