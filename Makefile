# Two entry points for a fresh machine:
#   make demo   trains WS-RAM+q+c on the bundled digits, evaluates it and draws its glimpses
#   make test   runs the test suite
# Both create .venv and install what they need (PyTorch pinned to 2.13.0; which build pip
# picks depends on the machine: TORCH='torch==2.13.0 --index-url URL' chooses the index).

PYTHON ?= python3
# What pip installs for PyTorch; e.g. TORCH='torch==2.13.0 --index-url <your wheel index>'
TORCH  ?= torch==2.13.0
VENV   := .venv
BIN    := $(VENV)/bin
RUN    ?= runs/demo
STEPS  ?= 3000

.PHONY: demo test lint clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[dev,tensorboard,slurm]'
	touch $@

demo: $(BIN)/.installed
	@if [ -f $(RUN)/last.pt ]; then \
		$(BIN)/wsram train --run-dir $(RUN) --resume --steps $(STEPS); \
	else \
		$(BIN)/wsram train --run-dir $(RUN) --method wsram+q+c --steps $(STEPS); \
	fi
	$(BIN)/wsram evaluate $(RUN)
	$(BIN)/wsram show $(RUN)

# Every test, on two worker processes (pytest-xdist); `pytest -m "not slow"`: the quick
# subset (under a minute), for while you work.
test: $(BIN)/.installed
	$(BIN)/python -m pytest -n 2

lint: $(BIN)/.installed
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
