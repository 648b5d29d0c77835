# protege: the one entry point. `make demo` and `make test` each run `setup` first.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip
STAMP := $(VENV)/.installed
TOOLS := .tools
S3RVER := $(TOOLS)/node_modules/.bin/s3rver
export MLFLOW_DISABLE_TELEMETRY := true
export DO_NOT_TRACK := true
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export TRL_EXPERIMENTAL_SILENCE := 1
export PYTHONWARNINGS := ignore::FutureWarning,ignore::DeprecationWarning

.PHONY: setup system-deps test test-fast demo bench lint format compile services-up services-down services-status images clean

setup: $(STAMP) $(S3RVER) system-deps ## create .venv and install the locked stack (idempotent)

# pip's output goes to a log (this machine's extra indexes print hundreds of harmless warnings);
# on failure its tail is shown.
INSTALL_LOG := $(VENV)/install.log
PIP_LOGGED = >>$(INSTALL_LOG) 2>&1 || { tail -n 40 $(INSTALL_LOG); exit 1; }

$(STAMP): requirements.lock constraints.txt pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@echo "setup: installing into $(VENV) (log: $(INSTALL_LOG))"
	@$(PIP) install -q -U pip setuptools wheel $(PIP_LOGGED)
	@# torch first, from the local CPU wheel; it stays a constraint so nothing swaps in a CUDA build.
	@echo "setup: torch==2.13.0 (CPU)"; $(PIP) install -q -c constraints.txt torch==2.13.0 $(PIP_LOGGED)
	@echo "setup: locked dependencies"; $(PIP) install -q -c constraints.txt -r requirements.lock $(PIP_LOGGED)
	@$(PIP) install -q -c constraints.txt --no-deps -e . $(PIP_LOGGED)
	@touch $(STAMP)
	@echo "setup: done"

$(S3RVER):
	mkdir -p $(TOOLS) && npm install --silent --no-audit --no-fund --prefix $(TOOLS) s3rver@3.7.1

SYSTEM_PACKAGES := bubblewrap libseccomp2 util-linux
system-deps: ## bubblewrap, libseccomp (its seccomp filter) and setpriv (util-linux) for the local sandbox
	@{ command -v bwrap && command -v setpriv && /sbin/ldconfig -p | grep -q libseccomp.so.2; } >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get install -y -q $(SYSTEM_PACKAGES) >/dev/null || (apt-get update -q && apt-get install -y -q $(SYSTEM_PACKAGES)); \
	  else sudo apt-get install -y -q $(SYSTEM_PACKAGES); fi; }

test: setup ## run the test suite
	$(BIN)/python -m pytest -q -p no:cacheprovider

test-fast: setup ## tests without the slow (training) tier
	$(BIN)/python -m pytest -q -m "not slow" -p no:cacheprovider

demo: setup ## start local services and run the whole KFP pipeline locally (kfp.local) on CPU
	$(BIN)/protege services up
	$(BIN)/protege run --profile local

bench: setup ## benchmarks; results land in bench/results/
	$(BIN)/python -m bench

lint: setup ## ruff lint + format check
	$(BIN)/ruff check src tests pipelines components bench
	$(BIN)/ruff format --check src tests pipelines components bench

format: setup
	$(BIN)/ruff check --fix src tests pipelines components bench
	$(BIN)/ruff format src tests pipelines components bench

compile: setup ## compile the KFP pipeline into pipelines/
	$(BIN)/protege compile

services-up: setup ## start s3rver + MLflow on loopback
	$(BIN)/protege services up

services-down:
	$(BIN)/protege services down

services-status:
	$(BIN)/protege services status

IMAGE_REPO ?= protege
GIT_SHA = $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
images: ## build the trainer and agent images (needs a Docker daemon), tagged with the git SHA
	@if ! command -v docker >/dev/null; then echo "images: docker is not installed; cannot build"; exit 1; fi
	@if ! docker info >/dev/null 2>&1; then echo "images: no Docker daemon reachable (docker info failed); cannot build"; exit 1; fi
	DOCKER_BUILDKIT=1 docker build -f images/trainer.Dockerfile --build-arg GIT_COMMIT=$(GIT_SHA) -t $(IMAGE_REPO)/trainer:$(GIT_SHA) .
	DOCKER_BUILDKIT=1 docker build -f images/agent.Dockerfile --build-arg GIT_COMMIT=$(GIT_SHA) -t $(IMAGE_REPO)/agent:$(GIT_SHA) .

clean: services-down
	rm -rf .protege
