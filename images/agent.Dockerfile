# protege agent image: the agent loop, expert client, sandboxes (bubblewrap, docker, kubernetes), grading,
# task verification, synth, the KFP step bodies that need no GPU, and register.
# Build from the repository root (`make images` does):
#   docker build -f images/agent.Dockerfile -t protege-agent:$(git rev-parse HEAD) .
# The base is pinned by digest; every Python package is pinned by requirements.lock + constraints.txt.
FROM python:3.11-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7

ARG GIT_COMMIT=unknown

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=true \
    HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    PROTEGE_GIT_COMMIT=${GIT_COMMIT}
LABEL org.opencontainers.image.title="protege-agent" \
      org.opencontainers.image.revision="${GIT_COMMIT}" \
      org.opencontainers.image.base.name="python:3.11-slim"

# git: sandboxes clone task repos at base_commit; bubblewrap: the local sandbox backend.
RUN apt-get update \
 && apt-get install -y --no-install-recommends git bubblewrap ca-certificates \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/protege
COPY constraints.txt requirements.lock pyproject.toml README.md ./
# torch first (CPU wheel: the agent image never trains), then the lock; the same order as `make setup`.
RUN pip install -c constraints.txt --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && pip install -c constraints.txt -r requirements.lock
COPY src/ src/
RUN pip install -c constraints.txt --no-deps . \
 && pip check

RUN groupadd --gid 10001 protege \
 && useradd --create-home --uid 10001 --gid 10001 protege \
 && mkdir -p /workspace && chown protege:protege /workspace
WORKDIR /workspace
USER 10001:10001
