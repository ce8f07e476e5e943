"""Training: the loop, one optimizer step, the training state and its checkpoints, schedules, the teacher cache."""
