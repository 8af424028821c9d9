"""Recurrent Memory Transformer (Bulatov et al., NeurIPS 2022) on a Transformer-XL core."""
import pathlib

# The checkout the package is installed from (editable): data/, runs/ and experiments/ live here.
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
