"""ddpm's library: config, noise schedule, samplers, data, checkpoints and the training loop.

The scripts (train.py, inference.py), the notebooks and the tests all import from here.
"""
