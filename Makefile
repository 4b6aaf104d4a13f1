# lungwatch — the commands a user needs. Each target creates or reuses its virtual
# environment and installs what it needs, so a fresh clone only needs Python >= 3.10.
#
#   make demo     the main job on the embedded default (edge dependencies only, no torch)
#   make test     the test suite (uses ../shared/data when present)
#   make lint     ruff + mypy
#   make bench    benchmarks, results in bench/results/
#   make fuzz     fuzz the firmware-bridge decoder (1 M inputs by default)
#   make deploy   DEVICE=jetson [DRY_RUN=1]: bundle, install, check, roll back (docs/deploy.md)
#   make train    retrain the shipped edge model (SEEDS="0 1 2" for the model card's runs)

PYTHON ?= python3
VENV ?= .venv
EDGE_VENV ?= .venv-edge
PIP_FLAGS ?= --disable-pip-version-check -q

# One core for benchmarks: pin thread pools and the CPU.
ONE_CORE = OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 NUMBA_NUM_THREADS=1 \
           $(shell command -v taskset >/dev/null 2>&1 && echo taskset -c 0)

.PHONY: demo test lint bench fuzz format clean help train deploy

help:
	@sed -n '2,12p' Makefile

$(VENV)/.installed-dev: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install $(PIP_FLAGS) -e '.[dev,train,export,edge,serial,demo]'
	touch $@

$(EDGE_VENV)/.installed-edge: pyproject.toml
	test -x $(EDGE_VENV)/bin/python || $(PYTHON) -m venv $(EDGE_VENV)
	$(EDGE_VENV)/bin/pip install $(PIP_FLAGS) -e '.[edge,demo]'
	touch $@

demo: $(EDGE_VENV)/.installed-edge
	$(EDGE_VENV)/bin/lungwatch demo $(ARGS)

test: $(VENV)/.installed-dev
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy edge training export firmware_bridge deploy

format: $(VENV)/.installed-dev
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(VENV)/.installed-dev
	$(ONE_CORE) $(VENV)/bin/python -m bench.frontend $(ARGS)
	$(ONE_CORE) $(VENV)/bin/python -m bench.export
	$(ONE_CORE) $(VENV)/bin/python -m bench.bridge
	$(ONE_CORE) $(VENV)/bin/python -m bench.fuzz
	$(ONE_CORE) $(VENV)/bin/python -m bench.runtime $(RUNTIME_ARGS)

fuzz: $(VENV)/.installed-dev
	$(ONE_CORE) $(VENV)/bin/python -m bench.fuzz $(ARGS)

SEEDS ?= 0
train: $(VENV)/.installed-dev
	for seed in $(SEEDS); do \
	  $(VENV)/bin/lungwatch train --config training/configs/edge.yaml --set seed=$$seed \
	    --set name=edge-seed$$seed $(ARGS) || exit 1; \
	done
	mkdir -p models/edge
	cp out/runs/edge-seed$(firstword $(SEEDS))/best.pt models/edge/model.pt
	cp training/configs/edge.yaml models/edge/config.yaml

clean:
	rm -rf $(VENV) $(EDGE_VENV) out build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

deploy: $(VENV)/.installed-dev
	$(VENV)/bin/python -m deploy.cli $(if $(DEVICE),--device $(DEVICE)) $(if $(filter 1 yes true,$(DRY_RUN)),--dry-run) $(ARGS)
