"""Streaming generation: incremental decoding with cached keys and values equals re-encoding at
every position across segment boundaries, and sampling is reproducible."""
import pytest
import torch
from conftest import make, tokens, train_tiny_lm
from rmt.generate import main as generate_main
from rmt.lm.corpus import load_vocab
from rmt.lm.text import TextCodec
from rmt.model.generation import Decoder, ReencodingDecoder, generate
from rmt.model.recurrence import score

CONFIGS = {
    "memory": dict(num_mem_tokens=2),
    "cache": dict(mem_len=5),
    "memory+cache": dict(num_mem_tokens=2, mem_len=7),
    "memory+cache, same_length, clamp_len": dict(num_mem_tokens=2, mem_len=6, same_length=True, clamp_len=4),
    "memory+cache, pre_lnorm, read_mem_from_cache": dict(num_mem_tokens=3, mem_len=4, pre_lnorm=True,
                                                         read_mem_from_cache=True),
    "start-only memory": dict(num_mem_tokens=3, mem_at_end=False),
    "absolute positions": dict(num_mem_tokens=2, mem_len=4, attn_type=2),
    "rotary positions": dict(num_mem_tokens=2, mem_len=5, attn_type=4),
}


@pytest.mark.parametrize("kw", CONFIGS.values(), ids=CONFIGS.keys())
def test_incremental_equals_reencoding_across_segments(kw):
    model = make(**kw)
    seq = tokens(b=2, t=26)  # segments of 6: four boundaries crossed
    fast, slow = Decoder(model, 2), ReencodingDecoder(model, 2)
    fast_logp = torch.stack([fast.feed(seq[:, i]) for i in range(25)], dim=1)  # (B, 25, V)
    slow_logp = torch.stack([slow.feed(seq[:, i]) for i in range(25)], dim=1)
    torch.testing.assert_close(fast_logp, slow_logp, rtol=0, atol=1e-5)
    # And against the one-call score of the whole sequence (a separate path through the model).
    with torch.no_grad():
        nll = score(model, seq, 6).nll
    torch.testing.assert_close(-fast_logp.gather(-1, seq[:, 1:, None])[..., 0], nll, rtol=0, atol=1e-5)


def test_prefill_equals_feeding_one_by_one():
    model = make(num_mem_tokens=2, mem_len=5)
    prompt = tokens(b=2, t=15)
    one_by_one = Decoder(model, 2)
    for i in range(15):
        expected = one_by_one.feed(prompt[:, i])
    prefilled = Decoder(model, 2)
    torch.testing.assert_close(prefilled.prefill(prompt), expected, rtol=0, atol=1e-5)
    assert prefilled.position == one_by_one.position == 3
    nxt = torch.tensor([1, 2])
    torch.testing.assert_close(prefilled.feed(nxt), one_by_one.feed(nxt), rtol=0, atol=1e-5)


def test_greedy_is_deterministic_and_equals_the_reference():
    model = make(num_mem_tokens=2, mem_len=5)
    prompt = tokens(b=2, t=4)
    first = generate(model, prompt, 20, temperature=0)
    assert first.shape == (2, 20)
    assert torch.equal(first, generate(model, prompt, 20, temperature=0))
    assert torch.equal(first, generate(model, prompt, 20, temperature=0, use_cache=False))
    assert torch.equal(first, model.generate(prompt, 20, temperature=1.0, top_k=1, seed=5))


def test_seed_reproduces_sampling():
    model = make(num_mem_tokens=2)
    prompt = tokens(b=3, t=5)
    a = generate(model, prompt, 30, temperature=1.0, top_p=0.9, seed=1)
    assert torch.equal(a, generate(model, prompt, 30, temperature=1.0, top_p=0.9, seed=1))
    assert not torch.equal(a, generate(model, prompt, 30, temperature=1.0, top_p=0.9, seed=2))
    assert torch.equal(generate(model, prompt, 30, top_k=3, seed=4),
                       generate(model, prompt, 30, top_k=3, seed=4, use_cache=False))


def test_generation_keeps_the_training_mode_and_refuses_bad_arguments():
    model = make(num_mem_tokens=2).train()
    generate(model, tokens(b=1, t=3), 2)
    assert model.training
    for bad in (dict(max_new_tokens=-1), dict(temperature=-1.0), dict(top_p=0.0), dict(top_k=-2)):
        with pytest.raises(ValueError):
            generate(model, tokens(b=1, t=3), **{"max_new_tokens": 2, **bad})
    with pytest.raises(ValueError, match="prompt"):
        generate(model, torch.zeros(1, 0, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="eval"):
        Decoder(model, 1)


# ---- the command line: text in, text out, for word and byte corpora ------------------------------

@pytest.mark.parametrize("level", ["word", "char"])
def test_generate_command_on_word_and_byte_corpora(tmp_path, capsys, level):
    ckpt, data, dataset = train_tiny_lm(tmp_path, level)
    capsys.readouterr()
    args = ["--checkpoint", str(ckpt), "--prompt", "the cat sat\non a", "--max_new_tokens", "30", "--temperature", "0"]
    assert generate_main(args) == 0
    out = capsys.readouterr()
    assert "30 generated" in out.err
    assert generate_main([*args, "--no_cache"]) == 0
    assert capsys.readouterr().out == out.out  # greedy: the cache changes nothing
    with pytest.raises(SystemExit) as e:  # nothing to generate is refused, not printed as an empty success
        generate_main([*args, "--max_new_tokens", "0"])
    assert e.value.code == 2 and "--max_new_tokens >= 1" in capsys.readouterr().err
    codec = TextCodec(load_vocab(data, dataset), dataset)
    ids = codec.encode(out.out.rstrip("\n"))  # the text decodes back to tokens of the corpus
    assert codec.decode(ids) == out.out.rstrip("\n")
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("the mat", encoding="utf-8")
    sampled = ["--checkpoint", str(ckpt), "--prompt_file", str(prompt), "--max_new_tokens", "20", "--seed", "3"]
    assert generate_main(sampled) == 0
    first = capsys.readouterr().out
    assert generate_main(sampled) == 0
    assert capsys.readouterr().out == first  # the seed reproduces the sample


def test_codecs_round_trip_and_refuse_what_they_cannot_encode(tmp_path):
    ckpt, data, _ = train_tiny_lm(tmp_path, "word")
    words = TextCodec(load_vocab(data, "wt2"), "wt2")
    ids = words.encode("the cat\nsat")
    assert words.vocab.get_symbols(ids) == ["the", "cat", "<eos>", "sat"]
    assert words.decode(ids) == "the cat\nsat"
    ckpt_c, data_c, _ = train_tiny_lm(tmp_path, "char")
    chars = TextCodec(load_vocab(data_c, "enwik8"), "enwik8")
    assert chars.decode(chars.encode("héron sat\n")) == "héron sat\n"
    with pytest.raises(ValueError, match="bytes the corpus never contains"):
        chars.encode("zebra")
    with pytest.raises(SystemExit, match="bytes the corpus never contains"):
        generate_main(["--checkpoint", str(ckpt_c), "--prompt", "Zzz"])
    with pytest.raises(SystemExit, match="vocabulary of"):
        generate_main(["--checkpoint", str(ckpt_c), "--prompt", "the", "--dataset", "wt2", "--data", str(data)])
