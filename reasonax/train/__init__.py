"""Training: one sharded train step, losses, grain data, Orbax checkpoints, the loop and recipes."""
