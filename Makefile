# Nabz: the two commands are `make demo` and `make test`; everything else here serves them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ARGS ?=
PYTEST_ARGS ?=

# Debian packages the test suite drives as real parts (command -> package).
DEB_TEST := mosquitto:mosquitto mosquitto_pub:mosquitto-clients victoria-metrics:victoria-metrics \
            socat:socat chromium:chromium

.PHONY: demo test venv npm debs lint typecheck clean help

help:
	@echo "make demo [ARGS='--duration 30 --patients 5 --report r.json']  run the whole system locally"
	@echo "make test [PYTEST_ARGS='-k codec']                              install what is needed, run every test"

$(BIN)/.installed: pyproject.toml
	@test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

venv: $(BIN)/.installed

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --silent
	@touch $@

npm: node_modules/.installed

debs:
	@missing=""; for pair in $(DEB_TEST); do cmd=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$cmd >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else \
	    echo "missing Debian packages:$$missing"; \
	    echo "run: sudo apt-get install -y --no-install-recommends$$missing"; exit 1; \
	  fi; \
	fi

demo: venv
	$(BIN)/nabz demo $(ARGS)

test: venv npm debs
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

clean:
	rm -rf $(VENV) node_modules .pytest_cache build *.egg-info
