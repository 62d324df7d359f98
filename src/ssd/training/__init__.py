"""Training, in parts: :mod:`ssd.training.step` is one optimiser step with no host synchronisation.

The loop that drives it, the run folder and the configuration are in :mod:`ssd.engine` (``ssd.train``).
"""
