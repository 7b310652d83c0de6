# The commands that matter. `make test` is what CI runs (.ci/run).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: venv proto run serve demo test test-fast gpu-bundle gpu-check gpu-dry-run compose-test clean

# torch first, pinned: 2.13.0 is the CPU build that lies on this disk; a bare `torch` would pull a CUDA build.
# The install (editable) also generates the gRPC stubs from proto/ (client/stubs_build.py): a changed proto
# reinstalls.
$(VENV)/.installed: pyproject.toml client/pyproject.toml client/stubs_build.py proto/translation/v1/translator.proto
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[serve,web,test,bench]'
	touch $@

# The stubs alone, after an edit of the proto: the install's build step, whose isolated build environment has
# grpcio-tools (the project's own environment does not)
proto: $(VENV)/.installed
	$(PY) -m pip install --quiet --no-deps -e .

venv: $(VENV)/.installed

# The service with the shipped default model: start it, show one translation through the client, keep serving.
run: venv
	bash scripts/run.sh

serve: venv
	$(VENV)/bin/seq2seq-serve

demo: venv
	$(VENV)/bin/seq2seq-client --server localhost:50051 "Un homme fait du vélo dans la rue."

test: venv
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest -q tests

# The GPU check (issue 24, docs/benchmarks.md): gpu-bundle here fills .gpu-bundle/ (cp312 wheels, gRPC stubs,
# corpora; named in the device call's `carry`), gpu-check runs on the bare GPU machine with its own python3 (no
# venv: it has no network), gpu-dry-run runs the same steps at tiny sizes on this CPU (tests/test_gpu_check.py).
gpu-bundle: venv
	$(PY) scripts/gpu_bundle.py

gpu-check:
	OUT=$${OUT:-/tmp/gpu-check-out} bash scripts/gpu_check.sh

gpu-dry-run: venv
	OUT=$${OUT:-/tmp/gpu-dry-run} PY=$(PY) bash scripts/gpu_check.sh --device cpu --dry-run

test-fast: venv
	$(PY) -m pytest -q -m "not slow" tests

# `docker compose up` for real (one server, then two replicas): sets up Docker as on the project's machines
# (root, no Docker Hub), builds the image offline and checks that translations come back; see the script.
compose-test:
	bash scripts/compose_test.sh

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
