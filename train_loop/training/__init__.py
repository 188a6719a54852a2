"""One optimizer step and what keeps a run alive: setup, the loop, schedule, optimizer, precision,
DeepSpeed, LoRA, EMA, checkpoints, resume, signals, the run folder, the final model."""
