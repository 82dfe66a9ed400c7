"""The project's benchmarks, each run as `python -m benchmarks.<name>` from the
repository root; results (JSON + Markdown) go to benchmarks/results/, and the
README's decisions table and the report are generated from them."""
