"""Score a CSV or Parquet file in bounded-memory chunks with a training run.

python predict.py input=new.csv output=scored.parquet   # the latest run
python predict.py input=new.parquet output=scored.csv run_dir=outputs/train/<run>
"""

import hydra

from modelsphere.cli import entry_point
from modelsphere.inference.batch_predict import run_batch_prediction


@hydra.main(config_path="conf", config_name="predict", version_base="1.3")
@entry_point
def main(cfg, output_dir):
    run_batch_prediction(cfg, output_dir)


if __name__ == "__main__":
    main()
