"""modelsphere: a tabular ML pipeline in PyTorch, composed by Hydra.

The four entry points (`data_preprocessing.py`, `train.py`, `evaluate.py`,
`predict.py`) are thin; the logic lives in this package, one module per concept.
"""

__version__ = "0.1.0"
