# The two quick-start commands: `make demo` (main job) and `make test` (everything CI runs:
# the suite, the API reference, the captum floor and the wheel; .ci/run calls it).
# Every target installs what it needs; torch is pinned for the CPU build used in CI
# (an unpinned torch can pull a CUDA build of several GB).
PYTHON ?= python3
PIP = $(PYTHON) -m pip install --quiet --disable-pip-version-check
PYTHON_EXE = $(shell $(PYTHON) -c "import sys; print(sys.executable)")
TORCH_PIN = torch==2.13.0
# The lowest captum that pyproject.toml claims (captum>=0.8); test-floor runs the fast tests on it.
CAPTUM_FLOOR = captum==0.8.0
VENVS = build/venvs
FAST_TESTS = captum_smoothhess tests -m "not slow" --ignore=tests/test_tutorials.py --ignore=tests/test_benchmarks.py

# The targets install into one environment: never run them side by side (make -j).
.NOTPARALLEL:

.PHONY: install-demo install-dev install-docs demo test suite lint docs test-floor wheel-check

install-demo:
	$(PIP) $(TORCH_PIN) -e ".[demo]"

install-dev:
	$(PIP) $(TORCH_PIN) -e ".[dev]"

install-docs:
	$(PIP) $(TORCH_PIN) -e ".[docs]"

demo: install-demo
	$(PYTHON) -m captum_smoothhess demo $(ARGS)

lint:
	$(PYTHON) -m ruff check --output-format concise captum_smoothhess tests benchmarks docs/conf.py
	$(PYTHON) -m ruff format --check captum_smoothhess tests benchmarks docs/conf.py
	$(PYTHON) -m mypy

# ruff, mypy and the whole test suite (tutorials and benchmark smoke runs included).
suite: install-dev lint
	$(PYTHON) -m pytest captum_smoothhess tests

# The API reference, offline, into docs/_build/html; any Sphinx warning fails the build.
# The tutorials are rendered with their stored outputs, not executed.
docs: install-docs
	$(PYTHON) -m sphinx -W --keep-going -q -b html docs docs/_build/html

# The fast tests (no tutorials, no benchmark smoke runs) in a clean venv holding the
# claimed floor: captum 0.8.0 and the numpy it allows (< 2).
test-floor:
	rm -rf $(VENVS)/floor
	$(PYTHON) -m venv $(VENVS)/floor
	$(VENVS)/floor/bin/python -m pip install --quiet --disable-pip-version-check \
		$(TORCH_PIN) $(CAPTUM_FLOOR) "pytest>=7" "scikit-learn>=1.2" -e .
	$(VENVS)/floor/bin/python -c "import captum, numpy, torch; \
		print('floor: captum', captum.__version__, 'numpy', numpy.__version__, 'torch', torch.__version__)"
	$(VENVS)/floor/bin/python -m pytest -q -p no:cacheprovider $(FAST_TESTS)

# Build the wheel, install it with the demo extra into a clean venv, check that it
# ships py.typed (mypy --strict sees its hints) and that its console script runs the demo.
wheel-check: install-dev
	rm -rf dist build/lib build/bdist.* $(VENVS)/wheel
	$(PYTHON) -m pip wheel . --no-deps --quiet --disable-pip-version-check -w dist/
	$(PYTHON) -m venv $(VENVS)/wheel
	$(VENVS)/wheel/bin/python -m pip install --quiet --disable-pip-version-check \
		$(TORCH_PIN) "$$(ls dist/captum_smoothhess-*.whl)[demo]"
	cd $(VENVS)/wheel && bin/python -c "import pathlib, captum_smoothhess as c; \
		p = pathlib.Path(c.__file__).parent; assert 'site-packages' in str(p), p; \
		assert (p / 'py.typed').is_file(), 'py.typed missing'; print('installed:', p)"
	cd $(VENVS)/wheel && printf 'import captum_smoothhess\nv: str = captum_smoothhess.__version__\n' > typed.py \
		&& $(PYTHON_EXE) -m mypy --strict --no-incremental --python-executable bin/python typed.py
	cd $(VENVS)/wheel && bin/captum-smoothhess demo --quick --out demo_output && test -s demo_output/report.md

test: suite docs test-floor wheel-check
