"""Typed rows to model inputs: the feature state fitted on the train split (plain data)
and the one transform that train, evaluate, predict and the API share.

Layer: see CONTRIBUTING.md; modules here import only from this layer and the
layers below it."""
