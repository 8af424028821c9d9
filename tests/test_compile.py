"""torch.compile compiles once per segment shape: no recompiles inside the training loops.

A counting backend stands in for Inductor (graph capture and guards, which decide recompiles,
are the same for every backend), so this runs in seconds on CPU. On CUDA the same loop also runs
through Inductor with FlexAttention, the configuration the GPU benchmarks use.
"""
import pytest
import torch
from rmt.model.recurrence import MemoryState, run_segments
from rmt.model.transformer import MemTransformerLM, init_weights

SMALL = dict(n_token=20, n_layer=2, n_head=2, d_model=16, d_head=16, d_inner=32, tgt_len=6)


class CountingBackend:
    def __init__(self):
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward


def _task_step(model, opt, batch):
    """One algorithmic-task sample: 3 segments, full BPTT, memory reset per sample."""
    xs, ys = batch[:, :-1].split(6, 1), batch[:, 1:].split(6, 1)
    nlls, _ = run_segments(model, list(xs), list(ys), MemoryState(), None)
    torch.stack([n.mean() for n in nlls]).mean().backward()
    opt.step()
    opt.zero_grad()


def _lm_step(model, opt, batch, state):
    """One LM step: one segment, memory and cache carried along the stream and detached."""
    nll, state = model(batch[:, :-1], batch[:, 1:], state)
    nll.mean().backward()
    opt.step()
    opt.zero_grad()
    return state.detach()


@pytest.mark.parametrize("kw", [dict(num_mem_tokens=3), dict(mem_len=4), dict(num_mem_tokens=2, mem_len=4)])
def test_no_recompiles_after_the_first_steps(kw):
    torch._dynamo.reset()
    model = MemTransformerLM(**{**SMALL, **kw})
    init_weights(model)
    backend = CountingBackend()
    compiled = torch.compile(model, backend=backend, dynamic=False)  # as the drivers compile
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)

    def run(n_steps, state):
        for _ in range(n_steps):
            _task_step(compiled, opt, torch.randint(0, 20, (4, 19), generator=g))
            state = _lm_step(compiled, opt, torch.randint(0, 20, (4, 7), generator=g), state)
        return state

    state = run(2, MemoryState())  # warm-up: every shape (empty and full cache, first and carried memory)
    warm = backend.graphs
    assert warm > 0
    model.eval()
    with torch.no_grad():
        compiled(torch.randint(0, 20, (4, 6)), torch.randint(0, 20, (4, 6)), state)
    model.train()
    after_eval = backend.graphs
    run(5, state)
    assert backend.graphs == after_eval, f"{backend.graphs - after_eval} recompiles in the training loop"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="Inductor with FlexAttention: CUDA only")
def test_inductor_flex_bf16_compiles_once_per_shape_and_matches_eager():
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    kw = dict(num_mem_tokens=2, mem_len=4)
    model = MemTransformerLM(**{**SMALL, **kw, "attn_impl": "flex"}).cuda()
    init_weights(model)
    reference = MemTransformerLM(**{**SMALL, **kw}).cuda()
    reference.load_state_dict(model.state_dict())
    compiled = torch.compile(model, dynamic=False)  # as the drivers do: one graph per segment shape
    g = torch.Generator().manual_seed(0)
    batch = torch.randint(0, 20, (4, 19), generator=g).cuda()
    xs, ys = list(batch[:, :-1].split(6, 1)), list(batch[:, 1:].split(6, 1))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        ours, _ = run_segments(compiled, xs, ys, MemoryState(), None)
        ref, _ = run_segments(reference, xs, ys, MemoryState(), None)
    ours, ref = torch.stack(ours).float(), torch.stack(ref).float()
    assert torch.isfinite(ours).all()
    assert (ours - ref).norm() / ref.norm() < 2e-2  # bf16 on both sides, summed in other orders
    ours.mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(3):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _task_step(compiled, opt, torch.randint(0, 20, (4, 19), generator=g).cuda())
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == frames, "recompiled in the training loop"
