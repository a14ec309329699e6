# Two commands for a fresh clone: `make demo` (the main job on embedded demo data) and `make test`.
# Each sets up .venv on first use; later runs reuse it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The torch build to install; override e.g. TORCH="torch torchvision" on another machine.
TORCH ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.gmmoe-installed

.PHONY: install demo demo-allinone test lint

install: $(STAMP)

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip "setuptools>=70.1" wheel
	$(PY) -c "import torch, torchvision" 2>/dev/null || $(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q --no-build-isolation "basicsr>=1.4.2"
	$(PY) -m pip install -q --no-build-isolation -e ".[test]"
	touch $(STAMP)
	@echo "installed into $(VENV)"

demo: $(STAMP)
	$(PY) scripts/demo.py --out demo_output

# one network for low light, rain and haze, its gate taught to route by degradation (<= 15 min on 2 cores)
demo-allinone: $(STAMP)
	$(PY) scripts/allinone.py --out allinone_output

test: $(STAMP)
	@mkdir -p build
	$(PY) -m pytest -q -p no:cacheprovider --junitxml=build/test-report.xml tests
	@echo "test report: build/test-report.xml"

# ruff.toml: lint rules and the formatter's style; CI runs this before the tests
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
