# Set-up and everyday commands. Everything runs from the project's own .venv.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# CPU build of torch (the version constraints.txt pins): install it first, or diffusers
# pulls a multi-GB CUDA build.
TORCH_SPEC ?= $(shell grep '^torch==' constraints.txt)
STAMP := $(VENV)/.installed
# Python writes its bytecode caches: a machine that sets PYTHONDONTWRITEBYTECODE would
# otherwise compile torch, diffusers and the rest from source in every process the tests,
# the stack and the demo start (half a minute each; docs/performance.md "CI").
unexport PYTHONDONTWRITEBYTECODE

.PHONY: venv up down demo test test-fast lint typecheck check clean wheelhouse

venv: $(STAMP)

# Installed with uv (brought by pip into the venv): the same pins, in seconds rather than
# the minutes pip takes to resolve and unpack them (docs/performance.md "CI"). It reads
# pip's find-links, where a machine keeps its CPU build of torch.
FIND_LINKS ?= $(or $(PIP_FIND_LINKS),$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))
UV := $(BIN)/uv pip install -q --python $(BIN)/python $(foreach d,$(FIND_LINKS),--find-links $(d))

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt uv
	$(UV) "$(TORCH_SPEC)"
	$(UV) -c constraints.txt -e '.[worker,stack,dev]'
	touch $(STAMP)

# MODEL_ID=segmind/SSD-1B (or any hub id or folder): the real model instead of the tiny one.
up: venv
	$(BIN)/ssd-img2img stack up $(if $(MODEL_ID),--model-id "$(MODEL_ID)")

down:
	@if test -x $(BIN)/ssd-img2img; then $(BIN)/ssd-img2img stack down; fi

demo: venv
	$(BIN)/ssd-img2img demo --out out $(if $(MODEL_ID),--model-id "$(MODEL_ID)")

# Two pytest processes (pytest-xdist): the suite waits on its processes as much as it
# computes (docs/performance.md "CI"). tests/conftest.py groups the tests so that each
# stack starts in one of them only.
PYTEST_WORKERS ?= 2
PYTEST := $(BIN)/pytest -q -n $(PYTEST_WORKERS) --dist loadgroup

test: venv
	$(PYTEST) $(PYTEST_ARGS)

# The unit and database tiers: no process of the service is started (docs/development.md).
# Two pytest processes side by side, split by what they import: the model's tests
# (tests/worker/, torch and diffusers) and the rest, which then never imports them
# (tests/test_layout.py); under pytest-xdist each process would import everything. The
# model tests' report follows the other's.
FAST := $(BIN)/pytest -q -p no:xdist -m "not e2e"
test-fast: venv
	@report=$$(mktemp); \
	$(FAST) tests/worker $(PYTEST_ARGS) >$$report 2>&1 & model=$$!; \
	$(FAST) --ignore=tests/worker $(PYTEST_ARGS); rest=$$?; \
	wait $$model; models=$$?; \
	echo "--- tests/worker:"; cat $$report; rm -f $$report; \
	test $$rest -eq 0 && test $$models -eq 0

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy

check: lint typecheck test

clean: down
	rm -rf .stack out

# Every wheel the project needs except torch, for a GPU machine without network
# (README "GPU"): pip install --no-index --find-links wheelhouse -e '.[worker,stack]'.
# For that machine's Python (WHEEL_PYTHON) on x86-64 Linux.
WHEEL_PYTHON ?= 3.11
wheelhouse: venv
	grep -v -e '^torch==' -e '^#' constraints.txt > $(VENV)/wheelhouse.txt
	echo setuptools >> $(VENV)/wheelhouse.txt
	echo wheel >> $(VENV)/wheelhouse.txt
	$(BIN)/pip download -q --no-deps --only-binary=:all: -d wheelhouse \
		--python-version $(WHEEL_PYTHON) --platform manylinux_2_28_x86_64 \
		--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		--platform linux_x86_64 --platform any -r $(VENV)/wheelhouse.txt
