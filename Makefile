# The two commands a newcomer needs (see README.md): `make demo` and `make test`.
# Each creates .venv and installs everything first, so a fresh machine needs only
# Python 3.11 and make.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint install tools

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

install: $(BIN)/.installed

# Debian's prometheus and prometheus-alertmanager: promtool/amtool checks of deploy/ and
# the end-to-end alerting test run the real servers
tools:
	bash .ci/debian-tools.sh

demo: $(BIN)/.installed
	$(BIN)/rampmon demo

lint: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint tools
	$(BIN)/pytest
