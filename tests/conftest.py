"""Shared test setup: seed every test; helpers for reading the run scripts. The package is
imported as installed (`pip install -e .[dev]`, which scripts/install.sh runs)."""
import pathlib
import re
import shlex

import pytest
import torch
from rmt.lm.prepare import prepare_text
from rmt.model.transformer import MemTransformerLM, init_weights
from rmt.train import main as train_main

ROOT = pathlib.Path(__file__).resolve().parents[1]


def script_flags(script: str, name: str) -> list[str]:
    """The flags of a script's NAME=(...) array (TRAIN, EVAL, CPU, ...), as the shell would split them."""
    text = (ROOT / "scripts" / script).read_text()
    return shlex.split(re.search(rf"^{name}=\((.*?)\)$", text, re.S | re.M).group(1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ---- small models and segments shared by the attention and recurrence tests ----------------------



SMALL = dict(n_token=20, n_layer=2, n_head=2, d_model=16, d_head=8, d_inner=32, tgt_len=6)


def make(**kw):
    model = MemTransformerLM(**{**SMALL, **kw})
    init_weights(model, init_std=0.1)  # larger than 0.02 so mistakes show up
    return model.eval()


def tokens(b=3, t=6, n=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, n, (b, t), generator=g)


def segments(n, seed=10):
    return [tokens(seed=seed + i) for i in range(n)], [tokens(seed=seed + 100 + i) for i in range(n)]


def grads(model, loss):
    model.zero_grad()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def train_tiny_lm(tmp_path, level):
    """A tiny run on a corpus prepared from plain text (`rmt.lm.prepare text`), 4 steps."""
    words = ["the", "cat", "sat", "on", "a", "mat", "héron"]
    g = torch.Generator().manual_seed(0)
    lines = [" ".join(words[i] for i in torch.randint(0, len(words), (10,), generator=g)) for _ in range(120)]
    (tmp_path / "src.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    data, work = tmp_path / f"data-{level}", tmp_path / "runs"
    assert prepare_text([str(tmp_path / "src.txt")], data, level) is not None
    dataset = "enwik8" if level == "char" else "wt2"
    assert train_main(["--dataset", dataset, "--data", str(data), "--n_layer", "2", "--d_model", "16", "--n_head",
                       "2", "--d_head", "8", "--d_inner", "32", "--tgt_len", "8", "--eval_tgt_len", "8",
                       "--batch_size", "2", "--eval_batch_size", "2", "--max_eval_steps", "2", "--num_mem_tokens",
                       "2", "--mem_len", "4", "--max_step", "4", "--eval_interval", "4", "--device", "cpu",
                       "--work_dir", str(work), "--run_name", level, "--no_results"]) == 0
    return work / level / "checkpoint_best.pt", data, dataset


def tiny_gpt2(model_dir: pathlib.Path, vocab: list[str], split_punctuation: bool = False, n_positions: int = 64):
    """A 2-layer GPT-2 directory (weights, config) with a word-level tokenizer over `vocab` ([UNK]
    first): a Hugging Face causal LM the tests build, no downloads. `split_punctuation` makes
    "kitchen." two tokens. Needs transformers (the hf extra)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    n = word_tokenizer(model_dir, vocab, split_punctuation)
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=n, n_embd=32, n_layer=2, n_head=2, n_positions=n_positions,
                               resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)).save_pretrained(model_dir)
    return model_dir


def tiny_llama(model_dir: pathlib.Path, vocab: list[str], split_punctuation: bool = False, n_positions: int = 64):
    """tiny_gpt2's twin in SmolLM2's architecture (Llama: rotary positions, grouped-query attention,
    tied embeddings), 2 layers of width 32."""
    from transformers import LlamaConfig, LlamaForCausalLM

    n = word_tokenizer(model_dir, vocab, split_punctuation)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=n, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=n_positions,
                                 tie_word_embeddings=True)).save_pretrained(model_dir)
    return model_dir


def word_tokenizer(model_dir: pathlib.Path, vocab: list[str], split_punctuation: bool) -> int:
    """A word-level tokenizer over `vocab` ([UNK] first) saved in model_dir; returns its size."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    ids = {w: i for i, w in enumerate(["[UNK]", *vocab])}
    tok = Tokenizer(models.WordLevel(ids, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace() if split_punctuation else pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(model_dir)
    return len(ids)

