"""Associative memory over a Hugging Face decoder (rmt.hf.associative, ARMT): the read and the
write against a slow reference written from the equations, the model's properties, truncated
BPTT, generation with the cache, saving and loading, and training through the families."""
import copy

import pytest
import torch

transformers = pytest.importorskip("transformers")
from test_hf import (assert_recompute_keeps_gradients, gpt2, llama, loss_and_grads,  # noqa: E402
                     memory_grad_of_segment, reference_greedy, sparse_labels, tokens)  # (the RMT wrapper's)

from rmt.hf import ARMTForCausalLM  # noqa: E402
from rmt.model.associative import AssociativeMemory, dpfp  # noqa: E402
from rmt.hf.modeling import decoder_layers  # noqa: E402


def armt(make=llama, m=3, t=8, d_mem=4, **kw):
    """An ARMT whose memory is live: W_v random (it starts at zero, which stores nothing)."""
    torch.manual_seed(1)
    model = ARMTForCausalLM(make(), m, t, d_mem=d_mem, **kw).eval()
    with torch.no_grad():
        for memory in model.assoc.memories:
            memory.v.weight.normal_(0, 0.3)
    return model


# ---- the equations, written out -------------------------------------------------------------------------

def slow_dpfp(x):
    """phi(x) for one vector, element by element."""
    xp = [max(v, 0.0) for v in x] + [max(-v, 0.0) for v in x]
    n = len(xp)
    return [xp[i] * xp[(i - j) % n] for j in (1, 2, 3) for i in range(n)]


def slow_read(mem, h, A, z):
    """h (N, C) float64, token by token: h + A^T phi(W_q h) / (z . phi(W_q h) + 1e-5)."""
    wq = mem.q.weight.double()
    out = h.clone()
    for n in range(h.size(0)):
        q = torch.tensor(slow_dpfp((wq @ h[n]).tolist()), dtype=torch.float64)
        out[n] = h[n] + (A.T @ q) / (z @ q + 1e-5)
    return out


def slow_write(mem, m, A, z):
    """(A, z) float64 after the write slots m (M, C), slot by slot, every slot against the old A, z."""
    wk, wv = mem.k.weight.double(), mem.v.weight.double()
    wb, bb = mem.beta.weight.double(), mem.beta.bias.double()
    dA, dz = torch.zeros_like(A), torch.zeros_like(z)
    for i in range(m.size(0)):
        k = torch.tensor(slow_dpfp((wk @ m[i]).tolist()), dtype=torch.float64)
        v = wv @ m[i]
        beta = torch.sigmoid(wb @ m[i] + bb)
        stored = (A.T @ k) / (z @ k + 1e-5)
        dA += beta * torch.outer(k, v - stored)
        dz += min(max(1 - float(z @ k) / float(k @ k), 0.0), 1.0) * k
    return A + dA, z + dz


def test_dpfp_is_the_projection_of_the_equations():
    x = torch.randn(3, 5)
    assert dpfp(x).shape == (3, 30)
    for row in range(3):
        torch.testing.assert_close(dpfp(x[row]).double(), torch.tensor(slow_dpfp(x[row].tolist()), dtype=torch.float64))


def test_read_and_write_equal_the_slow_reference():
    torch.manual_seed(0)
    mem = AssociativeMemory(16, 4)
    torch.nn.init.normal_(mem.v.weight, 0, 0.5)
    m1, m2, h = torch.randn(1, 3, 16), torch.randn(1, 3, 16), torch.randn(1, 5, 16)
    A, z = mem.write(m1, None, None)  # from empty memory
    A0, z0 = slow_write(mem, m1[0].double(), torch.zeros(24, 16, dtype=torch.float64),
                        torch.zeros(24, dtype=torch.float64))
    torch.testing.assert_close(A[0].double(), A0, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(z[0].double(), z0, atol=1e-6, rtol=1e-6)
    A2, z2 = mem.write(m2, A, z)  # onto a memory that holds something: the delta rule and gamma
    A1, z1 = slow_write(mem, m2[0].double(), A0, z0)
    torch.testing.assert_close(A2[0].double(), A1, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(z2[0].double(), z1, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(mem.read(h, A2, z2)[0].double(), slow_read(mem, h[0].double(), A1, z1),
                               atol=1e-5, rtol=1e-5)


def test_a_hand_built_memory_recalls_what_was_stored_under_each_key():
    """Two keys whose DPFP features do not overlap, (1, 1) and (-1, -1); written with beta ~ 1,
    reading with either key gives back its value."""
    mem = AssociativeMemory(2, 2)
    with torch.no_grad():
        mem.q.weight.copy_(torch.eye(2))
        mem.k.weight.copy_(torch.eye(2))
        mem.v.weight.copy_(torch.tensor([[0.5, -2.0], [3.0, 1.0]]))
        mem.beta.weight.zero_()
        mem.beta.bias.fill_(30.0)
    keys = torch.tensor([[[1.0, 1.0], [-1.0, -1.0]]])
    assert float(dpfp(keys[0, 0]) @ dpfp(keys[0, 1])) == 0.0
    A, z = mem.write(keys, None, None)
    recalled = mem.read(keys, A, z) - keys  # what the memory adds to each key's hidden state
    torch.testing.assert_close(recalled, mem.v(keys), atol=1e-4, rtol=1e-4)


# ---- the model --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [llama, gpt2])
def test_a_fresh_armt_is_the_bare_backbone_segment_by_segment(make):
    torch.manual_seed(1)
    model = ARMTForCausalLM(make(), 3, 8, d_mem=4).eval()  # W_v = 0: nothing stored, nothing recalled
    ids = tokens(2, 20)
    ref = torch.cat([model.backbone(ids[:, i : i + 8]).logits for i in range(0, 20, 8)], 1)
    torch.testing.assert_close(model(ids).logits, ref, atol=1e-5, rtol=0)


class Reference(torch.nn.Module):
    """A decoder layer replaced by: the read (token by token, float64), the layer, the write
    (slot by slot, float64) into `self.new`. An independent path: no hooks, no einsum."""

    def __init__(self, layer, mem, state, write):
        super().__init__()
        self.layer, self.mem, self.state, self.write, self.new = layer, mem, state, write, None

    def forward(self, hidden_states, *args, **kwargs):
        if self.state is not None:
            A, z = self.state
            hidden_states = torch.stack([slow_read(self.mem, h.double(), A[b].double(), z[b].double())
                                         for b, h in enumerate(hidden_states)]).float()
        out = self.layer(hidden_states, *args, **kwargs)
        h = out[0] if isinstance(out, tuple) else out
        before = self.state or (torch.zeros(h.size(0), 24, h.size(-1)), torch.zeros(h.size(0), 24))
        self.new = [slow_write(self.mem, h[b, self.write].double(), before[0][b].double(), before[1][b].double())
                    for b in range(h.size(0))]
        return out


def reference_forward(model, ids):
    """The wrapper's layout over a copy of its backbone whose layers are `Reference`s: per segment
    [tokens | write slots], positions 0.., logits of the tokens, the layers' new (A, z) carried."""
    t, m = model.config.segment_size, model.config.num_mem_tokens
    backbone = copy.deepcopy(model.backbone)
    layers = backbone.model.layers
    state, logits = [None] * len(layers), []
    for start in range(0, ids.size(1), t):
        seg = ids[:, start : start + t]
        for i in range(len(layers)):
            layers[i] = Reference(model.backbone.model.layers[i], model.assoc.memories[i], state[i],
                                  slice(seg.size(1), seg.size(1) + m))
        embeds = torch.cat([backbone.get_input_embeddings()(seg), model.memory.unsqueeze(0).expand(seg.size(0), -1, -1)], 1)
        positions = torch.arange(embeds.size(1)).expand(seg.size(0), -1)
        out = backbone(inputs_embeds=embeds, position_ids=positions, use_cache=False)
        logits.append(out.logits[:, : seg.size(1)])
        state = [(torch.stack([a for a, _ in layer.new]).float(), torch.stack([z for _, z in layer.new]).float())
                 for layer in layers]
    return torch.cat(logits, 1), state


def test_the_model_equals_the_reference_layer_by_layer_over_segments():
    model = armt(llama, m=3, t=8, d_mem=4)
    ids = tokens(2, 24)
    with torch.no_grad():
        out = model(ids)
        ref_logits, ref_state = reference_forward(model, ids)
    torch.testing.assert_close(out.logits, ref_logits, atol=1e-4, rtol=1e-4)
    for i, (A, z) in enumerate(ref_state):
        torch.testing.assert_close(out.memory.assoc[2 * i], A, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(out.memory.assoc[2 * i + 1], z, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("depth", [None, 0, 1])
def test_bptt_depth_truncates_the_gradient_through_the_associative_state(depth):
    """The write slots only act through what they store: a segment's loss reaches the slots'
    embeddings only through the state of earlier segments, and only as deep as depth allows."""
    model = armt(llama, m=3, t=6, bptt_depth=depth)
    ids = tokens(2, 6 * 3)
    for k in range(3):
        slot_grad = memory_grad_of_segment(model, ids, k)  # the write slots' embeddings
        reaches = k >= 1 and (depth is None or depth >= 1)
        assert (slot_grad > 0) == reaches, (depth, k, slot_grad)


@pytest.mark.parametrize("make", [llama, gpt2])
@pytest.mark.parametrize("depth", [None, 1])
def test_recomputed_segments_give_the_same_gradients(make, depth):
    """Activation checkpointing per segment carries the associative state as the segment's input."""
    names = assert_recompute_keeps_gradients(lambda recompute: armt(make, 3, 8, bptt_depth=depth, recompute=recompute))
    assert any(n.startswith("assoc.") for n in names)


@pytest.mark.parametrize("make", [llama, gpt2])
def test_logits_where_labelled_only_give_the_same_loss_and_gradients(make):
    model = armt(make, t=5)
    ids = tokens(3, 21)
    labels = sparse_labels(ids)
    full, full_grads = loss_and_grads(model, ids, labels)
    sparse, sparse_grads = loss_and_grads(model, ids, labels, labelled_logits_only=True)
    torch.testing.assert_close(sparse.loss, full.loss)
    assert full_grads.keys() == sparse_grads.keys() and any("assoc" in name for name in full_grads)
    for name in full_grads:
        torch.testing.assert_close(sparse_grads[name], full_grads[name], msg=name)

@pytest.mark.parametrize("prompt_len", [3, 8, 13])
def test_greedy_generation_with_the_cache_equals_rerunning_the_model(prompt_len):
    model = armt(llama, m=3, t=8)
    ids = tokens(2, prompt_len)
    out = model.generate(ids, max_new_tokens=20, eos_token_id=None)  # crosses 2 or 3 segment boundaries
    assert torch.equal(out[:, prompt_len:], reference_greedy(model, ids, 20))


def test_save_and_load_give_identical_outputs(tmp_path):
    model = armt(gpt2)
    ids = tokens(2, 20)
    model.save_pretrained(tmp_path / "armt")
    loaded = ARMTForCausalLM.from_pretrained(tmp_path / "armt").eval()
    assert loaded.config.memory == "associative" and loaded.config.d_mem == 4
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, atol=0, rtol=0)


def test_bad_settings_are_one_line_errors():
    for kw, words in ((dict(m=0), "must be positive"), (dict(d_mem=0), "must be positive")):
        with pytest.raises(ValueError, match=words):
            armt(**kw)
    assert len(decoder_layers(llama())) == 2
