"""The manual's Python sections run as written: every python block of "The model in code"
(pytorch/docs/model.md), in order, in one namespace, as a reader would paste them, and the block
of "RMT over Hugging Face models" (pytorch/docs/hugging-face.md)."""
import re

import pytest

from conftest import ROOT

DOCS = ROOT / "pytorch" / "docs"
# The sections whose python blocks these tests execute: (page, heading). tests/test_docs.py checks
# that no python block of the README or the pages lies outside them.
EXECUTED_SECTIONS = (("model.md", "## The model in code"), ("hugging-face.md", "# RMT over Hugging Face models"))


def section(page: str, heading: str) -> str:
    """The text under `heading` (a whole line of the page) up to the next heading of the same or a
    higher level; lines inside code fences are never headings."""
    level = len(heading.split(" ", 1)[0])
    lines, fenced, inside = [], False, False
    for line in (DOCS / page).read_text().splitlines():
        if not fenced and re.match(r"#+ ", line):
            if inside and len(line.split(" ", 1)[0]) <= level:
                break
            inside = inside or line == heading
        if line.lstrip().startswith("```"):
            fenced = not fenced
        if inside:
            lines.append(line)
    assert lines, f"{page} has no heading {heading!r}"
    return "\n".join(lines[1:]) + "\n"


def api_blocks(page: str = "model.md", heading: str = "## The model in code") -> list[str]:
    return re.findall(r"```python\n(.*?)```", section(page, heading), re.S)


def test_readme_api_snippets_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # a snippet that writes files writes them here
    blocks = api_blocks()
    assert len(blocks) >= 2
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "pytorch/docs/model.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert "torch.Size([2, 999]) 1698" in out and "2 (4, 4, 48, 48)" in out


def test_readme_hugging_face_snippet_runs(tmp_path, monkeypatch, capsys):
    pytest.importorskip("transformers")
    monkeypatch.chdir(tmp_path)  # save_pretrained writes here
    (block,) = api_blocks("hugging-face.md", "# RMT over Hugging Face models")
    exec(compile(block, "pytorch/docs/hugging-face.md", "exec"), {})
    out = capsys.readouterr().out
    assert "(2, 300, 1000) (2, 16, 64)" in out and "(2, 364)" in out and "(2, 4)" in out
    assert (tmp_path / "rmt-llama" / "backbone").is_dir()


def test_the_package_top_exports_the_model_and_the_model_stands_alone():
    """`from rmt import ...` gives the model API; importing the model package loads neither the
    command-line flags (rmt.config) nor transformers (a fresh interpreter tells)."""
    import subprocess
    import sys

    code = ("import sys, rmt, rmt.model.transformer, rmt.model.recurrence, rmt.model.ablation, rmt.model.generation\n"
            "from rmt import MemTransformerLM, ModelConfig, MemoryState, run_segments, score, classify\n"
            "assert MemTransformerLM.from_config(ModelConfig(n_token=10)).config.n_token == 10\n"
            "print(sorted(m for m in ('rmt.config', 'transformers', 'rmt.hf') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    import rmt
    assert {"MemTransformerLM", "ModelConfig", "MemoryState", "run_segments", "score", "classify"} <= set(dir(rmt))
    with pytest.raises(AttributeError):
        rmt.no_such_name
