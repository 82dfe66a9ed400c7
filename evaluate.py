"""Evaluate a training run on its test split (or another labelled file).

python evaluate.py                                   # the latest run
python evaluate.py run_dir=outputs/train/<run> split=val
"""

import hydra

from modelsphere.cli import entry_point
from modelsphere.inference.evaluation import run_evaluation


@hydra.main(config_path="conf", config_name="evaluate", version_base="1.3")
@entry_point
def main(cfg, output_dir):
    run_evaluation(cfg, output_dir)


if __name__ == "__main__":
    main()
