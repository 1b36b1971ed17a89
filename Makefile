# The verbs a newcomer needs. Each target creates the environment it needs first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_EPISODES ?= 5000
DEMO_SEED     ?= 42
export DAGSTER_HOME := $(CURDIR)/.dagster_home
export VIRTUAL_ENV  := $(CURDIR)/$(VENV)
export PATH         := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup demo test dev lab bench clean lock

$(STAMP): pyproject.toml requirements.lock
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps -e .
	@# Byte-compile once: with PYTHONDONTWRITEBYTECODE set (as on some CI images) every start would
	@# otherwise recompile dagster, scipy and matplotlib, about 10 s per process. Failures only mean slower starts.
	-@$(BIN)/python -m compileall -q -j 0 $(VENV)/lib pipelines >/dev/null 2>&1
	@touch $(STAMP)

setup: $(STAMP) $(DAGSTER_HOME)/dagster.yaml  ## create .venv with the locked dependencies

$(DAGSTER_HOME)/dagster.yaml: deploy/dagster.yaml
	@mkdir -p $(DAGSTER_HOME)
	cp deploy/dagster.yaml $@

demo: setup  ## generate demo exports (if data/raw holds none), run the pipeline, print where the report is
	@if ! find data/raw -type f \( -iname 'episodes*' -o -iname 'sessions*' -o -iname 'pain_scores*' \) | grep -q .; then \
		echo "data/raw holds no exports: generating $(DEMO_EPISODES) demo episodes"; \
		$(BIN)/outcomes synth --episodes $(DEMO_EPISODES) --seed $(DEMO_SEED) --out data/raw; \
	fi
	$(BIN)/outcomes run --raw-dir data/raw --processed-dir data/processed --reports-dir reports

test: setup  ## run the whole test suite
	$(BIN)/python -m pytest -q -n 2

dev: setup  ## Dagster UI + daemon (schedules and sensors run) on http://127.0.0.1:3000
	$(BIN)/dagster dev -h 127.0.0.1 -p 3000 -m pipelines.definitions

lab: setup  ## Jupyter Lab on the project environment
	$(BIN)/jupyter lab --ip 127.0.0.1 notebooks/

bench: setup  ## benchmark the pipeline (see benchmarks/README.md)
	$(BIN)/python benchmarks/run.py

lock:  ## re-resolve requirements.lock from pyproject.toml (needs uv)
	$(BIN)/python -m pip install --quiet uv
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements.lock

clean:  ## remove generated data, reports and the environment
	rm -rf $(VENV) data/processed/* reports/weekly .dagster_home
