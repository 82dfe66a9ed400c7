"""Scoring with a trained model: the predictor (one code path for batch and real-time),
its torch/ONNX engines, batch prediction and evaluation.

Layer: see CONTRIBUTING.md; modules here import only from this layer and the
layers below it."""
