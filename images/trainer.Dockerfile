# protege trainer image: torch, trl, deepspeed, vllm, protege. Runs sft, rl1, rl2 and eval's policy server.
# Build from the repository root (`make images` does, through `protege docker images`):
#   docker build --network host -f images/trainer.Dockerfile -t ghcr.io/protege-ai/protege-trainer:$(git rev-parse HEAD) .
# On clusters (the defaults): the CUDA base pinned by digest, PyPI's CUDA torch and the GPU set pinned in
# images/trainer.constraints.txt. On a CPU build host (`protege docker images --cpu-trainer`): the
# debootstrap base, the CPU torch wheel from a loopback find-links server, no vllm, the CPU lock's pins;
# no gigabytes of CUDA wheels are downloaded.
ARG BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04@sha256:24c8e3581ea6330038b0d374920721983312627f8adbfcf390bdb4b399d280ed
FROM ${BASE_IMAGE}

ARG GIT_COMMIT=unknown
ARG TORCH_INDEX_ARGS=""
ARG PIP_FIND_LINKS=""
ARG GPU_PACKAGES="vllm==0.30.0"
ARG TRAINER_CONSTRAINTS="images/trainer.constraints.txt"
ARG LOCK_PIP_ARGS=""

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HF_HOME=/home/protege/.cache/huggingface \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=true \
    TOKENIZERS_PARALLELISM=false \
    PROTEGE_GIT_COMMIT=${GIT_COMMIT}
LABEL org.opencontainers.image.title="protege-trainer" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      org.opencontainers.image.base.name="${BASE_IMAGE}"

# python3 is the base's interpreter (3.12 on Ubuntu 24.04, 3.11 on bookworm); git for checkpoints'
# provenance; libaio for deepspeed's async_io.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev git libaio-dev ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv

WORKDIR /opt/protege
COPY constraints.txt requirements.lock pyproject.toml README.md ./
COPY images/trainer.constraints.txt images/
# images/build-ca/: see agent.Dockerfile.
COPY images/build-ca/ /tmp/build-extra/
# The GPU set resolves differently from the CPU lock (vllm 0.30 caps numpy), so it has its own pins;
# torch comes from PyPI's default CUDA wheel unless TORCH_INDEX_ARGS/PIP_FIND_LINKS say otherwise.
RUN if [ -s /tmp/build-extra/build-ca.crt ]; then export PIP_CERT=/tmp/build-extra/build-ca.crt; fi \
 && pip install -c constraints.txt -c ${TRAINER_CONSTRAINTS} ${TORCH_INDEX_ARGS} torch==2.13.0 \
 && pip install -c constraints.txt -c ${TRAINER_CONSTRAINTS} ${LOCK_PIP_ARGS} \
      torch==2.13.0 ${GPU_PACKAGES} transformers==5.23.0 trl==1.16.0 deepspeed==0.19.8 \
      peft==0.21.2 accelerate==1.15.0 \
 && rm -rf /tmp/build-extra
COPY src/ src/
COPY images/build-ca/ /tmp/build-extra/
RUN if [ -s /tmp/build-extra/build-ca.crt ]; then export PIP_CERT=/tmp/build-extra/build-ca.crt; fi \
 && pip install -c constraints.txt -c ${TRAINER_CONSTRAINTS} ${LOCK_PIP_ARGS} . \
 && pip check \
 && rm -rf /tmp/build-extra

RUN groupadd --gid 10001 protege \
 && useradd --create-home --uid 10001 --gid 10001 protege \
 && mkdir -p /home/protege/.cache /workspace \
 && chown -R protege:protege /home/protege /workspace
WORKDIR /workspace
USER 10001:10001
