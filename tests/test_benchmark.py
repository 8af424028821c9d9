"""The benchmark command measures and records (no timing is asserted): python -m pytest tests/test_benchmark.py"""
import os
import pathlib
import subprocess
import sys

import pandas as pd
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def bench(tmp_path, mode, *args):
    csv = tmp_path / f"{mode}.csv"
    run = subprocess.run([sys.executable, "-m", "rmt.tools.benchmark", mode, *args, "--configs", "tiny", "--csv", str(csv)],
                         cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    return pd.read_csv(csv)


def test_throughput_rows(tmp_path):
    rows = bench(tmp_path, "throughput", "--steps", "2", "--warmup", "1", "--variants", "eager", "fused")
    assert list(rows.kind) == ["baseline", "baseline", "txl", "txl", "rmt", "rmt"]
    assert set(rows.impl) == {"ours-eager", "ours-fused"}
    assert (rows.train_tok_s > 0).all() and (rows.eval_tok_s > 0).all()
    assert rows.device.str.startswith("cpu").all() and rows.torch_version.notna().all()
    # Model FLOPs: memory tokens and the cache cost extra; mfu is achieved over measured matmul rate.
    flops = rows.groupby("kind").flops_per_token.first()
    assert flops["rmt"] > flops["baseline"] and flops["txl"] > flops["baseline"]
    assert ((rows.mfu / (rows.train_tflops * 1e3 / rows.matmul_gflops) - 1).abs() < 1e-2).all()  # rate rounded


def test_repeats_record_medians_and_spread(tmp_path):
    rows = bench(tmp_path, "throughput", "--steps", "1", "--warmup", "0", "--kinds", "rmt", "--repeats", "3")
    assert len(rows) == 1 and rows.repeats[0] == 3 and rows.train_spread[0] >= 0


def test_median_trial():
    from rmt.tools.benchmark import median_trial

    trials = [{"train_tok_s": r, "eval_tok_s": 2 * r, "peak_mem_mb": 10.0, "n_params": 5} for r in (90.0, 100.0, 130.0)]
    m = median_trial(trials)
    assert (m["train_tok_s"], m["eval_tok_s"], m["n_params"]) == (100.0, 200.0, 5)
    assert abs(m["train_spread"] - 0.4) < 1e-12
    assert "train_spread" not in median_trial(trials[:1])
    assert median_trial(trials[:1] + [{"error": "boom"}]) == {"error": "boom"}


def test_bad_variant_is_refused(tmp_path):
    run = subprocess.run([sys.executable, "-m", "rmt.tools.benchmark", "throughput", "--variants", "eager+fp8"],
                         cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "bad variant 'eager+fp8'" in run.stderr


def test_bptt_and_stream_rows(tmp_path):
    rows = bench(tmp_path, "bptt", "--segments", "1", "4")
    assert len(rows) == 4 and set(rows.recompute) == {True, False} and (rows.time_s > 0).all()
    rows = bench(tmp_path, "stream", "--tokens", "512", "2048", "--batch", "2")
    assert list(rows.tokens) == [512, 2048] and (rows.us_per_token > 0).all()


def test_generation_rows(tmp_path):
    rows = bench(tmp_path, "generation", "--tokens", "40")
    assert list(rows.impl) == ["ours-cache", "ours-reencode"] and (rows.tok_s > 0).all()
    assert rows.cache_speedup.iloc[1] > 0 and list(rows.tokens) == [40, 40]


def test_hf_rows(tmp_path):
    pytest.importorskip("transformers")
    rows = bench(tmp_path, "hf", "--tokens", "64", "--segment", "32", "--mem", "4", "--steps", "1", "--warmup", "1")
    assert list(rows.impl) == ["bare-long", "bare-segments", "rmt"] and (rows.train_ms_per_token > 0).all()
    rmt = rows.iloc[2]
    assert rmt["train_vs_bare-long"] > 0
    assert rmt["eval_vs_bare-segments_mem_aside"] == pytest.approx(rmt["eval_vs_bare-segments"] / ((32 + 8) / 32))
