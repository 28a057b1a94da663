# Two commands for newcomers: `make run` and `make test`. Both create .venv from requirements.lock
# when it is missing or older than the lock.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CORES ?= all

.PHONY: run test bench lint report lock clean-results

$(STAMP): requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else "camfaith needs Python 3.11 (found %d.%d); set PYTHON=" % sys.version_info[:2])'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24"
	$(BIN)/python -m pip install --quiet -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/snakemake --cores $(CORES)

test: $(STAMP)
	$(BIN)/python -m pytest

$(VENV)/.installed-bench: $(STAMP) requirements-bench.lock
	$(BIN)/python -m pip install --quiet -r requirements-bench.lock
	touch $@

# camfaith against its floor and against pytorch-grad-cam / Quantus; table in benchmarks/latest.md.
bench: $(VENV)/.installed-bench
	$(BIN)/python benchmarks/bench.py

lint: $(STAMP)
	$(BIN)/snakemake --lint

report: $(STAMP)
	$(BIN)/snakemake --cores $(CORES) --report results/report.html

# Re-resolve pyproject.toml's ranges into exact pins (needs the package index).
lock: $(STAMP)
	$(BIN)/python -m pip install --quiet --dry-run --ignore-installed --report .lock-report.json ".[test]"
	$(BIN)/python -c 'import json; r = json.load(open(".lock-report.json")); pins = sorted((i["metadata"]["name"].lower(), i["metadata"]["version"]) for i in r["install"] if i["metadata"]["name"].lower() != "camfaith"); head = [l for l in open("requirements.lock") if l.startswith("#")]; open("requirements.lock", "w").write("".join(head) + "".join(f"{n}=={v}\n" for n, v in pins))'
	rm -f .lock-report.json
# The same pins for the image and conda: requirements-hashed.lock (sha256 of each Linux x86_64
# CPython 3.11 file, from PyPI's listing) and envs/camfaith.yaml's pip list.
	$(BIN)/python ci/lock_sync.py

clean-results:
	rm -rf results logs benchmarks/*/ .snakemake

# Builds the Dockerfile on a private Docker engine with a stand-in base image and runs the tiny config
# in it (root, Debian; needs 35 GB free, uses about 27 GB; 7-9 minutes; docs/container.md).
.PHONY: image-test
image-test:
	ci/image_test.sh

# Runs the tiny config through profiles/slurm on a throwaway one-node SLURM cluster with two fake
# GPUs (root, Debian; installs SLURM when missing; about 6 minutes; docs/cluster.md).
.PHONY: slurm-test
slurm-test: $(STAMP)
	VENV=$(abspath $(VENV)) ci/slurm_proof.sh

# The CUDA checks, for a lent GPU machine: tests/test_cuda.py and GPU throughput (ci/gpu_bench.py) into
# OUT (default results/gpu-check). No .venv needed: PYTHON when given, else .venv's when present, else
# python3. Exits 2 at once without CUDA, 3 naming a missing module; under 8 minutes (docs/gpu-check.md).
.PHONY: gpu-check
gpu-check:
	OUT="$(OUT)" PYTHON="$(if $(filter command line environment,$(origin PYTHON)),$(PYTHON),$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON)))" bash ci/gpu_check.sh
