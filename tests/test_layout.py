"""The package's structure: the library raises and never ends the process, the flags live in one
module, the entry points do not import each other, and every --dataset has one registered family."""
import argparse
import ast

import pytest

from conftest import ROOT
from rmt import config
from rmt.errors import UsageError
from rmt.families import base, registry

PACKAGE = ROOT / "pytorch" / "rmt"
DRIVERS = {"train", "evaluate", "generate"}


def modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        yield path.relative_to(PACKAGE).as_posix(), tree


def is_entry_point(tree) -> bool:
    """A module run by `python -m`: it ends with `if __name__ == "__main__":`."""
    return any(isinstance(node, ast.If) and "__main__" in ast.unparse(node.test) for node in tree.body)


def imported(tree) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            names |= {node.module or ""} | {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_only_entry_points_end_the_process_and_only_config_parses_flags():
    ending, parsing = [], []
    for name, tree in modules():
        if is_entry_point(tree) or name == "errors.py":  # errors.exits_on_error is the entry points' wrapper
            continue
        if any(isinstance(node, ast.Name) and node.id == "SystemExit" for node in ast.walk(tree)):
            ending.append(name)
        if name != "config.py" and "argparse" in imported(tree):
            parsing.append(name)
    assert ending == [] and parsing == []


def test_the_drivers_do_not_import_each_other():
    for name, tree in modules():
        if name.removesuffix(".py") in DRIVERS:
            names = imported(tree)
            others = {f"rmt.{d}" for d in DRIVERS}  # `from rmt import train` reads as rmt.train too
            assert not names & others, (name, names & others)


def test_every_dataset_has_one_registered_family_module():
    parser_datasets = next(a.choices for a in config.training_parser("copy")._actions if a.dest == "dataset")
    assert list(parser_datasets) == list(registry.FAMILIES)
    for dataset, (module, cls) in registry.FAMILIES.items():
        assert issubclass(cls, base.Family), dataset
        assert callable(module.add_args) and callable(module.check_args), dataset
        assert registry.family_module(dataset) is module
    assert set(registry.OWN_EVALUATION) == set(registry.FAMILIES) - set(registry.CORPORA)
    # a family that builds its own model over a pretrained backbone says so by its class
    own = {d for d, (_, cls) in registry.FAMILIES.items() if issubclass(cls, base.BackboneFamily)}
    assert own == {"memorize", "hf_lm", "babilong"}


def test_a_family_refuses_flags_with_a_usage_error_and_the_parser_shows_it(capsys):
    args = config.training_parser("hf_lm").parse_args([])  # no --backbone
    with pytest.raises(UsageError, match="--backbone is required"):
        registry.family_module("hf_lm").check_args(args)
    with pytest.raises(SystemExit) as e:  # what rmt.train makes of it: argparse's usage error
        config.parse_training_args(["--dataset", "hf_lm"])
    assert e.value.code == 2 and "--backbone is required" in capsys.readouterr().err


def test_the_flags_parse_without_the_entry_points():
    args, parser = config.parse_training_args(["--dataset", "copy", "--tgt_len", "6"])
    assert isinstance(parser, argparse.ArgumentParser) and args.dataset == "copy" and args.tgt_len == 6
