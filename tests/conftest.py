"""Shared test setup: make the `rmt` package in pytorch/ importable and seed every test."""
import pathlib
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "pytorch"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
