"""Raw CSV -> typed, compressed train/val/test splits + schema.json + data profile.

python data_preprocessing.py                        # default data (Telco churn)
python data_preprocessing.py data=csv data.path=my.csv data.target=label
"""

import hydra

from modelsphere.cli import entry_point
from modelsphere.training.run import run_preprocessing


@hydra.main(config_path="conf", config_name="config", version_base="1.3")
@entry_point
def main(cfg, output_dir):
    run_preprocessing(cfg)


if __name__ == "__main__":
    main()
