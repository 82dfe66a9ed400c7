"""A training run: the epoch loop, optimisation, metrics, checkpoints and resume,
interrupts, and DistributedDataParallel.

Layer: see CONTRIBUTING.md; modules here import only from this layer and the
layers below it."""
