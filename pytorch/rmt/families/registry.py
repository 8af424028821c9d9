"""The one map from --dataset to a training family: its module (flags and checks) and its class.

    module = family_module("copy")          # rmt.families.tasks: add_args(parser), check_args(args)
    family = build_family(args, runtime)    # an AlgorithmicTask for --dataset copy

A new family is a module of rmt.families (NAME, DEFAULTS, add_args, check_args and a subclass of
rmt.families.base.Family) and one line in FAMILIES below.
"""
from __future__ import annotations

from types import ModuleType

from rmt.families import babilong, fact, hf_lm, lm, memorize, tasks
from rmt.families.base import Family
from rmt.lm.corpus import DATASETS
from rmt.tasks.registry import TASK_NAMES

# --dataset -> (the module owning the family's flags, the family class)
FAMILIES: dict[str, tuple[ModuleType, type[Family]]] = {
    **{name: (lm, lm.LanguageModelling) for name in DATASETS},
    **{name: (tasks, tasks.AlgorithmicTask) for name in TASK_NAMES},
    fact.NAME: (fact, fact.FactRecall),
    memorize.NAME: (memorize, memorize.Memorize),
    hf_lm.NAME: (hf_lm, hf_lm.PretrainedLM),
    babilong.NAME: (babilong, babilong.BabiLong),
}
CORPORA = tuple(DATASETS)
# The families that evaluate a checkpoint themselves (rmt.train --eval_only), with the run's own
# flags; a corpus's checkpoint is evaluated by rmt.evaluate's own streams.
OWN_EVALUATION = tuple(name for name in FAMILIES if name not in CORPORA)
DEFAULT_DATASET = "wt103"


def family_module(dataset: str) -> ModuleType:
    """The module that owns a dataset's flags (add_args, check_args)."""
    return FAMILIES.get(dataset, FAMILIES[DEFAULT_DATASET])[0]


def build_family(args, runtime) -> Family:
    """The family of args.dataset; ValueError (a bad task option) or DataError from its constructor."""
    return FAMILIES[args.dataset][1](args, runtime)
