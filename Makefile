# `make train` and `make test` set everything up on a fresh machine (a .venv here), then run.
# Extra arguments: make train ARGS="model=ghostnet trainer.max_epochs=5"   make test ARGS="-k cifar"
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lnrepro-installed
ARGS ?=

.PHONY: install train eval test test-all bench-data clean-logs

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

train: install
	$(PY) train.py $(ARGS)

eval: install
	$(PY) eval.py $(ARGS)

# the default suite: fast tests only (well under 10 minutes on 2 CPU cores)
test: install
	$(PY) -m pytest -m "not slow" $(ARGS)

# everything, including subprocess multiruns and the real-data learning check
test-all: install
	$(PY) -m pytest $(ARGS)

bench-data: install
	$(PY) benchmarks/bench_data.py $(ARGS)

clean-logs:
	rm -rf logs
