"""Training: the loop, schedule, checkpoints, distributed wrapping and metrics."""
