"""The real-time inference service (FastAPI + uvicorn) for a training run.

python serve.py                                   # latest run, 127.0.0.1:8000
python serve.py serve.port=9000 serve.workers=2 run_dir=outputs/train/<run>
"""

import hydra

from modelsphere.cli import entry_point
from modelsphere.serving.config import require_serving_extras, validate_serve_app


@hydra.main(config_path="conf", config_name="serve", version_base="1.3")
@entry_point
def main(cfg, output_dir):
    validate_serve_app(cfg)  # (importing serving.config registers serve_schema)
    require_serving_extras(cfg)
    from modelsphere.serving.runner import run_service  # the 'serve' extra's

    run_service(cfg)


if __name__ == "__main__":
    main()
