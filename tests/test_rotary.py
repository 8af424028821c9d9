"""Rotary positions (attn_type 4): the rotation against an independent complex-number reference,
scores that depend only on relative position, and the fused and flex paths equal to eager."""
import pytest
import torch
from conftest import grads, make, tokens
from rmt.model.layers import Rotary, rotate
from rmt.model.recurrence import run_segments


def complex_rotation(x, positions, d_head, base=10000.0):
    """x (B, L, H, D): pairs (x[i], x[i + D/2]) as complex numbers times exp(i * p * theta_i)."""
    theta = base ** (-torch.arange(0, d_head, 2, dtype=torch.float64) / d_head)
    angle = positions.double()[:, None] * theta  # (L, D/2)
    half = d_head // 2
    z = torch.complex(x[..., :half].double(), x[..., half:].double()) * torch.polar(torch.ones_like(angle), angle)[
        :, None]
    return torch.cat([z.real, z.imag], dim=-1).float()


def test_rotation_equals_the_complex_reference():
    x = torch.randn(2, 7, 3, 8)
    positions = torch.arange(5, 12)
    torch.testing.assert_close(rotate(x, Rotary(8)(positions)), complex_rotation(x, positions, 8), rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("shift", [1, 17, 1000])
def test_scores_depend_only_on_relative_position(shift):
    q, k = torch.randn(1, 6, 2, 16), torch.randn(1, 6, 2, 16)
    rope = Rotary(16)
    positions = torch.arange(6)

    def scores(offset):
        tables = rope(positions + offset)
        return torch.einsum("bqhd,bkhd->bhqk", rotate(q, tables), rotate(k, tables))

    torch.testing.assert_close(scores(shift), scores(0), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("impl", ["fused", "flex"])
@pytest.mark.parametrize("kw", [dict(num_mem_tokens=2), dict(num_mem_tokens=2, mem_len=5), dict(mem_len=4)])
def test_fused_and_flex_equal_eager(impl, kw):
    eager = make(attn_type=4, **kw)
    other = make(attn_type=4, attn_impl=impl, **kw)
    other.load_state_dict(eager.state_dict())
    xs = [tokens(seed=s) for s in range(3)]
    with torch.no_grad():
        ref, _ = run_segments(eager, xs, xs)
        out, _ = run_segments(other, xs, xs)
    for a, b in zip(ref, out):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    if impl == "fused":  # flex has no backward on CPU
        g_ref = grads(eager, torch.cat(run_segments(eager, xs, xs)[0], 1).mean())
        g = grads(other, torch.cat(run_segments(other, xs, xs)[0], 1).mean())
        for name in g_ref:
            torch.testing.assert_close(g[name], g_ref[name], rtol=1e-4, atol=1e-6)


def test_rotary_model_sees_token_order():
    """No position bias anywhere: a rotary model still tells positions apart (outputs change when
    two tokens are swapped), unlike attention without positions."""
    model = make(attn_type=4, num_mem_tokens=2)
    x = tokens(b=1, t=6)
    swapped = x[:, [1, 0, 2, 3, 4, 5]]
    last = model.encode(x)[0][:, -1]
    assert (last - model.encode(swapped)[0][:, -1]).abs().max() > 1e-4
    assert "r_w_bias" not in dict(model.named_parameters())


def test_rotary_needs_an_even_head_size():
    with pytest.raises(ValueError, match="d_head must be even"):
        make(attn_type=4, d_head=7)
