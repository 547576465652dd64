# Two commands for a new user: `make run` (set up, train on the bundled digits, write the report)
# and `make test` (set up, run the test suite). Both create .venv and install the project when
# it is missing. TORCH_SPEC lets CI pin the CPU build of torch that lies on local disk.
PYTHON ?= python3.11
VENV ?= .venv
TORCH_SPEC ?= torch
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test setup bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev,distributed]"
	@touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(BIN)/ppl-vae run --data digits --out runs/digits --overwrite

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Pinned to one core (NumPyro's process inherits it); NumPyro runs when the `bench` extra is in.
# Wall clock, what users wait for (a process CPU clock counts XLA's own threads too).
bench: $(STAMP)
	-$(BIN)/python -m pip install -q -e ".[bench]"
	taskset -c 1 $(BIN)/python -m benchmarks --clock wall --repeats 3

clean:
	rm -rf $(VENV) runs .pytest_cache
