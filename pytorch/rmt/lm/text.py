"""Plain text to and from a corpus's token ids: prompts in, generated text out.

- enwik8 format (enwik8 and corpora prepared with `--level char`): a token per UTF-8 byte, named
  by its decimal value. Bytes the vocabulary lacks are refused; enwik8 itself has no newline
  token (its preparation turned newlines into line breaks), so prompt newlines are dropped there.
- text8: a token per character, a space written as `_`.
- word corpora (wt103, wt2, ptb, lm1b): whitespace-separated words, a prompt newline as the line
  end the corpus used (`<eos>`; lm1b wraps each line in `<S>`); unknown words become `<unk>`.
"""
from __future__ import annotations

from rmt.lm.vocab import DOUBLE_EOS, EOS, Vocab

BYTE_DATASETS = ("enwik8",)
CHAR_DATASETS = ("text8",)
NEWLINE_BYTE = "10"


class TextCodec:
    def __init__(self, vocab: Vocab, dataset: str):
        self.vocab, self.dataset = vocab, dataset

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; ValueError (one line) for what the vocabulary cannot represent."""
        if self.dataset in BYTE_DATASETS:
            symbols = [str(b) for b in text.encode("utf-8")]
            if NEWLINE_BYTE not in self.vocab:
                symbols = [s for s in symbols if s != NEWLINE_BYTE]
            missing = sorted({s for s in symbols if s not in self.vocab}, key=int)
            if missing:
                raise ValueError(f"the prompt has bytes the corpus never contains ({', '.join(missing[:5])}); "
                                 "remove those characters")
            return [self.vocab.sym2idx[s] for s in symbols]
        if self.dataset in CHAR_DATASETS:
            symbols = [c for c in text.replace(" ", "_") if not c.isspace()]
            missing = sorted({c for c in symbols if c not in self.vocab})
            if missing:
                raise ValueError(f"the prompt has characters the corpus never contains ({''.join(missing[:10])!r}); "
                                 "text8 is lower-case a-z and spaces")
            return [self.vocab.sym2idx[c] for c in symbols]
        lines = text.split("\n")
        symbols: list[str] = []
        for i, line in enumerate(lines):
            ended = i + 1 < len(lines)  # a newline follows this line
            words = self.vocab.tokenize(line)
            if self.dataset == "lm1b":
                symbols += [DOUBLE_EOS, *words] + ([DOUBLE_EOS] if ended else [])
            else:
                symbols += words + ([EOS] if ended else [])
        return [self.vocab.get_idx(s, "the prompt") for s in symbols]

    def decode(self, ids) -> str:
        symbols = self.vocab.get_symbols(ids)
        if self.dataset in BYTE_DATASETS:
            return bytes(int(s) for s in symbols).decode("utf-8", errors="replace")
        if self.dataset in CHAR_DATASETS:
            return "".join(symbols).replace("_", " ")
        text = " ".join(symbols).replace(f" {EOS} ", "\n").replace(f"{EOS} ", "\n").replace(f" {EOS}", "\n")
        return text.replace(f" {DOUBLE_EOS} ", "\n").replace(f"{DOUBLE_EOS} ", "").replace(f" {DOUBLE_EOS}", "\n")
