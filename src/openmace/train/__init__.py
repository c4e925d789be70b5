"""Training: configuration, loss, EMA, checkpoints, metrics, plots and the loop."""
