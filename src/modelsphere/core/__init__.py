"""The small core every layer may use: configuration schema and checks, the project's
error type, atomic file I/O, device choice, provenance and run directories.

Layer: see CONTRIBUTING.md; modules here import only from this layer and the
layers below it."""
