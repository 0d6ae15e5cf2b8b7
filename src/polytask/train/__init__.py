"""Training: the loop, checkpoints, schedules, logging and results."""
