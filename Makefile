# `make train` and `make test` set everything up on a fresh machine (a .venv here), then run.
# Extra arguments: make train ARGS="model=ghostnet trainer.max_epochs=5"   make test ARGS="-k cifar"
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lnrepro-installed
ARGS ?=

.PHONY: install train eval lint format test test-cluster test-all bench-data reproduce-seeds fit-predictor clean-logs

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

train: install
	$(PY) train.py $(ARGS)

eval: install
	$(PY) eval.py $(ARGS)

# ruff's lint rules and formatting (pyproject.toml); `make format` applies both
lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# the lint, then the default suite: fast tests only (8 minutes at most on 2 CPU cores); no slow or cluster tests
test: lint
	$(PY) -m pytest -m "not slow and not cluster" $(ARGS)

# scale-out on real engines (tests/test_cluster.py): SLURM sweeps, DDP, a failing job and a requeue on the local
# one-node SLURM cluster (`bash scripts/slurm-local.sh up`; the tests bring it up themselves when it is not), DDP
# inside a local multirun. The SLURM tests skip only where the cluster cannot start (not root, SLURM missing).
test-cluster: install
	$(PY) -m pytest -m cluster tests/test_cluster.py $(ARGS)

# everything, including subprocess multiruns, the real-data learning check and the cluster tests
test-all: install
	$(PY) -m pytest $(ARGS)

bench-data: install
	$(PY) benchmarks/bench_data.py $(ARGS)

# slow (~35-45 min on 2 cores): ShuffleNet V2 0.5x on CIFAR-10, three seeds, then one report row with mean, 95%
# interval and verdict against the published 90.13% (docs/RESULTS.md). Data elsewhere: ARGS="data.root=<folder>"
SEEDS_DIR := logs/train/multiruns/seeds_$(shell date +%Y-%m-%d_%H-%M-%S)
reproduce-seeds: install
	$(PY) train.py -m experiment=cifar10_seeds hydra.sweep.dir=$(SEEDS_DIR) $(ARGS)
	$(PY) report.py $(SEEDS_DIR) --reference cifar10

# slow (22 min on 2 cores, resumable): the latency predictor of ONNX Runtime and ExecuTorch at 1 thread on this
# machine, validated by leaving each family out (validation.json/.csv/.png in the run folder; docs/RESULTS.md)
fit-predictor: install
	$(PY) profile_net.py experiment=latency_predictor $(ARGS)

clean-logs:
	rm -rf logs
