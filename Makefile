# Forgeflow: the two commands are `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export FORGEFLOW_HOME ?= $(CURDIR)/.forgeflow

.PHONY: help install venv vllm demo stop status test test-fast lint format lock bench clean

help:
	@echo "make demo   set up, run the whole chain through Airflow, leave the UIs up (addresses printed)"
	@echo "make stop   stop everything the demo started"
	@echo "make test   set up and run the test suite (unit, DAG, integration, end-to-end)"
	@echo "make lint   ruff"

install: venv vllm

venv:
	@scripts/setup.sh

# vLLM's CPU build in its own virtualenv; without it services use the fallback server (and say so).
vllm:
	@scripts/setup_vllm.sh || echo "make: continuing without vLLM (the fallback server will serve)"

demo: install
	$(VENV)/bin/forgeflow demo

stop:
	@if [ -x $(VENV)/bin/forgeflow ]; then $(VENV)/bin/forgeflow down; fi

status: venv
	$(VENV)/bin/forgeflow status

test: install
	$(VENV)/bin/pytest -p no:cacheprovider --durations=20

test-fast: venv
	$(VENV)/bin/pytest -p no:cacheprovider -m "not slow and not e2e and not vllm"

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check dags tasks

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format dags tasks

# Recompile the locks after changing requirements.in / requirements-vllm.in.
lock:
	uv pip compile requirements.in -o requirements.txt --python-version 3.11 --find-links /opt/wheels \
		--constraint <(echo "torch==2.13.0+cpu") --index-strategy unsafe-best-match
	uv pip compile requirements-vllm.in -o requirements-vllm.txt --python-version 3.11 --find-links /opt/wheels \
		--no-emit-package torchvision --no-emit-package torchaudio --no-emit-package torchcodec

bench: venv
	@ls benchmarks/*.py >/dev/null 2>&1 && for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done \
		|| echo "no benchmarks yet"

clean: stop
	rm -rf .forgeflow
