"""Table of the algorithmic tasks: generator, layout and sizes a training driver needs.

`sample_len` is the length T of one stacked (or stored, for sqeq) sample; `answer_size` is how many final target
positions are scored; `vocab_size` is one more than the largest token id the generator can emit.

    spec = task_spec("copy", seq_len=120, num_tokens=10)   # == task_spec("copy120")
    X, y = spec.sample(np.random.default_rng(0), 8)         # (8, 120), (8, 241)

A task may sort its samples into groups (`group_name`, `group_of(src) -> (B,) ints from 1`) that the drivers
report accuracy for, one figure per group. Retrieval groups by the pair the query asks for: a model whose memory
keeps only the pairs written last shows it there, where the mean accuracy only shows a plateau.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from rmt.tasks import generators as g


@dataclass(frozen=True)
class TaskSpec:
    name: str
    generator: g.SampleFn  # generator(rng, n, **default_kwargs) -> (X, y) in the stored layout
    stacked: bool  # True: the model sees stack_src_tgt(X, y); False (sqeq): X and y are src and tgt already
    answer_size: int  # scored target positions at the end of each sample
    sample_len: int  # T of the (src, tgt) pair the model sees
    vocab_size: int
    default_kwargs: dict = field(default_factory=dict)
    group_name: str = ""  # what group_of tells apart, in metric names (retrieval: "pair", the queried one)
    group_of: Callable | None = None  # (B, T) src -> (B,) group numbers from 1 (numpy or torch alike)

    def sample(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """n fresh samples (X, y) in the stored layout, with this spec's kwargs."""
        return self.generator(rng, n, **self.default_kwargs)


def _copy_sizes(seq_len: int, num_tokens: int) -> tuple[int, int, int]:
    return 3 * seq_len, 2 * seq_len, num_tokens  # src = [X, 1, X, X[:-1]]; both copies scored


def _reverse_sizes(seq_len: int, num_tokens: int) -> tuple[int, int, int]:
    return 2 * seq_len, seq_len, num_tokens  # src = [X, 1, rev(X)[:-1]]


def _retrieval_sizes(num_pairs: int) -> tuple[int, int, int]:
    return 2 * num_pairs + 2, 1, g.RETRIEVAL_VOCAB  # src = [k1 v1 .. kK vK q 10]; only the value scored


def _queried_pair(src):
    """Stacked retrieval src [k1 v1 .. kK vK q 10] -> which pair q asks for, from 1 (the first equal key)."""
    hits = (src[:, 0:-2:2] == src[:, -2:-1]) * 1  # (B, K); * 1 turns bools into ints for torch's argmax
    return hits.argmax(1) + 1


def _sqeq_sizes(seq_len: int, with_canonic: bool, with_D: bool, add_eos: bool, **_) -> tuple[int, int, int]:
    n_slots = 2 + (3 + with_canonic if with_D else 0)
    # every slot after the equation is scored (pads included, as the original)
    return n_slots * seq_len, (n_slots - 1) * seq_len, g.SQEQ_VOCAB + add_eos


# name -> (generator, stacked, size function, default kwargs[, (group name, group function)])
_BASE = {
    "copy": (g.copy_samples, True, _copy_sizes, dict(seq_len=24, num_tokens=12)),
    "reverse": (g.reverse_samples, True, _reverse_sizes, dict(seq_len=24, num_tokens=12)),
    "retrieval": (g.retrieval_samples, True, _retrieval_sizes, dict(num_pairs=4), ("pair", _queried_pair)),
    "sqeq": (g.sqeq_samples, False, _sqeq_sizes,
             dict(seq_len=30, with_canonic=True, with_D=True, add_eos=False, max_root=100, shuffle_limit=10,
                  prob_no_roots=0.2)),
}
# the long copy/reverse datasets of the paper used 8 symbols (num_tokens 10), the short ones 10 (num_tokens 12)
_VARIANTS = {
    "copy120": ("copy", dict(seq_len=120, num_tokens=10)),
    "copy240": ("copy", dict(seq_len=240, num_tokens=10)),
    "copy360": ("copy", dict(seq_len=360, num_tokens=10)),
    "reverse120": ("reverse", dict(seq_len=120, num_tokens=10)),
    "sqeq_cd": ("sqeq", {}),
    "sqeq_cd_eos": ("sqeq", dict(add_eos=True)),
}


def _check(name: str, kw: dict) -> None:
    """Reject values the generators cannot honour, with one readable line."""
    minimum = dict(seq_len=1, num_tokens=3, num_pairs=1, max_root=2, shuffle_limit=1)  # max_root 2: c has a range
    for key, low in minimum.items():
        if key in kw and (not isinstance(kw[key], (int, np.integer)) or kw[key] < low):
            raise ValueError(f"{name}: {key} must be an integer >= {low}, got {kw[key]!r}")
    if "prob_no_roots" in kw and not 0.0 <= kw["prob_no_roots"] <= 1.0:
        raise ValueError(f"{name}: prob_no_roots must be in [0, 1], got {kw['prob_no_roots']!r}")


def task_spec(name: str, **kwargs) -> TaskSpec:
    """Spec of task `name` (a base task or a variant such as 'copy120'), with generator kwargs overridden."""
    base, variant_kw = _VARIANTS.get(name, (name, {}))
    if base not in _BASE:
        raise ValueError(f"unknown task {name!r}; choose from {', '.join(TASK_NAMES)}")
    gen, stacked, sizes_fn, defaults, *groups = _BASE[base]
    unknown = set(kwargs) - set(defaults)
    if unknown:
        raise ValueError(f"{name}: unknown option(s) {sorted(unknown)}; valid: {sorted(defaults)}")
    kw = {**defaults, **variant_kw, **kwargs}
    _check(name, kw)
    sample_len, answer_size, vocab = sizes_fn(**kw)
    group_name, group_of = groups[0] if groups else ("", None)
    return TaskSpec(name, gen, stacked, answer_size, sample_len, vocab, kw, group_name, group_of)


TASK_NAMES = tuple(_BASE) + tuple(_VARIANTS)
TASKS = {name: task_spec(name) for name in TASK_NAMES}  # specs at their default kwargs
