"""Train a tabular model; writes a timestamped run dir under outputs/train/.

python train.py device=cpu model.hidden_sizes=[256,256] train.lr=1e-3 seed=0
python train.py -m model.dropout=0.0,0.2        # multirun sweep
"""

import hydra

from modelsphere.cli import entry_point
from modelsphere.training.run import run_training


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
@entry_point
def main(cfg, output_dir):
    # The optimised validation metric, for Hydra sweepers.
    return run_training(cfg, output_dir)


if __name__ == "__main__":
    main()
