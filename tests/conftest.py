"""Shared test setup: seed every test; helpers for reading the run scripts. The package is
imported as installed (`pip install -e .[dev]`, which scripts/install.sh runs)."""
import pathlib
import re
import shlex

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]


def script_flags(script: str, name: str) -> list[str]:
    """The flags of a script's NAME=(...) array (TRAIN, EVAL, CPU, ...), as the shell would split them."""
    text = (ROOT / "scripts" / script).read_text()
    return shlex.split(re.search(rf"^{name}=\((.*?)\)$", text, re.S | re.M).group(1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
