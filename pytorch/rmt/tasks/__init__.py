"""Algorithmic tasks of the RMT paper: seeded generators, the task table (registry) and .npy files (files)."""
