"""Numerical parity with the original code on the golden files: python -m pytest tests/test_parity.py"""
import pathlib
import subprocess
import sys

import pytest
import torch
from rmt.tools.convert import from_original, load_original_model, to_original
from rmt.tools.parity import check_golden
from rmt.training.checkpoint import save_atomic

GOLDEN = sorted((pathlib.Path(__file__).parent / "golden").glob("*.pt"))
ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_golden_files_present():
    assert {p.stem for p in GOLDEN} == {"base", "txl", "rmt", "adaptive", "rmt_xl", "rmt_xl_readcache",
                                        "mt_start_only", "prelnorm", "adaptive_div1"}


@pytest.mark.parametrize("attn_impl", ["eager", "fused", "flex"])
@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: p.stem)
def test_matches_original(path, attn_impl):
    golden = torch.load(path, weights_only=True)
    errors = check_golden(golden, attn_impl)
    assert len(errors) == golden["config"]["n_segments"]
    expected = {"nll"} | ({"mem_write"} if golden["config"]["num_mem_tokens"] else set()) \
        | ({"mems"} if golden["config"]["mem_len"] else set())
    for err in errors:
        assert set(err) == expected
        assert max(err.values()) <= 1e-5, err


@pytest.mark.parametrize("path", GOLDEN, ids=lambda p: p.stem)
def test_convert_round_trip(path):
    golden = torch.load(path, weights_only=True)
    sd = golden["state_dict"]
    model = load_original_model(sd, golden["config"])
    back = to_original(model.state_dict(), golden["config"]["d_model"])
    assert set(back) == set(sd)
    for name in sd:
        assert torch.equal(back[name], sd[name]), name
    # Tied weights stay tied after conversion.
    assert model.crit.out_layers[0].weight is model.word_emb.emb_layers[0].weight


def test_parity_detects_a_wrong_weight(tmp_path):
    golden = torch.load(GOLDEN[0], weights_only=True)
    golden["state_dict"]["r_r_bias"] = torch.zeros_like(golden["state_dict"]["r_r_bias"])
    bad = tmp_path / "bad.pt"
    torch.save(golden, bad)
    errors = check_golden(golden)
    assert max(max(e.values()) for e in errors) > 1e-4
    run = subprocess.run([sys.executable, "-m", "rmt.parity", str(bad)], cwd=ROOT,
                         env={"PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True)
    assert run.returncode == 1 and "FAIL" in run.stdout


def test_parity_cli_ok_and_corrupt(tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    env = {"PATH": "/usr/bin:/bin"}
    ok = subprocess.run([sys.executable, "-m", "rmt.parity", *map(str, GOLDEN)], cwd=ROOT, env=env,
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.count(": ok") == len(GOLDEN)
    bad = subprocess.run([sys.executable, "-m", "rmt.parity", str(corrupt)], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert "not a readable checkpoint" in bad.stderr and "Traceback" not in bad.stderr


def test_convert_cli_round_trip(tmp_path):
    env = {"PATH": "/usr/bin:/bin"}
    ours, orig = tmp_path / "ours.pt", tmp_path / "orig.pt"
    rmt_file = next(p for p in GOLDEN if p.stem == "rmt")
    for cmd in (["from-original", str(rmt_file), str(ours)], ["to-original", str(ours), str(orig)]):
        run = subprocess.run([sys.executable, "-m", "rmt.convert", *cmd], env=env, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
    golden = torch.load(rmt_file, weights_only=True)
    back = torch.load(orig, weights_only=True)
    for name, value in golden["state_dict"].items():
        assert torch.equal(back["state_dict"][name], value), name
    # A bare state dict without --config is refused with one clear line.
    bare = tmp_path / "bare.pt"
    save_atomic(golden["state_dict"], bare)
    run = subprocess.run([sys.executable, "-m", "rmt.convert", "from-original", str(bare), str(tmp_path / "x.pt")],
                         env=env, capture_output=True, text=True)
    assert run.returncode == 2 and "--config" in run.stderr


def test_from_original_rejects_unsupported_attention():
    with pytest.raises(ValueError, match="attn_type 1 or 3"):
        from_original({"r_emb": torch.zeros(1)})


def test_convert_refuses_weights_or_config_of_another_shape_in_one_line(tmp_path):
    rmt_file = next(p for p in GOLDEN if p.stem == "rmt")
    golden = torch.load(rmt_file, weights_only=True)
    name = next(iter(golden["state_dict"]))
    resized = {**golden, "state_dict": {**golden["state_dict"], name: torch.zeros(3, 3, 3)}}
    save_atomic(resized, tmp_path / "resized.pt")
    (tmp_path / "list.json").write_text("[1, 2]")
    runs = [["from-original", str(tmp_path / "resized.pt"), str(tmp_path / "a.pt")],
            ["from-original", str(rmt_file), str(tmp_path / "b.pt"), "--config", str(tmp_path / "list.json")]]
    for cmd in runs:
        run = subprocess.run([sys.executable, "-m", "rmt.convert", *cmd], capture_output=True, text=True)
        assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-1500:]
        assert run.stderr.strip().startswith("error:") and len(run.stderr.strip().splitlines()) == 1
        assert not (tmp_path / cmd[2]).exists()
