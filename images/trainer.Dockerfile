# protege trainer image: CUDA, torch, trl, deepspeed, vllm, protege. Runs sft, rl1, rl2 and eval's policy server.
# Build from the repository root (`make images` does):
#   docker build -f images/trainer.Dockerfile -t protege-trainer:$(git rev-parse HEAD) .
# The base is pinned by digest; every Python package is pinned (images/trainer.constraints.txt).
FROM nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04@sha256:24c8e3581ea6330038b0d374920721983312627f8adbfcf390bdb4b399d280ed

ARG GIT_COMMIT=unknown

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
      org.opencontainers.image.base.name="nvidia/cuda:12.8.1-cudnn-devel-ubuntu24.04"

# python3.12 is Ubuntu 24.04's interpreter; git for checkpoints' provenance; libaio for deepspeed's async_io.
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev git libaio-dev ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv

WORKDIR /opt/protege
COPY constraints.txt requirements.lock pyproject.toml README.md ./
COPY images/trainer.constraints.txt images/
# The GPU set resolves differently from the CPU lock (vllm 0.30 caps numpy), so it has its own pins;
# torch comes from PyPI's default CUDA wheel.
RUN pip install -c constraints.txt -c images/trainer.constraints.txt \
      torch==2.13.0 vllm==0.30.0 transformers==5.23.0 trl==1.16.0 deepspeed==0.19.8 \
      peft==0.21.2 accelerate==1.15.0
COPY src/ src/
RUN pip install -c constraints.txt -c images/trainer.constraints.txt . \
 && pip check

RUN groupadd --gid 10001 protege \
 && useradd --create-home --uid 10001 --gid 10001 protege \
 && mkdir -p /home/protege/.cache /workspace \
 && chown -R protege:protege /home/protege /workspace
WORKDIR /workspace
USER 10001:10001
