"""Write a training run's model as one ONNX graph from raw columns to scores,
checked against the predictor on the run's test split, for ONNX Runtime (or any
runtime that reads ONNX) with no Python of this project.

python export.py                                     # the latest run
python export.py run_dir=outputs/train/<run> output=model.onnx
"""

import hydra

from modelsphere.cli import entry_point
from modelsphere.inference.raw_export import run_export


@hydra.main(config_path="conf", config_name="export", version_base="1.3")
@entry_point
def main(cfg, output_dir):
    run_export(cfg, output_dir)


if __name__ == "__main__":
    main()
