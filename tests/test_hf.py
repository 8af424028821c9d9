"""RMT over Hugging Face models (rmt.hf): tiny GPT-2, Llama and BERT built from configs, no downloads."""
import pytest
import torch

transformers = pytest.importorskip("transformers")  # the hf extra (installed with dev)
from transformers import (BertConfig, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel,  # noqa: E402
                          LlamaConfig, LlamaForCausalLM)

from rmt.hf import RMTForCausalLM, RMTForSequenceClassification, generation  # noqa: E402
from rmt.model.recurrence import MemoryState  # noqa: E402

V = 64
transformers.logging.set_verbosity_error()


def gpt2():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=V, n_positions=128,
                                      bos_token_id=0, eos_token_id=0, initializer_range=0.2)).eval()


def llama():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2, vocab_size=V, max_position_embeddings=128,
                                        bos_token_id=0, eos_token_id=0, pad_token_id=0)).eval()


def bert():
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                    intermediate_size=64, vocab_size=V, max_position_embeddings=128,
                                                    num_labels=3, initializer_range=0.3)).eval()


DECODERS = [gpt2, llama]
CLS, SEP = 1, 2


def tokens(b, n, seed=1):
    return torch.randint(3, V, (b, n), generator=torch.Generator().manual_seed(seed))


def rmt(make, m, t, **kw):
    torch.manual_seed(1)
    base = make()
    if make is bert:
        return RMTForSequenceClassification(base, m, t, cls_token_id=CLS, sep_token_id=SEP, **kw).eval()
    return RMTForCausalLM(base, m, t, **kw).eval()


# ---- the layout ------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", DECODERS)
def test_no_memory_one_segment_equals_the_bare_model(make):
    model = rmt(make, 0, 24)
    ids = tokens(2, 24)
    torch.testing.assert_close(model(ids).logits, model.backbone(ids).logits, atol=1e-5, rtol=0)


def test_no_memory_one_segment_equals_the_bare_encoder():
    model = rmt(bert, 0, 24)
    ids = tokens(2, 24)
    framed = torch.cat([torch.full((2, 1), CLS), ids, torch.full((2, 1), SEP)], 1)
    torch.testing.assert_close(model(ids).logits, model.backbone(framed).logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("make", [*DECODERS, bert])
def test_a_segment_depends_on_the_one_before_only_through_memory(make):
    model = rmt(make, 4, 8)
    a1, a2, b = tokens(2, 8, 1), tokens(2, 8, 2), tokens(2, 8, 3)
    with torch.no_grad():
        both1, both2 = model(torch.cat([a1, b], 1)), model(torch.cat([a2, b], 1))
        alone = model(b, memory=model(a1).memory)
    later = (lambda o: o.logits[:, 8:]) if make is not bert else (lambda o: o.logits)
    torch.testing.assert_close(later(both1), alone.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(both1.memory.mem, alone.memory.mem, atol=1e-5, rtol=0)
    assert (later(both1) - later(both2)).abs().max() > 1e-4  # the memory does carry segment a


@pytest.mark.parametrize("make", [*DECODERS, bert])
def test_padding_changes_no_real_output_nor_the_memory(make):
    model = rmt(make, 3, 8)
    ids = tokens(3, 27)
    mask = torch.ones_like(ids)
    mask[1, 13:] = 0  # ends inside segment 1; segments 2 and 3 of this row are all padding
    mask[2, 24:] = 0  # ends at a segment boundary
    with torch.no_grad():
        padded = model(ids, attention_mask=mask)
        for row, n in ((0, 27), (1, 13), (2, 24)):
            alone = model(ids[row : row + 1, :n])
            got = padded.logits[row, :n] if make is not bert else padded.logits[row]
            torch.testing.assert_close(got, alone.logits[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(padded.memory.mem[row], alone.memory.mem[0], atol=1e-5, rtol=0)


def test_the_loss_covers_every_real_token_of_every_segment():
    model = rmt(gpt2, 2, 8)
    ids = tokens(2, 20)
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0
    out = model(ids, attention_mask=mask, labels=ids)
    logp = out.logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0]
    counted = mask[:, 1:].bool()
    assert counted.sum() == 19 + 14
    torch.testing.assert_close(out.loss, -logp[counted].mean())



def sparse_labels(ids, mask=None):
    """Labels on a few tokens only, not the same in every row (some segments hold none), as in QA."""
    labels = torch.full_like(ids, -100)
    for row, spans in enumerate([[(7, 9)], [(12, 13), (18, 20)], [(19, 20)]][: ids.size(0)]):
        for a, b in spans:
            labels[row, a:b] = ids[row, a:b]
    return labels if mask is None else labels.masked_fill(mask == 0, -100)


def loss_and_grads(model, ids, labels, mask=None, **kw):
    model.zero_grad()
    out = model(ids, attention_mask=mask, labels=labels, **kw)
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("make", DECODERS)
@pytest.mark.parametrize("options", [dict(m=3), dict(m=0), dict(m=3, bptt_depth=1), dict(m=3, recompute=True)])
def test_logits_where_labelled_only_give_the_same_loss_and_gradients(make, options):
    options = dict(options)
    model = rmt(make, options.pop("m"), 5, **options)
    ids = tokens(3, 21)
    mask = torch.ones_like(ids)
    mask[2, 20:] = 0  # a padded row: its label there is dropped either way
    labels = sparse_labels(ids)
    full, full_grads = loss_and_grads(model, ids, labels, mask)
    sparse, sparse_grads = loss_and_grads(model, ids, labels, mask, labelled_logits_only=True)
    assert sparse.logits is None and full.logits.shape == (3, 21, V)
    torch.testing.assert_close(sparse.loss, full.loss)
    assert full_grads.keys() == sparse_grads.keys()
    for name in full_grads:
        torch.testing.assert_close(sparse_grads[name], full_grads[name], msg=name)
    torch.testing.assert_close(sparse.memory.mem, full.memory.mem)
    with pytest.raises(ValueError, match="give labels"):
        model(ids, labelled_logits_only=True)

# ---- gradient policies ---------------------------------------------------------------------------------

def memory_grad_of_segment(model, ids, k):
    """|grad| of the initial memory from the loss of segment k's tokens alone."""
    t = model.config.segment_size
    labels = torch.full_like(ids, -100)
    labels[:, k * t + 1 : (k + 1) * t] = ids[:, k * t + 1 : (k + 1) * t]
    model.zero_grad()
    model(ids, labels=labels).loss.backward()
    return model.memory.grad.abs().sum().item()


@pytest.mark.parametrize("make", DECODERS)
@pytest.mark.parametrize("depth", [None, 0, 1, 2])
def test_bptt_depth_truncates_the_gradient_to_memory(make, depth):
    model = rmt(make, 3, 6, bptt_depth=depth)
    ids = tokens(2, 6 * 4)
    for k in range(4):
        reaches = depth is None or k <= depth
        grad = memory_grad_of_segment(model, ids, k)
        assert (grad > 0) == reaches, (depth, k, grad)


@pytest.mark.parametrize("make", [*DECODERS, bert])
@pytest.mark.parametrize("depth", [None, 1])
def test_recomputed_segments_give_the_same_gradients(make, depth):
    labels = torch.tensor([0, 2]) if make is bert else None
    assert_recompute_keeps_gradients(lambda recompute: rmt(make, 3, 8, bptt_depth=depth, recompute=recompute),
                                     labels)


def assert_recompute_keeps_gradients(build, labels=None):
    """build(recompute) -> a wrapper; its gradients with and without recomputed segments agree."""
    ids = tokens(2, 24)
    grads = []
    for recompute in (False, True):
        model = build(recompute).train()
        for module in model.modules():  # dropout off, the gradients then compare exactly
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
        model(ids, labels=ids if labels is None else labels).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and "memory" in grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5)
    return grads[0].keys()


# ---- generation -----------------------------------------------------------------------------------------

def reference_greedy(model, ids, n):
    """The slow reference: the whole wrapper re-run on the growing sequence for every token."""
    out = []
    with torch.no_grad():
        for _ in range(n):
            token = model(ids).logits[:, -1].argmax(-1)
            out.append(token)
            ids = torch.cat([ids, token[:, None]], 1)
    return torch.stack(out, 1)


@pytest.mark.parametrize("make", DECODERS)
@pytest.mark.parametrize("prompt_len", [3, 8, 13])
def test_greedy_generation_equals_rerunning_the_wrapper(make, prompt_len):
    model = rmt(make, 3, 8)
    ids = tokens(2, prompt_len)
    out = model.generate(ids, max_new_tokens=20, eos_token_id=None)  # crosses 2 or 3 segment boundaries
    assert out.shape == (2, prompt_len + 20) and torch.equal(out[:, :prompt_len], ids)  # transformers' convention
    assert torch.equal(out[:, prompt_len:], reference_greedy(model, ids, 20))


def test_memory_norm_rescales_what_is_written_and_generation_follows_it(tmp_path):
    model = rmt(llama, 3, 8, memory_norm=True)
    ids = tokens(2, 19)
    with torch.no_grad():
        out = model(ids)
    embed_norm = model.backbone.get_input_embeddings().weight.norm(dim=-1).mean()
    torch.testing.assert_close(out.memory.mem.norm(dim=-1), embed_norm.expand(2, 3))
    plain = rmt(llama, 3, 8)
    with torch.no_grad():
        assert not torch.allclose(plain(ids).logits[:, 8:], out.logits[:, 8:])  # segment 1 on reads other memory
    gen = model.generate(ids[:, :5], max_new_tokens=14, eos_token_id=None)  # writes memory twice on the way
    assert torch.equal(gen[:, 5:], reference_greedy(model, ids[:, :5], 14))
    model.save_pretrained(tmp_path)
    assert RMTForCausalLM.from_pretrained(tmp_path).config.memory_norm


def test_memory_residual_starts_as_the_learned_memory_and_learns_a_projection_of_what_is_written(tmp_path):
    """--memory_residual: each segment reads memory + P(written), P zero at the start (so a fresh
    model reads its learned memory every segment), trained by the gradient, saved and loaded, and
    generation follows it; an encoder or a wrapper without memory tokens refuses it."""
    model = rmt(llama, 3, 8, memory_residual=True)
    ids = tokens(2, 19)
    out = model(ids)
    torch.testing.assert_close(out.memory.mem, model.memory.expand(2, -1, -1))
    with torch.no_grad():
        reset = model(ids, read_memory=lambda state: MemoryState(None))  # every segment reads the learned memory
    torch.testing.assert_close(out.logits, reset.logits)
    out.logits[:, 8:].sum().backward()  # the loss of segments 2 and 3 reaches the projection
    assert model.memory_proj.weight.grad.abs().sum() > 0
    assert "memory_proj.weight" in model.memory_parameters()  # --mem_lr trains it, save_pretrained writes it
    with torch.no_grad():
        model.memory_proj.weight.normal_(0, 0.05)
        moved = model(ids)
    assert not torch.allclose(moved.logits[:, 8:], out.logits[:, 8:]) and torch.equal(moved.logits[:, :8], out.logits[:, :8])
    gen = model.generate(ids[:, :5], max_new_tokens=14, eos_token_id=None)
    assert torch.equal(gen[:, 5:], reference_greedy(model, ids[:, :5], 14))
    model.save_pretrained(tmp_path)
    again = RMTForCausalLM.from_pretrained(tmp_path)
    assert again.config.memory_residual and torch.equal(again.memory_proj.weight, model.memory_proj.weight)
    with pytest.raises(ValueError, match="memory_residual maps a decoder's written memory tokens"):
        rmt(llama, 0, 8, memory_residual=True)
    with pytest.raises(ValueError, match="memory_residual maps a decoder's written memory tokens"):
        RMTForSequenceClassification(bert(), 2, 8, memory_residual=True)


def test_generation_continues_each_row_after_its_last_real_token():
    model = rmt(llama, 3, 8)
    ids = tokens(2, 11)
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    new = model.generate(ids, attention_mask=mask, max_new_tokens=12, eos_token_id=None)[:, 11:]
    assert torch.equal(new[0], reference_greedy(model, ids[:1], 12)[0])
    assert torch.equal(new[1], reference_greedy(model, ids[1:, :6], 12)[0])


def test_no_write_slot_precedes_a_generated_token(monkeypatch):
    """Every call that predicts a token sees read slots and tokens only: positions below M + T."""
    model = rmt(gpt2, 3, 8)
    calls = []
    forward = model.backbone.forward

    def spy(*args, **kw):
        out = forward(*args, **kw)
        calls.append((kw["position_ids"][0].tolist(), kw["output_hidden_states"]))
        return out

    monkeypatch.setattr(model.backbone, "forward", spy)
    model.generate(tokens(1, 5), max_new_tokens=20, eos_token_id=None)
    m, t = 3, 8
    writes = [pos for pos, hidden in calls if hidden]
    feeds = [pos for pos, hidden in calls if not hidden]
    assert len(writes) == 2 and all(pos == list(range(m + t, m + t + m)) for pos in writes)
    assert all(max(pos) < m + t for pos in feeds)
    # the token after a write starts a new cache at position M (its read memory is 0..M-1)
    after = [calls[i + 1][0] for i, (_, hidden) in enumerate(calls) if hidden]
    assert all(pos == [0, 1, 2, 3] for pos in after)


def test_sampling_is_reproducible_and_eos_ends_a_row():
    model = rmt(gpt2, 2, 8)
    ids = tokens(2, 5)
    a = model.generate(ids, max_new_tokens=15, do_sample=True, top_k=10, seed=3, eos_token_id=None)
    b = model.generate(ids, max_new_tokens=15, do_sample=True, top_k=10, seed=3, eos_token_id=None)
    assert torch.equal(a, b)
    greedy = model.generate(ids, max_new_tokens=15, eos_token_id=None)[:, 5:]
    eos = int(greedy[0, 4])
    stopped = model.generate(ids, max_new_tokens=15, eos_token_id=eos, pad_token_id=7)[:, 5:]
    first = int((greedy[0] == eos).nonzero()[0])
    assert torch.equal(stopped[0, : first + 1], greedy[0, : first + 1]) and (stopped[0, first + 1:] == 7).all()


def test_generation_follows_the_backbones_generation_config():
    """eos and pad ids come from the backbone's generation config, as in transformers; keyword
    arguments override it; generation stops when every row has ended, so the output can be short."""
    model = rmt(llama, 2, 8)
    ids = tokens(2, 5)
    greedy = model.generate(ids, max_new_tokens=15, eos_token_id=None)[:, 5:]
    eos = int(greedy[0, 2])
    model.backbone.generation_config.eos_token_id = [999, eos]  # a list, as instruct models have
    model.backbone.generation_config.pad_token_id = 5
    out = model.generate(ids, max_new_tokens=15)
    first = [int((row == eos).nonzero()[0]) if (row == eos).any() else 14 for row in greedy]
    assert out.size(1) == 5 + max(first) + 1  # stops when the last row ends
    for row, stop, g in zip(out[:, 5:], first, greedy):
        assert torch.equal(row[: stop + 1], g[: stop + 1]) and (row[stop + 1:] == 5).all()
    model.backbone.generation_config.max_new_tokens = 3  # a default from the config, overridden by an argument
    assert model.generate(ids, eos_token_id=None).size(1) == 8
    assert model.generate(ids, eos_token_id=None, max_new_tokens=4).size(1) == 9
    with pytest.raises(ValueError, match="does not use: nonsense"):
        model.generate(ids, nonsense=1)


def test_generation_refuses_a_model_in_training_mode():
    model = rmt(gpt2, 2, 8).train()
    with pytest.raises(ValueError, match="eval"):
        generation.generate(model, tokens(1, 4), max_new_tokens=2)


# ---- options: freezing, LoRA, save and load ---------------------------------------------------------------

def test_freeze_backbone_trains_memory_and_a_classification_head_only():
    lm = RMTForCausalLM(gpt2(), 3, 8, freeze_backbone=True)
    assert [n for n, p in lm.named_parameters() if p.requires_grad] == ["memory"]
    enc = RMTForSequenceClassification(bert(), 3, 8, freeze_backbone=True)
    trainable = {n for n, p in enc.named_parameters() if p.requires_grad}
    assert trainable == {"memory", "backbone.classifier.weight", "backbone.classifier.bias"}


@pytest.mark.parametrize("make", [gpt2, llama, bert])
def test_save_and_load_give_identical_outputs(make, tmp_path):
    model = rmt(make, 3, 8, bptt_depth=1)
    with torch.no_grad():
        model.memory.add_(1.0)  # trained-looking memory, not the initial draw
    ids = tokens(2, 20)
    model.save_pretrained(tmp_path / "full")
    model.save_pretrained(tmp_path / "ref", save_backbone=False)
    cls = type(model)
    loaded = cls.from_pretrained(tmp_path / "full").eval()
    by_reference = cls.from_pretrained(tmp_path / "ref", backbone=model.backbone).eval()
    assert loaded.config == model.config
    with torch.no_grad():
        for other in (loaded, by_reference):
            torch.testing.assert_close(other(ids).logits, model(ids).logits, atol=0, rtol=0)
    assert (tmp_path / "full" / "backbone" / "model.safetensors").is_file()
    with pytest.raises(ValueError, match="wrapper"):
        (RMTForSequenceClassification if cls is RMTForCausalLM else RMTForCausalLM).from_pretrained(tmp_path / "full")
    with pytest.raises(ValueError, match="rmt_config.json"):
        cls.from_pretrained(tmp_path / "nothing-here")


def test_lora_through_peft_trains_adapters_and_memory_and_round_trips(tmp_path):
    peft = pytest.importorskip("peft")
    base = llama()
    ids = tokens(2, 20)
    bare = RMTForCausalLM(base, 3, 8)
    with torch.no_grad():
        before = bare(ids).logits
    lora = peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    model = RMTForCausalLM(lora, 3, 8)
    model.memory.data.copy_(bare.memory.data)
    model.eval()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "memory" in trainable and all("lora_" in n for n in trainable - {"memory"}) and len(trainable) > 1
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, before)  # LoRA starts as the identity
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_()
        after = model(ids).logits
    model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter").is_dir() and not (tmp_path / "backbone").exists()
    loaded = RMTForCausalLM.from_pretrained(tmp_path, backbone=llama()).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, after)
    assert torch.equal(loaded.generate(ids, max_new_tokens=10, eos_token_id=None),
                       model.generate(ids, max_new_tokens=10, eos_token_id=None))


def test_bad_arguments_are_one_line_errors():
    with pytest.raises(ValueError, match="segment_size"):
        RMTForCausalLM(gpt2(), 2, 0)
    with pytest.raises(ValueError, match="bptt_depth"):
        RMTForCausalLM(gpt2(), 2, 8, bptt_depth=-2)
    model = rmt(gpt2, 2, 8)
    with pytest.raises(ValueError, match="attention_mask"):
        model(tokens(2, 10), attention_mask=torch.ones(2, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="input_ids"):
        model(tokens(2, 10)[0])
    assert isinstance(model(tokens(1, 4)).memory, MemoryState)
    decoder = transformers.GPT2ForSequenceClassification(GPT2Config(n_layer=1, n_embd=32, n_head=4, vocab_size=V))
    with pytest.raises(ValueError, match="needs a bidirectional encoder"):
        RMTForSequenceClassification(decoder, 2, 8)
