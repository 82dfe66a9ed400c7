"""Raw data to typed splits: where raw CSVs come from, reading them as text, typing and
cleaning values, the inferred schema, the train/val/test split files, and the user
tables predict and evaluate read and write.

Layer: see CONTRIBUTING.md; modules here import only from this layer and the
layers below it."""
