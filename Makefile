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

.PHONY: setup system-deps test test-fast test-docker demo learn bench lint format compile services-up services-down services-status docker-up docker-down images clean

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

# -rs prints every skip's reason: a docker tier without an engine says why, never silently.
test: setup docker-up ## run the test suite (the docker tier too, when an engine can be started)
	$(BIN)/python -m pytest -q -rs -p no:cacheprovider

test-fast: setup ## tests without the slow (training) tier
	$(BIN)/python -m pytest -q -rs -m "not slow" -p no:cacheprovider

test-docker: setup docker-up ## only the docker tier (a live engine: sandbox, grading, images)
	$(BIN)/python -m pytest -q -rs -m docker -p no:cacheprovider

# Uses a running daemon, else starts one as root (dockerd state under .protege/docker, base image from the
# debootstrap tarball cached in /var/cache/protege). Not being able to is not an error here: the docker
# tier is then skipped with the reason printed.
docker-up: setup ## find or start a Docker engine, the base image and the demo instance images
	@$(BIN)/protege docker up --demo-images || echo "docker-up: no engine; the docker test tier will be skipped (reason above)"

docker-down:
	@test ! -x $(BIN)/protege || $(BIN)/protege docker down

demo: setup ## start local services and run the whole KFP pipeline locally (kfp.local) on CPU
	$(BIN)/protege services up
	$(BIN)/protege run --profile local

# The learning run (issue 16, bench/learning.py): generated tasks (resumable; kept across runs), the warm-started
# tiny base (about 34 min the first time, then cached in .protege/models), then synth -> sft -> rl1 -> rl2 and
# eval of base, sft, rl1 and rl2 under the `learn` profile; curves and the table land in
# bench/results/learning.{json,png} and on the MLflow run. LEARN_TASKS: instances per bundled repository. Eval
# holds out whole functions: a 1M-parameter student cannot read an unseen repository's layout (it recalls the
# paths it was trained on), so held-out bugs sit in functions it never saw, in repositories it did.
LEARN_TASKS ?= 30
learn: setup ## a tiny protégé that measurably learns: curves in bench/results/learning.{json,png}
	$(BIN)/protege services up
	$(BIN)/protege tasks generate demo:all --n $(LEARN_TASKS) --split function --out .protege/tasks/generated
	$(BIN)/python -m bench.learning --profile learn

bench: setup ## benchmarks; results land in bench/results/ (BENCH="checkout episode" runs some; python -m bench --help)
	$(BIN)/python -m bench $(BENCH)

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

# Tags come from protege.image_refs (the one place `protege compile --images` reads too):
# ghcr.io/protege-ai/protege-{agent,trainer}:<git sha>. Without a GPU the trainer is its CPU variant.
TRAINER_FLAVOR ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo gpu || echo cpu)
images: setup ## build the agent and trainer images here, tagged with the git SHA (sizes, times: .protege/images.json)
	$(BIN)/protege docker images $(if $(filter cpu,$(TRAINER_FLAVOR)),--cpu-trainer) --record .protege/images.json

clean: services-down docker-down
	rm -rf .protege
