"""Training (train.py): the run, the Trainer, its recipe, network sampling and checkpoints."""
