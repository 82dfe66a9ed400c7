"""One module per model architecture. Each defines `ARCHITECTURES`, a dict from
the name `model.architecture` selects to its `Architecture` (models/spec.py); the
registry finds every module here, so a new architecture is one module here, one
YAML in conf/model/ and one test."""
