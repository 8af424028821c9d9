"""The README's Python API section ("The model in code") runs as written: every python block,
in order, in one namespace, as a reader would paste them."""
import re

from conftest import ROOT


def api_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## The model in code", 1)[1].split("\n## ", 1)[0]
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
