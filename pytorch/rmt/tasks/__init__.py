"""Algorithmic tasks of the RMT paper: seeded generators, the task table (registry), .npy storage and scoring."""
