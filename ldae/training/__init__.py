"""Training machinery shared by the three stages: devices, EMA, checkpoints, the epoch loop."""
