"""The shared training loop (every method), checkpoints and logging."""
