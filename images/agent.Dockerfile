# protege agent image: the agent loop, expert client, sandboxes (bubblewrap, docker, kubernetes), grading,
# task verification, synth, the KFP step bodies that need no GPU, and register.
# Build from the repository root (`make images` does, through `protege docker images`):
#   docker build --network host -f images/agent.Dockerfile -t ghcr.io/protege-ai/protege-agent:$(git rev-parse HEAD) .
# The default base is pinned by digest; where no registry is reachable, BASE_IMAGE is the debootstrap image
# `protege docker up` imports (Debian bookworm, python3.11). Every Python package is pinned by
# requirements.lock + constraints.txt.
ARG BASE_IMAGE=python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7
FROM ${BASE_IMAGE}

ARG GIT_COMMIT=unknown
# Where torch comes from: the CPU index by default (the agent image never trains); a loopback find-links
# server with the CPU wheel where that index is unreachable (`protege docker images` sets both).
ARG TORCH_INDEX_ARGS="--index-url https://download.pytorch.org/whl/cpu"
ARG PIP_FIND_LINKS=""
# Debian bookworm's python is 3.11.2 and the lock was resolved on 3.11.7: one pin (soupsieve 4.1.2) declares
# Requires-Python >=3.11.5. `protege docker images` sets --ignore-requires-python on the debootstrap base only.
ARG LOCK_PIP_ARGS=""

# No HF_HUB_OFFLINE here: cluster steps load hub task sets (and models); the local runner sets it.
ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=true \
    TOKENIZERS_PARALLELISM=false \
    PROTEGE_GIT_COMMIT=${GIT_COMMIT}
LABEL org.opencontainers.image.title="protege-agent" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"

# git: sandboxes clone task repos at base_commit; bubblewrap: the local sandbox backend.
RUN apt-get update \
 && apt-get install -y --no-install-recommends git bubblewrap ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv

WORKDIR /opt/protege
COPY constraints.txt requirements.lock pyproject.toml README.md ./
# images/build-ca/build-ca.crt: the build host's CA bundle when `protege docker images` puts one there (a
# TLS-inspecting proxy); the directory's README keeps the COPY valid otherwise. Removed in the layer using it.
COPY images/build-ca/ /tmp/build-extra/
# torch first, then the lock; the same order as `make setup`. PIP_CONSTRAINT reaches sdist build envs too.
RUN if [ -s /tmp/build-extra/build-ca.crt ]; then export PIP_CERT=/tmp/build-extra/build-ca.crt; fi \
 && export PIP_CONSTRAINT=/opt/protege/constraints.txt \
 && pip install -c constraints.txt ${TORCH_INDEX_ARGS} torch==2.13.0 \
 && pip install -c constraints.txt ${LOCK_PIP_ARGS} -r requirements.lock \
 && rm -rf /tmp/build-extra
COPY src/ src/
COPY images/build-ca/ /tmp/build-extra/
RUN if [ -s /tmp/build-extra/build-ca.crt ]; then export PIP_CERT=/tmp/build-extra/build-ca.crt; fi \
 && pip install -c constraints.txt --no-deps . \
 && pip check \
 && rm -rf /tmp/build-extra

RUN groupadd --gid 10001 protege \
 && useradd --create-home --uid 10001 --gid 10001 protege \
 && mkdir -p /workspace && chown protege:protege /workspace
WORKDIR /workspace
USER 10001:10001
