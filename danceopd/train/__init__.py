"""Training: typed configs, atomic checkpoints, the Accelerate SFT trainer and the distillation engine."""
