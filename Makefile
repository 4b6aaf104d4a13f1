# lungwatch — the commands a user needs. Each target installs what it needs first: the Debian
# packages it uses (requirements/debian-packages.txt, via apt-get as root or sudo) and a virtual
# environment built exactly from a lock file (requirements/*.lock), so a fresh clone on a fresh
# Debian machine only needs Python 3.11 and make.
#
#   make demo     the main job on the embedded default (edge dependencies only, no torch)
#   make test     the test suite (uses ../shared/data when present), whole test files on
#                 TEST_WORKERS processes (2; TEST_WORKERS=0 runs them in this one)
#   make lint     ruff + mypy + the layout's import contracts (lint-imports)
#   make bench    benchmarks, results in bench/results/
#   make fuzz     fuzz the firmware-bridge decoder (1 M inputs), the ward view's and the
#                 hospital gateway's intake
#   make deploy   DEVICE=jetson | DEVICES=ward_3 [DRY_RUN=1]: Ansible rollout (docs/deploy.md)
#   make train-sed the shipped detector's whole recipe into out/models/sed (teacher and student
#                 fold models, full model, export, INT8, rules fitted out of fold, Task rules,
#                 verify reference)
#   make lock     refresh the lock files from pyproject.toml (UPGRADE=1: newest allowed versions)
#   make sysdeps  only install the Debian packages (GROUP=edge|dev)

PYTHON ?= python3
VENV ?= .venv
EDGE_VENV ?= .venv-edge
TEST_WORKERS ?= 2
EDGE_LOCK = requirements/edge.lock
DEV_LOCK = requirements/dev.lock
SYSDEPS = requirements/install-debian-packages.sh

# One core for benchmarks: pin thread pools and the CPU.
ONE_CORE = OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 MKL_NUM_THREADS=1 NUMBA_NUM_THREADS=1 \
           $(shell command -v taskset >/dev/null 2>&1 && echo taskset -c 0)

.PHONY: demo test lint bench fuzz format clean help train-sed deploy lock sysdeps sysdeps-dev sysdeps-edge

help:
	@sed -n '6,18p' Makefile

# The Debian packages are checked on every run (a dpkg query; apt-get only for missing ones).
GROUP ?= dev
sysdeps:
	@sh $(SYSDEPS) $(GROUP)
sysdeps-dev sysdeps-edge:
	@sh $(SYSDEPS) $(@:sysdeps-%=%)

$(VENV)/.installed-dev: $(DEV_LOCK) pyproject.toml | sysdeps-dev
	PYTHON=$(PYTHON) sh requirements/make-venv.sh $(VENV) $(DEV_LOCK)
	touch $@

$(EDGE_VENV)/.installed-edge: $(EDGE_LOCK) pyproject.toml | sysdeps-edge
	PYTHON=$(PYTHON) sh requirements/make-venv.sh $(EDGE_VENV) $(EDGE_LOCK)
	touch $@

# Lock files: uv resolves pyproject.toml's extras for CPython $(LOCK_PYTHON); existing pins are
# kept unless UPGRADE=1. torch is the local CPU build (torch==2.13.0+cpu in $(LOCK_FIND_LINKS)).
LOCK_PYTHON ?= 3.11
LOCK_FIND_LINKS ?= /opt/wheels
LOCK_FLAGS = --quiet --python-version $(LOCK_PYTHON) \
	$(if $(wildcard $(LOCK_FIND_LINKS)),--find-links $(LOCK_FIND_LINKS)) \
	$(if $(filter 1 yes true,$(UPGRADE)),--upgrade)
lock: $(VENV)/.installed-dev
	$(VENV)/bin/uv pip compile pyproject.toml requirements/build.in $(LOCK_FLAGS) \
	  --extra edge --extra demo -o $(EDGE_LOCK)
	$(VENV)/bin/uv pip compile pyproject.toml requirements/build.in $(LOCK_FLAGS) \
	  --extra dev --extra train --extra export --extra edge --extra serial --extra demo \
	  --extra gateway --extra postgres -o $(DEV_LOCK)

demo: $(EDGE_VENV)/.installed-edge
	$(EDGE_VENV)/bin/lungwatch-edge demo $(ARGS)

test: $(VENV)/.installed-dev
	$(VENV)/bin/python -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy lungwatch edge wardview demo training export firmware_bridge deploy bench gateway
	$(VENV)/bin/lint-imports

format: $(VENV)/.installed-dev
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(VENV)/.installed-dev
	$(ONE_CORE) $(VENV)/bin/python -m bench.frontend $(ARGS)
	$(ONE_CORE) $(VENV)/bin/python -m bench.export
	$(ONE_CORE) $(VENV)/bin/python -m bench.bridge
	$(ONE_CORE) $(VENV)/bin/python -m bench.fuzz
	$(ONE_CORE) $(VENV)/bin/python -m bench.runtime $(RUNTIME_ARGS)
	$(ONE_CORE) $(VENV)/bin/python -m bench.detection
	$(VENV)/bin/python -m bench.ward  # the ward view: browser, broker and view share the cores

fuzz: $(VENV)/.installed-dev
	$(ONE_CORE) $(VENV)/bin/python -m bench.fuzz $(ARGS)
	$(ONE_CORE) $(VENV)/bin/python -m bench.fuzz_view
	$(ONE_CORE) $(VENV)/bin/python -m bench.fuzz_gateway

# The shipped detector's whole recipe (docs/models/sed.md, "Data and training"): the teacher's
# fold models (TEACHER: the recipe that also trains on ICBHI's annotated cycles; SEEDS x 5
# patient-grouped folds), the student's fold models (CV_DESIGN: fold k taught by the teacher's
# fold-k models; out of fold, they fit the rules) and its full model (every training patient,
# taught by every teacher fold model, seed SEED), export, INT8, the detector rules and the
# quality gate fitted on the student's out-of-fold outputs, the finding episodes' rules (fitted
# on half of intra_test's patients and out of fold), the Task rules, the verify gate's
# reference. CV_DEVICE=cuda CV_JOBS=15 trains the fold models on a GPU, several at a time;
# fold models already trained are kept. Copy $(SED_OUT) to models/sed to ship it.
SEED ?= 0
SEEDS ?= 0,1,2
TEACHER ?= neutral-icbhi
CV_DESIGN ?= kd-icbhi
CV_DEVICE ?= cpu
CV_JOBS ?= 1
SED_OUT ?= out/models/sed
SED_DATA ?= $(or $(LUNGWATCH_DATA_DIR),../shared/data)
SED_FULL = out/cv/$(CV_DESIGN)/seed$(SEED)/full
CV_TRAIN = $(VENV)/bin/lungwatch cv train --config training/configs/sed.yaml --device $(CV_DEVICE)
ICBHI_MATERIAL = --set data.icbhi_fraction=0.5
STUDENT = $(ICBHI_MATERIAL) --set distill.teacher=out/cv/$(TEACHER) --set distill.weight=0.5
train-sed: $(VENV)/.installed-dev
	$(CV_TRAIN) --design $(TEACHER) --seeds $(SEEDS) --jobs $(CV_JOBS) $(ICBHI_MATERIAL) $(ARGS)
	$(CV_TRAIN) --design $(CV_DESIGN) --seeds $(SEEDS) --jobs $(CV_JOBS) $(STUDENT) $(ARGS)
	$(CV_TRAIN) --design $(CV_DESIGN) --seeds $(SEED) --folds -1 $(STUDENT) $(ARGS)
	$(VENV)/bin/lungwatch cv predict --design $(CV_DESIGN)
	$(VENV)/bin/lungwatch export --checkpoint $(SED_FULL)/model.pt --out $(SED_OUT)
	$(VENV)/bin/lungwatch quantize --model $(SED_OUT)/model.onnx \
	  --out $(SED_OUT)/model.int8.onnx --calib-dir $(SED_DATA)/sprsound/train \
	  --max-files 600 --max-chunks 2048 --keep-first
	$(VENV)/bin/lungwatch cv rules --design $(CV_DESIGN) --model $(SED_OUT) --boxes
	$(VENV)/bin/lungwatch cv findings --oof out/cv/$(CV_DESIGN) --model $(SED_OUT) --write
	$(VENV)/bin/lungwatch tasks --model $(SED_OUT)/model.int8.onnx
	$(VENV)/bin/lungwatch verify --model-dir $(SED_OUT) --write-reference

clean:
	rm -rf $(VENV) $(EDGE_VENV) out build *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# make deploy DEVICE=jetson | DEVICES=ward_3 [DRY_RUN=1] [BATCH=5] [VAULT=secrets.yml
#   VAULT_PASSWORD_FILE=file] [INVENTORY=deploy/inventory/ward.yml]: the Ansible playbook
#   deploy/ansible/deploy.yml (docs/deploy.md).
INVENTORY ?= deploy/inventory/ward.yml
deploy: $(VENV)/.installed-dev
	$(if $(or $(DEVICE),$(DEVICES)),,$(error make deploy needs DEVICE=<host> or DEVICES=<group> of $(INVENTORY)))
	ANSIBLE_CONFIG=deploy/ansible/ansible.cfg $(VENV)/bin/ansible-playbook -i $(INVENTORY) \
	  deploy/ansible/deploy.yml --limit '$(or $(DEVICES),$(DEVICE))' \
	  $(if $(filter 1 yes true,$(DRY_RUN)),--check --diff) $(if $(BATCH),-e lungwatch_batch=$(BATCH)) \
	  $(if $(VAULT),-e @$(VAULT)) $(if $(VAULT_PASSWORD_FILE),--vault-password-file $(VAULT_PASSWORD_FILE)) \
	  $(ARGS)
