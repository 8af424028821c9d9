"""What every training run shares: the Trainer (its step and validation), optimisers and
schedules, checkpoints, and the runtime (device, DDP, AMP, seeds, logging)."""
