"""Run tracking: where a training run's config, per-epoch metrics, final metrics
and files are logged besides its run dir (the `logger` config group)."""
