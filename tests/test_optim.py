"""Learning-rate schedules against the PyTorch schedulers the original scripts stepped.

    python -m pytest tests/test_optim.py -q
"""
import argparse
import math

import pytest
import torch
from rmt.training.optim import LRSchedule


def schedule(**kw):
    args = argparse.Namespace(**{**dict(scheduler="cosine", lr=1e-3, warmup_step=0, max_step=100, eta_min=0.0,
                                        lr_min=0.0, decay_rate=0.5, patience=0), **kw})
    return LRSchedule(torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=args.lr), args)


def test_cosine_runs_over_the_full_max_step_after_warm_up():
    s = schedule(warmup_step=10, eta_min=1e-5)
    assert [s.lr_at(i) for i in (0, 4, 9)] == pytest.approx([1e-4, 5e-4, 1e-3])  # (step + 1) / warmup
    for step in (10, 37, 50, 99, 100):  # CosineAnnealingLR(T_max=max_step), not max_step - warmup
        want = 1e-5 + (1e-3 - 1e-5) * (1 + math.cos(math.pi * step / 100)) / 2
        assert s.lr_at(step) == pytest.approx(want)
    assert s.lr_at(100) == pytest.approx(1e-5)


def test_inv_sqrt_matches_the_original_lambda():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
    lam = lambda step: 1.0 if step == 0 else (step / 20**1.5 if step <= 20 else 1 / step**0.5)  # noqa: E731
    ref = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    s = schedule(scheduler="inv_sqrt", warmup_step=20)
    for step in range(1, 60):
        opt.step(), ref.step()
        assert s.lr_at(step) == pytest.approx(opt.param_groups[0]["lr"])
    assert schedule(scheduler="inv_sqrt").lr_at(0) == 1e-3  # multiplier 1 at step 0 without warm-up


@pytest.mark.parametrize("patience", [0, 2])
def test_dev_perf_decays_as_reduce_lr_on_plateau(patience):
    s = schedule(scheduler="dev_perf", patience=patience, lr_min=2e-4)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=patience, min_lr=2e-4)
    # a plateau, a tiny gain below the relative threshold (no improvement for torch), a real gain, plateaus
    losses = [5.0, 5.0, 5.0, 4.9999, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0]
    for loss in losses:
        s.observe(loss)
        ref.step(loss)
        assert s.lr_at(1000) == pytest.approx(opt.param_groups[0]["lr"])
    assert s.lr_at(1000) == pytest.approx(2e-4)  # floored at lr_min


def test_dev_perf_state_survives_a_restart():
    s = schedule(scheduler="dev_perf")
    for loss in (3.0, 3.0, 3.0):
        s.observe(loss)
    again = schedule(scheduler="dev_perf")
    again.load_state_dict(s.state_dict())
    assert again.lr_at(5) == s.lr_at(5) == pytest.approx(2.5e-4)
    again.observe(3.0), s.observe(3.0)
    assert again.lr_at(5) == s.lr_at(5)


def test_constant_is_warm_up_then_flat():
    s = schedule(scheduler="constant", warmup_step=4)
    assert [s.lr_at(i) for i in range(6)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
