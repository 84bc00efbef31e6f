# The two quick-start commands: `make demo` (main job) and `make test` (whole suite).
# Both install everything they need; torch is pinned for the CPU build used in CI.
PYTHON ?= python3
PIP = $(PYTHON) -m pip install --quiet --disable-pip-version-check
TORCH_PIN = torch==2.13.0

.PHONY: install-demo install-dev demo test lint

install-demo:
	$(PIP) $(TORCH_PIN) -e ".[demo]"

install-dev:
	$(PIP) $(TORCH_PIN) -e ".[dev]"

demo: install-demo
	$(PYTHON) -m captum_smoothhess demo $(ARGS)

lint:
	$(PYTHON) -m ruff check --output-format concise captum_smoothhess tests benchmarks
	$(PYTHON) -m ruff format --check captum_smoothhess tests benchmarks
	$(PYTHON) -m mypy

test: install-dev lint
	$(PYTHON) -m pytest captum_smoothhess tests
