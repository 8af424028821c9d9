"""Fuzzing the inputs a user can get wrong: generated bad flags, checkpoint files, results CSVs,
grids and corpus files
(hypothesis; 310 cases per run). Every case must end in one line naming the problem: a
SystemExit or a documented error type, never a traceback from deep inside; and nothing that was
there before (a checkpoint, a results CSV) changes."""
import contextlib
import io
import math
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rmt import config
from rmt.errors import exits_on_error
from rmt.families.registry import build_family
from rmt.model.transformer import MemTransformerLM
from rmt.results import RESULT_COLUMNS, append_result, read_results
from rmt.training.checkpoint import CheckpointError, load_model, save_atomic
from rmt.training.runtime import Runtime


def fuzz(n: int):
    """n generated cases, no deadline (a slow CI machine is not a failure), nothing stored on disk."""
    return settings(max_examples=n, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])
TASK = ["--dataset", "copy", "--device", "cpu", "--no_results"]
LM = ["--dataset", "wt2", "--device", "cpu", "--no_results"]
FACT = ["--dataset", "fact", "--device", "cpu", "--no_results"]

negative = st.integers(max_value=-1)
non_positive = st.integers(max_value=0)
bad_float = st.one_of(st.floats(max_value=0.0, allow_nan=False), st.just(math.nan), st.just(math.inf),
                      st.just(-math.inf))
bad_flags = st.one_of(
    st.tuples(st.just("--lr"), bad_float),
    st.tuples(st.sampled_from(["--warmup_step", "--seed"]), negative),
    st.tuples(st.just("--seed"), st.integers(min_value=2**32, max_value=2**80)),  # numpy seeds take 32 bits
    st.tuples(st.sampled_from(["--max_time", "--clip", "--mom", "--eta_min", "--lr_min"]),
              st.one_of(st.floats(max_value=-1e-6, allow_nan=False), st.just(math.nan))),
    st.tuples(st.sampled_from(["--max_step", "--batch_size", "--tgt_len", "--eval_tgt_len", "--eval_interval",
                               "--log_interval", "--batch_chunk", "--eval_batch_size"]), non_positive),
    st.tuples(st.sampled_from(["--n_layer", "--n_head", "--d_model", "--d_head", "--d_inner"]), non_positive),
    st.tuples(st.sampled_from(["--dropout", "--dropatt"]), st.one_of(st.floats(min_value=1.0, max_value=1e9),
                                                                     st.floats(max_value=-1e-9, min_value=-1e9))),
    st.tuples(st.sampled_from(["--num_mem_tokens", "--mem_len", "--reset_memory_every"]), negative),
    st.tuples(st.just("--device"), st.text(min_size=1, max_size=8).filter(lambda s: s not in ("auto", "cpu", "cuda")
                                                                               and not s.startswith(("cuda:", "-")))),
    st.tuples(st.just("--run_name"), st.sampled_from(["..", ".", "../x", "a/b", "../../etc", ".hidden", "/abs"])),
    st.tuples(st.just("--attn_type"), st.integers().filter(lambda t: t not in (0, 2, 4))),
)
task_flags = st.one_of(
    st.tuples(st.sampled_from(["--n_train", "--n_val", "--n_test"]), non_positive),
    st.tuples(st.just("--curriculum"), non_positive),
    st.tuples(st.just("--answer_size"), non_positive),  # 0 once meant "the task's default", silently
    st.tuples(st.just("--batch_size"), st.integers(min_value=201, max_value=10**6)),  # above --n_train 200
)


def parse(argv) -> str:
    """Validate argv as rmt.train does before anything is written (the flags, then the model
    configuration); returns the one-line error."""
    err = io.StringIO()
    @exits_on_error  # as the entry point: a library error becomes its one line
    def validate():
        args, parser = config.parse_training_args(argv)
        try:  # as rmt.train: a family refuses a value with a ValueError, turned into the parser's error
            family = build_family(args, Runtime("cpu"))
            family.model_config() if args.dataset != "wt2" else config.model_config(args, n_token=10)
        except ValueError as e:
            parser.error(str(e))

    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_info:
        validate()
    assert exit_info.value.code not in (0, None)
    lines = [ln for ln in err.getvalue().splitlines() if ln.strip() and not ln.startswith("usage")]
    message = lines[-1] if lines else str(exit_info.value.code)
    assert "Traceback" not in err.getvalue()
    return message


@fuzz(120)
@given(flag=bad_flags, family=st.sampled_from([TASK, LM, FACT]))
def test_bad_flags_are_one_line_errors(flag, family, tmp_path):
    name, value = flag
    message = parse([*family, "--work_dir", str(tmp_path), "--n_train", "200", name, str(value)]
                    if family is not LM else [*family, "--work_dir", str(tmp_path), name, str(value)])
    assert "error" in message
    assert not any(tmp_path.iterdir())  # nothing written


@fuzz(30)
@given(flag=task_flags)
def test_bad_task_flags_are_one_line_errors(flag, tmp_path):
    name, value = flag
    assert "error" in parse([*TASK, "--work_dir", str(tmp_path), "--n_train", "200", name, str(value)])


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    model = MemTransformerLM(n_token=8, n_layer=1, n_head=1, d_model=8, d_head=8, d_inner=8, num_mem_tokens=2)
    save_atomic({"config": model.config.to_dict(), "model": model.state_dict()}, path)
    return path.read_bytes()


damage = st.one_of(
    st.binary(max_size=300).map(lambda b: ("random", b)),
    st.integers(min_value=0, max_value=4000).map(lambda n: ("truncate", n)),
    st.tuples(st.integers(min_value=0, max_value=4000), st.binary(min_size=1, max_size=16)).map(
        lambda t: ("overwrite", t)),
)


def damaged(good: bytes, how) -> bytes:
    kind, arg = how
    if kind == "random":
        return arg
    if kind == "truncate":
        return good[: arg % max(len(good) - 1, 1)]
    at, patch = arg
    at %= len(good)
    return good[:at] + patch + good[at + len(patch):]


@fuzz(60)
@given(how=damage)
def test_damaged_checkpoints_are_one_line_errors(how, good_checkpoint, tmp_path):
    data = damaged(good_checkpoint, how)
    path = tmp_path / "bad.pt"
    path.write_bytes(data)
    try:
        model, _ = load_model(path)
    except CheckpointError as e:  # the one error type the drivers, eval, parity and convert word in one line
        assert "\n" not in str(e) and str(path) in str(e)
    else:  # the damage missed everything that matters (e.g. bytes of a weight): a whole model loads
        assert isinstance(model, MemTransformerLM)
    assert path.read_bytes() == data  # loading never writes


csv_garbage = st.lists(st.one_of(
    st.text(alphabet=st.characters(blacklist_categories=["Cs"]), max_size=60),
    st.lists(st.text(alphabet="abc0123456789.,-", max_size=6), min_size=1, max_size=50).map(",".join),
), min_size=1, max_size=4)


@fuzz(30)
@given(lines=csv_garbage)
def test_malformed_results_csvs_are_refused_in_one_line_and_appends_stay_whole(lines, tmp_path):
    csv = tmp_path / f"{uuid.uuid4().hex}.csv"  # tmp_path is shared by the generated cases
    append_result(csv, {"run_id": "ok", "metric_value": 0.5, "split": "test"})
    good = read_results(csv)
    with open(csv, "a", encoding="utf-8") as f:
        f.write("\n".join(lines))  # possibly without a final newline, as a crash would leave it
    try:
        df = read_results(csv)
        assert list(df.columns[: len(RESULT_COLUMNS)]) == RESULT_COLUMNS
    except ValueError as e:
        assert "\n" not in str(e) and str(csv) in str(e)
    append_result(csv, {"run_id": "next", "metric_value": 0.7, "split": "test"})
    data = csv.read_bytes()
    assert data.endswith(b"\n") and data.splitlines()[-1].startswith(b"next,")  # whole, on its own line
    assert len(good) == 1 and good["run_id"].iloc[0] == "ok"


json_values = st.recursive(st.none() | st.booleans() | st.integers(-5, 200) | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                                        max_size=4), max_leaves=12)
grid_keys = st.sampled_from(["name", "script", "env", "flags", "results_csv", "kinds", "tgt_len", "seeds", "memory",
                             "depth", "cache"])


@fuzz(40)
@given(grid=st.one_of(json_values, st.dictionaries(grid_keys, json_values, max_size=8),
                      st.builds(lambda extra: {"script": "scripts/copy.sh", "tgt_len": [8], "kinds": ["rmt"],
                                               "memory": [2], **extra},
                                st.dictionaries(grid_keys, json_values, max_size=3))))
def test_malformed_grids_are_one_line_errors(grid, tmp_path):
    import json

    from rmt.tools.sweep import GridError, load_grid

    path = tmp_path / f"{uuid.uuid4().hex}.json"
    path.write_text(json.dumps(grid))
    try:
        sweep = load_grid(path)
    except GridError as e:
        assert "\n" not in str(e)
    else:  # a grid that happens to be valid expands to runs
        assert sweep.runs


@fuzz(30)
@given(text=st.text(max_size=200), dataset=st.sampled_from(["enwik8", "text8", "wt2"]))
def test_malformed_corpus_files_are_one_line_errors(text, dataset, tmp_path):
    from rmt.lm.corpus import get_lm_corpus

    data = tmp_path / uuid.uuid4().hex
    data.mkdir()
    for split in ("train", "valid", "test"):
        (data / f"{split}.txt").write_text("104 101 108\n" if dataset == "enwik8" else "a b c\n")
    (data / "train.txt").write_text(text)
    try:
        corpus = get_lm_corpus(data, dataset)
    except (ValueError, FileNotFoundError) as e:  # rmt.lm.evaluation.load_corpus turns these into one line
        assert "\n" not in str(e)
    else:
        if dataset == "enwik8":
            assert all(sym.isdigit() and int(sym) < 256 for sym in corpus.vocab.idx2sym)
