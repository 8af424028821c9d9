"""The README's Python API section ("The model in code") runs as written: every python block,
in order, in one namespace, as a reader would paste them."""
import re

import pytest

from conftest import ROOT


def api_blocks(heading: str = "## The model in code") -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_readme_api_snippets_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # a snippet that writes files writes them here
    blocks = api_blocks()
    assert len(blocks) >= 2
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert "torch.Size([2, 999]) 1698" in out and "2 (4, 4, 48, 48)" in out


def test_readme_hugging_face_snippet_runs(tmp_path, monkeypatch, capsys):
    pytest.importorskip("transformers")
    monkeypatch.chdir(tmp_path)  # save_pretrained writes here
    (block,) = api_blocks("## RMT over Hugging Face models")
    exec(compile(block, "README.md", "exec"), {})
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
