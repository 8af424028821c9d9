"""Seeded generators for the RMT algorithmic datasets: copy, reverse, associative retrieval, quadratic equations.

Every generator takes a `np.random.Generator` (never numpy's global state) and returns int64 `(X, y)`
in the layouts of the original LM-RMT `.npy` files (RMT paper §4). Legend: n samples,
L sequence length, K key-value pairs, N slots of S characters (sqeq).

Quadratic equations (sqeq) deviate from the original notebook on purpose:
  (a) the "no roots" branch draws c > b^2/4 strictly, so D = b^2 - 4c < 0; the original could give D = 0,
      a real double root labelled "no roots";
  (b) the end-of-part token has its own id 24 (vocabulary 25) when `add_eos=True`; the original reused 22,
      the id of `;`. The default is no eos, as the paper's `sqeq_cd`, with vocabulary 24;
  (c) `max_root` and `shuffle_limit` are honoured (the original ignored them and used 100 and 10: our defaults),
      and the "no roots" coefficients scale with `max_root` (b < 2*max_root, c < max_root^2: at 100 the
      original's 200 and 10000), so a smaller `max_root` shrinks every number in the data, for small runs;
  (d) tgt is defined as src shifted left by one (tgt[:, t] = src[:, t+1], last target 0): this is the original's
      alignment for every later slot, and it also fixes the targets inside the equation slot (never scored).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

SampleFn = Callable[..., tuple[np.ndarray, np.ndarray]]  # (rng, n, **kwargs) -> (X, y)

DEFAULT_SIZES = {"train": 100_000, "val": 10_000, "test": 20_000}  # RMT paper / original notebooks

SEP = 1  # copy/reverse: separator between input and target; token 0 is never used
RETRIEVAL_SEP = 10  # retrieval: separator before the answer; values are 0..9, keys 11..36
RETRIEVAL_VOCAB = 37

# sqeq characters: pad 0, id 1 unused, '0'-'9' -> 2..11, then the operators in this order (original ids)
SQEQ_CHARS = "0123456789+-*/^=()xD;,"
SQEQ_EOS_ID = 24  # fix (b): its own id, no clash with ';' (22)
SQEQ_VOCAB = 24  # 25 with eos
_PAD_CH, _EOS_CH = "_", "$"  # placeholders in the intermediate text; never in the data
_ENCODE = np.full(128, -1, dtype=np.int64)
for _i, _ch in enumerate(SQEQ_CHARS):
    _ENCODE[ord(_ch)] = _i + 2
_ENCODE[ord(_PAD_CH)], _ENCODE[ord(_EOS_CH)] = 0, SQEQ_EOS_ID
_DECODE = {i + 2: ch for i, ch in enumerate(SQEQ_CHARS)} | {0: "", 1: "?", SQEQ_EOS_ID: _EOS_CH}


def copy_samples(
    rng: np.random.Generator, n: int, seq_len: int = 24, num_tokens: int = 12
) -> tuple[np.ndarray, np.ndarray]:
    """Copy task: X (n, L) symbols in 2..num_tokens-1; y (n, 2L+1) = [1, X, X] (the input twice, as the original)."""
    X = rng.integers(2, num_tokens, size=(n, seq_len), dtype=np.int64)  # (n, L)
    y = np.concatenate([np.full((n, 1), SEP, dtype=np.int64), X, X], axis=1)  # (n, 2L+1)
    return X, y


def reverse_samples(
    rng: np.random.Generator, n: int, seq_len: int = 24, num_tokens: int = 12
) -> tuple[np.ndarray, np.ndarray]:
    """Reverse task: X (n, L) symbols in 2..num_tokens-1; y (n, L+1) = [1, X reversed]."""
    X = rng.integers(2, num_tokens, size=(n, seq_len), dtype=np.int64)  # (n, L)
    y = np.concatenate([np.full((n, 1), SEP, dtype=np.int64), X[:, ::-1]], axis=1)  # (n, L+1)
    return X, y


def _draw_distinct(rng: np.random.Generator, n: int, k: int, low: int, high: int) -> np.ndarray:
    """(n, k) draws from low..high-1, distinct within a row when k <= high-low, else with replacement."""
    if k <= high - low:
        # argsort of iid uniforms = a uniformly random permutation per row; keep its first k entries
        return low + np.argsort(rng.random((n, high - low)), axis=1)[:, :k]
    return rng.integers(low, high, size=(n, k), dtype=np.int64)


def retrieval_samples(rng: np.random.Generator, n: int, num_pairs: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Associative retrieval: X (n, 2K+1) = [k1 v1 ... kK vK q], y (n, 2) = [10, value of q]. Vocab 37.

    Keys are letters 11..36 (distinct if K <= 26), values digits 0..9 (distinct if K <= 10); q is a uniform key.
    For K > 26 keys repeat, as in the original, and the answer is the value of the queried position.
    """
    keys = _draw_distinct(rng, n, num_pairs, 11, RETRIEVAL_VOCAB)  # (n, K)
    values = _draw_distinct(rng, n, num_pairs, 0, 10)  # (n, K)
    q = rng.integers(0, num_pairs, size=n)  # (n,) index of the queried pair
    rows = np.arange(n)
    X = np.empty((n, 2 * num_pairs + 1), dtype=np.int64)
    X[:, 0:-1:2], X[:, 1:-1:2], X[:, -1] = keys, values, keys[rows, q]
    y = np.stack([np.full(n, RETRIEVAL_SEP, dtype=np.int64), values[rows, q]], axis=1)  # (n, 2)
    return X, y


def stack_src_tgt(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stacked tasks (copy, reverse, retrieval): next-token pairs over [X, y]; both (n, T) with T = |X|+|y|-1."""
    full = np.concatenate([X, y], axis=1)  # (n, T+1)
    return full[:, :-1], full[:, 1:]


# ---- quadratic equations ---------------------------------------------------------------------------------------

def _monomial(coef: int, power: int) -> str:
    """One signed term: 0 -> dropped, +-1 -> '+x'/'-x' (constant '+1'/'-1'), else '+c*x^p'."""
    if coef == 0:
        return ""
    if power == 0:
        return f"{coef:+d}"
    var = "x" if power == 1 else f"x^{power}"
    return {1: "+", -1: "-"}.get(coef, f"{coef:+d}*") + var


def _equation(coefs: list[int]) -> str:
    """Coefficients from the highest power -> 'a*x^2+b*x+c=0' text without a leading '+'."""
    terms = "".join(_monomial(c, len(coefs) - 1 - i) for i, c in enumerate(coefs))
    return terms.removeprefix("+") + "=0"


def sqeq_parts_with_roots(r1: int, r2: int, k: int) -> list[str]:
    """Text parts of k*(x-r1)*(x-r2)=0: [equation, canonical, D line, x1 line, x2 line, answer]."""
    a, b, c = 1, -(r1 + r2), r1 * r2  # canonical (monic) coefficients, Vieta
    sqrt_d = abs(r1 - r2)  # D = b^2 - 4ac = (r1 - r2)^2 exactly
    lo, hi = sorted((r1, r2))
    return [
        _equation([k * a, k * b, k * c]),
        _equation([a, b, c]),
        f"D={abs(b)}^2-4*{a}*{c}={b * b - 4 * a * c}={sqrt_d}^2",
        f"x=({-b}-{sqrt_d})/{2 * a}={lo}",
        f"x=({-b}+{sqrt_d})/{2 * a}={hi}",
        ",".join(str(r) for r in sorted({r1, r2})),  # a double root is written once
    ]


def sqeq_parts_no_roots(b: int, c: int) -> list[str]:
    """Text parts of x^2+b*x+c=0 with D<0: the equation is already canonical (a=1, unscaled, as the original)."""
    eq = _equation([1, b, c])
    return [eq, eq, f"D={b}^2-4*1*{c}={b * b - 4 * c}", "", "", ""]


def sqeq_samples(
    rng: np.random.Generator,
    n: int,
    seq_len: int = 30,
    with_canonic: bool = True,
    with_D: bool = True,
    add_eos: bool = False,
    max_root: int = 100,
    shuffle_limit: int = 10,
    prob_no_roots: float = 0.2,
) -> tuple[np.ndarray, np.ndarray]:
    """Quadratic equations with step-by-step solutions: src and tgt, both (n, N*S), N slots of S=seq_len.

    Slots: equation | canonical | D line | x1 line | x2 line | answer (N=6); without canonic N=5, and without D
    only equation | answer (N=2), as the original. Pads are 0; tgt[:, t] = src[:, t+1] (stack=False layout).
    """
    no_roots = rng.random(n) < prob_no_roots  # (n,)
    # astype(int) truncates toward 0 as the original: roots in -(max_root-1)..max_root-1, 0 twice as likely
    roots = rng.uniform(-max_root, max_root, size=(n, 2)).astype(np.int64)  # (n, 2)
    k = rng.choice([-1, 1], size=n) * np.round(rng.uniform(1, shuffle_limit, size=n)).astype(np.int64)
    b = rng.integers(0, 2 * max_root, size=n)  # (n,); the original's [0, 200) at max_root 100
    c = rng.integers(b * b // 4 + 1, max_root * max_root)  # fix (a): c > b^2/4, so D < 0 strictly
    keep = [0] + ([1] if with_canonic and with_D else []) + ([2, 3, 4] if with_D else []) + [5]
    eos = _EOS_CH if add_eos else ""
    rows = []
    for i in range(n):
        if no_roots[i]:
            parts = sqeq_parts_no_roots(int(b[i]), int(c[i]))
        else:
            parts = sqeq_parts_with_roots(int(roots[i, 0]), int(roots[i, 1]), int(k[i]))
        for j in keep:
            part = parts[j] + eos
            if len(part) > seq_len:
                raise ValueError(f"sqeq part {part!r} is longer than the slot length {seq_len}")
            rows.append(part.ljust(seq_len, _PAD_CH))
    codes = np.frombuffer("".join(rows).encode("ascii"), dtype=np.uint8)
    src = _ENCODE[codes].reshape(n, len(keep) * seq_len)  # (n, N*S)
    tgt = np.zeros_like(src)
    tgt[:, :-1] = src[:, 1:]  # next token within the layout; a slot's last position predicts the next slot's start
    return src, tgt


def sqeq_decode(ids, pad: str = "") -> str:
    """sqeq token ids -> text for display; pads (0) become `pad` (dropped by default), eos shows as '$'."""
    table = _DECODE | {0: pad}
    return "".join(table.get(int(i), "?") for i in np.asarray(ids).ravel())


def sqeq_slots(row, seq_len: int = 30) -> list[str]:
    """One src row (N*S,) -> the decoded text of each of its N slots."""
    row = np.asarray(row)
    return [sqeq_decode(row[s:s + seq_len]) for s in range(0, len(row), seq_len)]


def retrieval_decode(ids) -> str:
    """Retrieval token ids -> text: values as digits, keys as letters a..z, the separator as '|'."""
    out = {RETRIEVAL_SEP: "|"} | {v: str(v) for v in range(10)} | {11 + i: chr(97 + i) for i in range(26)}
    return "".join(out.get(int(i), "?") for i in np.asarray(ids).ravel())


# ---- splits --------------------------------------------------------------------------------------------------

class SampleSpaceTooSmall(ValueError):
    """More distinct samples asked for than the task's options can produce."""


def make_splits(
    gen_fn: SampleFn,
    rng: np.random.Generator,
    sizes: dict[str, int] | None = None,
    **gen_kwargs,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Draw samples until enough distinct X rows exist, shuffle, and cut disjoint splits in the order of `sizes`.

    Duplicates are dropped by whole X rows, keeping each row's own y (the original notebook's fallback
    de-duplicated X and y separately, breaking the pairing). Same rng state -> identical arrays.
    """
    sizes = dict(DEFAULT_SIZES if sizes is None else sizes)
    if any(v < 0 for v in sizes.values()) or sum(sizes.values()) < 1:
        raise ValueError(f"split sizes must be >= 0 with a positive total, got {sizes}")
    total = sum(sizes.values())
    X, y = gen_fn(rng, 0, **gen_kwargs)  # (0, T) each: fixes the widths and dtypes
    drawn = 0
    while len(X) < total:
        if drawn > 10 * total + 10_000:
            raise SampleSpaceTooSmall(f"only {len(X)} distinct samples after {drawn} draws, {total} needed: "
                             f"the task's sample space is too small for these split sizes")
        batch = max(1024, (total - len(X)) * 11 // 10)  # ~10% spare for duplicates
        bx, by = gen_fn(rng, batch, **gen_kwargs)
        drawn += batch
        X, y = np.concatenate([X, bx]), np.concatenate([y, by])
        _, first = np.unique(X, axis=0, return_index=True)
        keep = np.sort(first)  # first occurrence of every row, in drawing order
        X, y = X[keep], y[keep]
    perm = rng.permutation(total)
    X, y = X[:total][perm], y[:total][perm]
    bounds = np.cumsum([0, *sizes.values()])
    return {name: (X[lo:hi], y[lo:hi]) for name, lo, hi in zip(sizes, bounds[:-1], bounds[1:])}
