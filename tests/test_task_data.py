"""Algorithmic-task data: generators, splits, files, CLI and the generation notebooks.

    python -m pytest tests/test_task_data.py -q
"""
import os
import re

import nbformat
import numpy as np
import pytest
import torch
from conftest import ROOT, script_flags
from rmt.tasks import generators as g
from rmt.tasks import storage
from rmt.tasks.registry import TASKS, task_spec
from rmt.tools import generate_data

SMALL = dict(train=40, val=10, test=10)


def rng(seed=0):
    return np.random.default_rng(seed)


# ---- copy / reverse / retrieval -----------------------------------------------------------------------------

def test_copy_layout_hand_checked():
    X, y = np.array([[2, 3, 4]]), np.array([[1, 2, 3, 4, 2, 3, 4]])
    src, tgt = g.stack_src_tgt(X, y)
    assert src.tolist() == [[2, 3, 4, 1, 2, 3, 4, 2, 3]]  # [X, 1, X, X[:-1]]
    assert tgt.tolist() == [[3, 4, 1, 2, 3, 4, 2, 3, 4]]  # [X[1:], 1, X, X]
    X, y = g.copy_samples(rng(), 50, seq_len=24, num_tokens=12)
    assert X.shape == (50, 24) and y.shape == (50, 49) and X.dtype == y.dtype == np.int64
    assert (y[:, 0] == 1).all() and (y[:, 1:25] == X).all() and (y[:, 25:] == X).all()
    assert X.min() >= 2 and X.max() <= 11 and len(np.unique(X)) == 10  # symbols 2..num_tokens-1


def test_reverse_layout_hand_checked():
    X, y = np.array([[2, 3, 4]]), np.array([[1, 4, 3, 2]])
    src, tgt = g.stack_src_tgt(X, y)
    assert src.tolist() == [[2, 3, 4, 1, 4, 3]] and tgt.tolist() == [[3, 4, 1, 4, 3, 2]]
    X, y = g.reverse_samples(rng(), 50, seq_len=7, num_tokens=5)
    assert y.shape == (50, 8) and (y[:, 0] == 1).all() and (y[:, 1:] == X[:, ::-1]).all()
    assert X.min() >= 2 and X.max() <= 4


@pytest.mark.parametrize("num_pairs", [4, 12])
def test_retrieval_answer_is_value_of_query(num_pairs):
    X, y = g.retrieval_samples(rng(), 500, num_pairs=num_pairs)
    assert X.shape == (500, 2 * num_pairs + 1) and y.shape == (500, 2)
    keys, values, q = X[:, 0:-1:2], X[:, 1:-1:2], X[:, -1]
    assert keys.min() >= 11 and keys.max() <= 36 and values.min() >= 0 and values.max() <= 9
    assert all(len(set(row)) == num_pairs for row in keys)  # distinct keys (K <= 26)
    if num_pairs <= 10:
        assert all(len(set(row)) == num_pairs for row in values)
    assert (y[:, 0] == 10).all()
    for k, v, qi, ans in zip(keys, values, q, y[:, 1]):
        assert qi in k and ans == v[list(k).index(qi)]
    src, tgt = g.stack_src_tgt(X, y)
    assert src.shape[1] == 2 * num_pairs + 2 and (tgt[:, -1] == y[:, 1]).all() and src.max() < 37
    assert g.retrieval_decode([11, 3, 36, 10, 0]) == "a3z|0"


def test_retrieval_groups_samples_by_the_queried_pair():
    spec = TASKS["retrieval"]
    X, y = spec.sample(rng(), 400)
    src, _ = g.stack_src_tgt(X, y)
    pair = spec.group_of(src)  # numpy in, numpy out; torch alike
    assert sorted(set(pair.tolist())) == [1, 2, 3, 4]
    assert (X[np.arange(400), 2 * (pair - 1)] == X[:, -1]).all()  # the key of that pair is the query
    assert (X[np.arange(400), 2 * pair - 1] == y[:, 1]).all()  # and its value is the answer
    assert spec.group_of(torch.from_numpy(src)).tolist() == pair.tolist()
    hand = torch.tensor([[11, 3, 12, 4, 13, 5, 14, 6, 13, 10], [11, 3, 12, 4, 13, 5, 14, 6, 11, 10]])
    assert spec.group_of(hand).tolist() == [3, 1]
    assert TASKS["copy"].group_of is None and TASKS["copy"].group_name == ""


# ---- quadratic equations ------------------------------------------------------------------------------------

def test_sqeq_known_examples():
    # the worked example of the original notebook, and the formatting of +-1 and zero coefficients
    assert g.sqeq_parts_with_roots(-23, 92, -8) == [
        "-8*x^2+552*x+16928=0", "x^2-69*x-2116=0", "D=69^2-4*1*-2116=13225=115^2",
        "x=(69-115)/2=-23", "x=(69+115)/2=92", "-23,92"]
    assert g.sqeq_parts_with_roots(4, 4, 1) == [
        "x^2-8*x+16=0", "x^2-8*x+16=0", "D=8^2-4*1*16=0=0^2", "x=(8-0)/2=4", "x=(8+0)/2=4", "4"]
    assert g.sqeq_parts_with_roots(1, 0, 1)[0] == "x^2-x=0"
    assert g.sqeq_parts_with_roots(1, -1, -1)[0] == "-x^2+1=0"
    assert g.sqeq_parts_with_roots(0, 0, 3)[0] == "3*x^2=0"
    assert g.sqeq_parts_no_roots(0, 30) == ["x^2+30=0", "x^2+30=0", "D=0^2-4*1*30=-120", "", "", ""]


def parse_poly(text):
    """'a*x^2+b*x+c=0' -> [a, b, c], asserting the original monomial formatting rules."""
    assert text.endswith("=0") and not text.startswith("+")
    coefs = [0, 0, 0]
    for term in re.findall(r"[+-]?[^+-]+", text[:-2]):
        m = re.fullmatch(r"([+-]?)(?:(\d+)\*)?(x\^2|x)", term)
        if m is None:  # constant term: a signed integer, '+1'/'-1' included
            assert re.fullmatch(r"[+-]?\d+", term), term
            value, power = int(term), 0
        else:
            sign, num, var = m.groups()
            assert num not in ("0", "1"), term  # +-1 written as a bare sign, zeros dropped
            value, power = int(sign + (num or "1")), 2 if var == "x^2" else 1
        assert value != 0 and coefs[2 - power] == 0
        coefs[2 - power] = value
    return coefs


def check_sqeq_sample(slots, max_root=100, shuffle_limit=10):
    eq, canon, d_line, x1, x2, answer = slots
    a, b, c = parse_poly(eq)
    assert parse_poly(canon) == [1, b // a, c // a] and b % a == 0 and c % a == 0
    _, cb, cc = parse_poly(canon)
    m = re.fullmatch(r"D=(\d+)\^2-4\*1\*(-?\d+)=(-?\d+)(?:=(\d+)\^2)?", d_line)
    assert m, d_line
    abs_b, c_shown, d, sqrt_d = int(m[1]), int(m[2]), int(m[3]), m[4]
    assert abs_b == abs(cb) and c_shown == cc and d == cb * cb - 4 * cc
    if d < 0:  # fix (a): "no roots" means D < 0 strictly
        assert sqrt_d is None and x1 == x2 == answer == "" and a == 1 and b >= 0
        assert b < 2 * max_root and c < max_root ** 2  # the original's 200 and 10000 at max_root 100
        return False
    assert int(sqrt_d) ** 2 == d
    roots = []
    for line, op in ((x1, "-"), (x2, "+")):
        m = re.fullmatch(r"x=\((-?\d+)([+-])(\d+)\)/2=(-?\d+)", line)
        assert m and m[2] == op and int(m[1]) == -cb and int(m[3]) == int(sqrt_d), line
        num = -cb - int(sqrt_d) if op == "-" else -cb + int(sqrt_d)
        assert num % 2 == 0 and num // 2 == int(m[4])
        roots.append(int(m[4]))
    for r in roots:  # the roots really solve the scaled equation
        assert a * r * r + b * r + c == 0
    assert answer == ",".join(str(r) for r in sorted(set(roots)))
    assert all(abs(r) < max_root for r in roots) and 1 <= abs(a) <= shuffle_limit
    return True


def test_sqeq_samples_solve_and_align():
    src, tgt = g.sqeq_samples(rng(), 3000)
    assert src.shape == tgt.shape == (3000, 180) and src.dtype == np.int64
    assert src.min() >= 0 and src.max() <= 23 and not (src == 1).any() and not (src == 22).any()  # ';' splits lines
    assert (tgt[:, :-1] == src[:, 1:]).all() and (tgt[:, -1] == 0).all()
    has_roots = []
    for row in src:
        for s in range(0, 180, 30):  # each slot: text then pads only
            slot = row[s:s + 30]
            n = int((slot > 0).sum())
            assert (slot[:n] > 0).all() and (slot[n:] == 0).all()
        has_roots.append(check_sqeq_sample(g.sqeq_slots(row)))
    assert 0.17 < 1 - np.mean(has_roots) < 0.23  # prob_no_roots 0.2


def test_sqeq_small_numbers_for_small_runs():
    # --max_root/--shuffle_limit shrink every number, the "no roots" equations' too; all still solve
    src, _ = g.sqeq_samples(rng(), 2000, max_root=10, shuffle_limit=2)
    has_roots = [check_sqeq_sample(g.sqeq_slots(row), max_root=10, shuffle_limit=2) for row in src]
    assert 0.17 < 1 - np.mean(has_roots) < 0.23
    answers = {g.sqeq_slots(row)[5] for row in src}
    assert {"-9", "9", ""} <= answers and "10" not in answers  # roots reach +-9, no further
    assert task_spec("sqeq_cd", max_root=10).default_kwargs["max_root"] == 10
    with pytest.raises(ValueError, match="max_root must be an integer >= 2"):
        task_spec("sqeq_cd", max_root=1)


def test_sqeq_cpu_preset_splits_are_mostly_equations_with_roots():
    # A small sample space is mostly "no roots" equations (empty answer); when the splits nearly exhaust
    # it, a model that always answers nothing scores like one that solves (the old preset: 59% no roots).
    flags = script_flags("sqeq.sh", "CPU")
    value = lambda flag: int(flags[flags.index(f"--{flag}") + 1])  # noqa: E731
    sizes = {split: value(f"n_{split}") for split in ("train", "val", "test")}
    splits = g.make_splits(g.sqeq_samples, rng(), sizes, max_root=value("max_root"),
                           shuffle_limit=value("shuffle_limit"))
    for split, (src, _) in splits.items():
        no_roots = (src[:, -30:] == 0).all(axis=1).mean()  # empty answer slot
        assert no_roots < 0.4, f"{split}: {no_roots:.0%} of the samples have no roots"


def test_sqeq_eos_and_variants():
    src, tgt = g.sqeq_samples(rng(), 200, add_eos=True)
    assert src.max() == g.SQEQ_EOS_ID == 24 and (tgt[:, :-1] == src[:, 1:]).all()
    for row in src:
        slots = g.sqeq_slots(row)
        assert all(s.endswith("$") and s.count("$") == 1 for s in slots)
        check_sqeq_sample([s[:-1] for s in slots])
    assert g.sqeq_samples(rng(), 5, with_canonic=False)[0].shape == (5, 150)
    assert g.sqeq_samples(rng(), 5, with_D=False)[0].shape == (5, 60)
    assert g.sqeq_decode([2, 12, 3, 0, 0, 24], pad=".") == "0+1..$"


# ---- registry ----------------------------------------------------------------------------------------------

def test_registry_sizes():
    expect = dict(copy=(72, 48, 12), reverse=(48, 24, 12), retrieval=(10, 1, 37), sqeq=(180, 150, 24),
                  copy120=(360, 240, 10), copy240=(720, 480, 10), copy360=(1080, 720, 10),
                  reverse120=(240, 120, 10), sqeq_cd=(180, 150, 24), sqeq_cd_eos=(180, 150, 25))
    for name, sizes in expect.items():
        spec = TASKS[name]
        assert (spec.sample_len, spec.answer_size, spec.vocab_size) == sizes, name
        X, y = spec.sample(rng(), 3)
        src, tgt = g.stack_src_tgt(X, y) if spec.stacked else (X, y)
        assert src.shape == tgt.shape == (3, spec.sample_len) and max(src.max(), tgt.max()) < spec.vocab_size
    assert task_spec("copy", seq_len=120, num_tokens=10) .sample_len == 360
    assert task_spec("retrieval", num_pairs=29).sample_len == 60
    with pytest.raises(ValueError, match="unknown task"):
        task_spec("nope")
    with pytest.raises(ValueError, match="num_pairs"):
        task_spec("copy", num_pairs=3)
    with pytest.raises(ValueError, match="num_tokens"):
        task_spec("reverse", num_tokens=2)


# ---- splits ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["copy", "reverse", "retrieval", "sqeq"])
def test_make_splits_deterministic(name):
    spec = TASKS[name]

    def draw(seed):
        splits = g.make_splits(spec.generator, rng(seed), SMALL, **spec.default_kwargs)
        return b"".join(a.tobytes() for X, y in splits.values() for a in (X, y))

    assert draw(0) == draw(0) and draw(0) != draw(1)


def test_make_splits_disjoint_and_paired():
    # 3^3 = 27 possible inputs: 1024 draws per round force many duplicates
    splits = g.make_splits(g.copy_samples, rng(), dict(train=12, val=5, test=5), seq_len=3, num_tokens=5)
    rows = [tuple(r) for X, _ in splits.values() for r in X]
    assert [len(X) for X, _ in splits.values()] == [12, 5, 5] and len(set(rows)) == 22
    for X, y in splits.values():
        assert (y[:, 1:4] == X).all() and (y[:, 4:] == X).all()  # each X keeps its own y
    with pytest.raises(ValueError, match="too small"):
        g.make_splits(g.copy_samples, rng(), dict(train=4, val=1, test=0), seq_len=2, num_tokens=4)


# ---- files -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["reverse", "sqeq"])
def test_save_load_round_trip(tmp_path, name):
    spec = TASKS[name]
    paths = storage.write_dataset(spec, tmp_path, seed=3, sizes=SMALL)
    assert len(paths) == 7 and sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)
    for split, n in SMALL.items():
        X, y = storage.load_arrays(tmp_path, name, split)
        src, tgt = storage.load_split(tmp_path, name, split, spec.stacked)
        assert src.dtype == tgt.dtype == torch.int64 and src.shape == tgt.shape == (n, spec.sample_len)
        want = g.stack_src_tgt(X, y) if spec.stacked else (X, y)
        assert (src.numpy() == want[0]).all() and (tgt.numpy() == want[1]).all()
    meta = storage.load_meta(tmp_path, name)
    assert meta["vocab_size"] == spec.vocab_size and meta["seed"] == 3 and meta["sizes"] == SMALL
    assert meta["generator"] == spec.generator.__name__ and meta["stacked"] == spec.stacked
    again = tmp_path / "again"
    storage.write_dataset(spec, again, seed=3, sizes=SMALL)  # same seed -> identical bytes on disk
    assert all(p.read_bytes() == (again / p.name).read_bytes() for p in paths)


def test_failed_write_leaves_old_file(tmp_path, monkeypatch):
    path = tmp_path / "copy_train_X.npy"
    storage.save_array(path, np.arange(6).reshape(2, 3))

    def broken_save(f, arr, allow_pickle):
        f.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(np, "save", broken_save)
    with pytest.raises(RuntimeError):
        storage.save_array(path, np.zeros((5, 5)))
    monkeypatch.undo()
    assert np.load(path).tolist() == [[0, 1, 2], [3, 4, 5]] and os.listdir(tmp_path) == [path.name]


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        storage.load_split(tmp_path, "copy", "train", stacked=True)
    msg = str(e.value)
    assert "copy_train_X.npy" in msg and "python3 -m rmt.tools.generate_data copy" in msg and "\n" not in msg
    with pytest.raises(FileNotFoundError, match="--task_name sqeq_big"):
        storage.load_split(tmp_path, "sqeq_big", "val", stacked=False)
    storage.write_dataset(TASKS["copy"], tmp_path, sizes=SMALL)
    (tmp_path / "copy_val_y.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ValueError) as e:
        storage.load_split(tmp_path, "copy", "val", stacked=True)
    assert "copy_val_y.npy" in str(e.value) and "rmt.tools.generate_data" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match="split"):
        storage.load_split(tmp_path, "copy", "dev", stacked=True)


# ---- command line ------------------------------------------------------------------------------------------

def test_cli_writes_files(tmp_path, capsys):
    out = tmp_path / "ret"
    rc = generate_data.main(["retrieval", "--out", str(out), "--train", "30", "--val", "5", "--test", "5",
                             "--num_pairs", "3", "--task_name", "ret3"])
    assert rc == 0 and str(out / "ret3_train_X.npy") in capsys.readouterr().out
    src, tgt = storage.load_split(out, "ret3", "test", stacked=True)
    assert src.shape == (5, 8) and storage.load_meta(out, "ret3")["kwargs"] == {"num_pairs": 3}


@pytest.mark.parametrize("argv, words", [
    (["copy", "--num_pairs", "3"], "does not apply"),
    (["copy", "--seq_len", "0"], "seq_len"),
    (["reverse", "--train", "-1"], "split sizes"),
    (["sqeq", "--num_tokens", "5"], "does not apply"),
    (["copy", "--max_root", "10"], "does not apply"),
    (["sqeq", "--max_root", "1"], "max_root must be an integer >= 2"),
    (["sqeq", "--shuffle_limit", "0"], "shuffle_limit"),
    (["copy", "--seq_len", "2", "--num_tokens", "3", "--train", "5", "--val", "0", "--test", "0"], "too small"),
    (["copy", "--train", "2000000000"], "GiB available: ask for fewer"),  # refused before numpy allocates
])
def test_cli_bad_values(tmp_path, capsys, argv, words):
    with pytest.raises(SystemExit) as e:
        generate_data.main(argv + ["--out", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and words in err[-1] and err[-1].startswith("python -m rmt.tools.generate_data: error:")
    assert not any(name.endswith(".npy") for name in os.listdir(tmp_path))


# ---- notebooks ---------------------------------------------------------------------------------------------

NOTEBOOKS = {"algorithmic.ipynb": ["copy", "reverse", "retrieval"], "square_equations.ipynb": ["sqeq"]}


@pytest.mark.parametrize("notebook", sorted(NOTEBOOKS))
def test_notebook_is_clean_and_runs(notebook, tmp_path, monkeypatch):
    path = ROOT / "generation" / notebook
    nb = nbformat.read(path, as_version=4)
    assert all(c.outputs == [] and c.execution_count is None for c in nb.cells if c.cell_type == "code")
    from jupyter_client.kernelspec import KernelSpecManager
    if "python3" not in KernelSpecManager().find_kernel_specs():
        pytest.skip("no 'python3' jupyter kernel installed (pip install ipykernel)")
    from nbclient import NotebookClient

    sizes = dict(train=30, val=6, test=6)
    for key, value in dict(RMT_NB_TRAIN=30, RMT_NB_VAL=6, RMT_NB_TEST=6, RMT_NB_SEED=5, RMT_NB_OUT=tmp_path).items():
        monkeypatch.setenv(key, str(value))
    # run from generation/, as Jupyter does; the notebook finds the repository root itself
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    for task in NOTEBOOKS[notebook]:
        assert storage.load_meta(tmp_path / task, task)["sizes"] == sizes
        # the notebook writes exactly what the command line writes for the same seed and sizes
        ref = storage.write_dataset(TASKS[task], tmp_path / "ref" / task, seed=5, sizes=sizes)
        assert all(p.read_bytes() == (tmp_path / task / p.name).read_bytes() for p in ref)
