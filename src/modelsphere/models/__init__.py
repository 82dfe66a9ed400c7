"""The networks: the plain-data spec, layers, numeric embeddings, each architecture,
the registry that builds them, and the saved artifact that rebuilds a model without
running code.

Layer: see CONTRIBUTING.md; modules here import only from this layer and the
layers below it."""
