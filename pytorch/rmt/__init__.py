"""Recurrent Memory Transformer (Bulatov et al., NeurIPS 2022) on a Transformer-XL core."""
