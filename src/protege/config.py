"""Typed configuration for the whole pipeline and each phase.

One pydantic model per concern; every field has a docstring (shown by `protege config show --doc`).
Defaults are the values of shared METHOD.md (paper values where the paper gives them); the YAML
profiles under `protege/configs/` only override what differs (`local`: tiny model, bundled tasks, CPU;
`cluster`: Qwen2.5-Coder-7B-Instruct on GPUs). Dotted overrides (`rl.group_size=4`) apply last.

Unknown keys and bad values raise `ConfigError`, whose message names the file, the field and the
reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from protege.image_refs import image_ref

PROFILES_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A configuration file, profile or override is invalid; the message says where and why."""


# Longest duration a `*_s` field may hold: a year. Larger values are typos, and beyond about 9.2e9 s the
# standard library's waits (threading, select) raise OverflowError mid-run instead of at load time.
MAX_SECONDS = 366 * 24 * 3600


class Strict(BaseModel):
    """Base for every config model: unknown keys fail, field docstrings become descriptions, inf and
    nan are refused in every number (a timeout of `.inf` would make every wait fail), and every
    duration (a field named `*_s`, or a dict of them) is at most MAX_SECONDS."""

    model_config = ConfigDict(
        extra="forbid", use_attribute_docstrings=True, validate_assignment=True, allow_inf_nan=False
    )

    @field_validator("*", mode="after")
    @classmethod
    def _durations_are_bounded(cls, value: Any, info: ValidationInfo) -> Any:
        if not (info.field_name or "").endswith("_s"):
            return value
        values = value.values() if isinstance(value, dict) else [value]
        for number in values:
            # Signs are each field's own bound (gt=0 or ge=0); this adds the upper one.
            if isinstance(number, int | float) and not isinstance(number, bool) and number > MAX_SECONDS:
                raise ValueError(f"a duration of more than a year ({MAX_SECONDS} s) is not plausible")
        return value


def _env(name: str, default: str = "") -> Any:
    return lambda: os.environ.get(name, default)


def _env_secret(name: str, default: str = "") -> Any:
    return lambda: SecretStr(os.environ.get(name, default))


# --------------------------------------------------------------------------------------------------
# Infrastructure
# --------------------------------------------------------------------------------------------------


class StoreConfig(Strict):
    """S3-compatible artifact store (MinIO on clusters, s3rver locally)."""

    endpoint: str = Field(
        default_factory=lambda: (
            os.environ.get("PROTEGE_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL", "127.0.0.1:9000")
        )
    )
    """host:port of the S3 API, without scheme (env PROTEGE_S3_ENDPOINT, else the AWS_ENDPOINT_URL host)."""
    access_key: SecretStr = Field(default_factory=_env_secret("AWS_ACCESS_KEY_ID", "S3RVER"))
    """S3 access key (env AWS_ACCESS_KEY_ID)."""
    secret_key: SecretStr = Field(default_factory=_env_secret("AWS_SECRET_ACCESS_KEY", "S3RVER"))
    """S3 secret key (env AWS_SECRET_ACCESS_KEY)."""
    secure: bool = False
    """Use HTTPS to reach the endpoint."""
    region: str = "us-east-1"
    """Region sent with signed requests."""
    bucket: str = "protege"
    """Bucket that holds every artifact of the pipeline (datasets, trajectories, checkpoints, reports)."""
    connect_timeout_s: float = Field(default=5.0, gt=0)
    """TCP connect timeout per request, so an unreachable endpoint fails in seconds, not minutes."""
    read_timeout_s: float = Field(default=300.0, gt=0)
    """Socket read timeout per request (large objects stream in parts, each well under this)."""
    max_retries: int = Field(default=2, ge=0)
    """Retries of a failed connect or a 5xx reply, with exponential backoff, before a StoreError."""
    retry_backoff_s: float = Field(default=0.5, ge=0)
    """Backoff factor between retries (0.5 s, 1 s, 2 s, ...)."""
    op_attempts: int = Field(default=4, ge=1)
    """Attempts of one store operation (a put, get, stat or listing) while the endpoint is unreachable or
    answers 5xx, on top of the client's own retries; then `StoreUnavailable`."""
    op_backoff_max_s: float = Field(default=10.0, ge=0)
    """Longest wait between those attempts (exponential from retry_backoff_s, capped here)."""
    flush_timeout_s: float = Field(default=120.0, ge=0)
    """A phase that queued uploads while the store was down keeps retrying them this long before it ends;
    then it fails naming what is pending (a rerun uploads the rest)."""
    progress_every_files: int = Field(default=100, ge=1)
    """Directory transfers log a progress line after every this many files ..."""
    progress_every_mb: int = Field(default=256, ge=1)
    """... or after every this many MiB, whichever comes first."""

    @model_validator(mode="after")
    def _endpoint_has_no_scheme(self) -> StoreConfig:
        for scheme in ("http://", "https://"):
            if self.endpoint.startswith(scheme):
                object.__setattr__(self, "secure", scheme == "https://")
                object.__setattr__(self, "endpoint", self.endpoint[len(scheme) :].rstrip("/"))
        return self


class TrackingConfig(Strict):
    """MLflow tracking server, experiment and model registry."""

    uri: str = Field(default_factory=_env("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000"))
    """MLflow tracking URI (env MLFLOW_TRACKING_URI)."""
    experiment: str = "protege"
    """Experiment that holds the pipeline runs."""
    registered_model: str = "protege-agent"
    """Name of the registered model that `register` versions."""
    param_value_max_chars: int = Field(default=500, ge=16)
    """Longer param values are truncated (with a marker) to this; 500 is the limit of older MLflow servers."""
    request_timeout_s: int = Field(default=30, ge=1)
    """Timeout of one request to the tracking server (MLflow's default is 120 s)."""
    request_max_retries: int = Field(default=2, ge=0)
    """Retries of a failed request (MLflow's default of 7 with backoff 2 waits minutes on a dead server)."""
    retry_attempts: int = Field(default=4, ge=1)
    """Attempts of a tracking call whose answer is needed (runs, models, registry) while the server is
    unreachable or answers 5xx, with exponential backoff; then a TrackingError."""
    retry_backoff_s: float = Field(default=0.5, ge=0)
    """First wait between those attempts, doubled per attempt ..."""
    retry_backoff_max_s: float = Field(default=10.0, ge=0)
    """... and capped at this."""
    flush_timeout_s: float = Field(default=120.0, ge=0)
    """Metrics, params, tags, datasets and checkpoint models logged while the server was down are buffered
    and flushed later; closing a phase run keeps retrying the buffer this long, then fails naming what is
    pending (the phase run is then marked FAILED)."""
    spool_dir: str = ".protege/tracking-spool"
    """Buffered calls are also kept here on disk, so a process that dies before the server comes back leaves
    them for the next Tracker of the same server and experiment to send (empty: memory only)."""
    trace_sample: int = Field(default=2, ge=0)
    """Agent episodes logged as MLflow traces per synth run and per RL step (the first ones; 0: none).
    Every eval episode is traced whatever this says."""
    trace_value_max_chars: int = Field(default=2000, ge=16)
    """Strings in a trace's span inputs and outputs (commands, observations, expert context and replies)
    are cut to this many characters."""


class ServicesConfig(Strict):
    """Local services started by `protege services up` (loopback only)."""

    data_dir: str = ".protege"
    """Project-local directory for s3rver data, the MLflow sqlite DB, pid files and logs."""
    s3_port: int = Field(default=9000, ge=1, le=65535)
    """Port of the local s3rver."""
    mlflow_port: int = Field(default=5000, ge=1, le=65535)
    """Port of the local MLflow server."""
    mlflow_artifacts_bucket: str = "mlflow"
    """Bucket on the local S3 server that MLflow proxies artifacts to."""
    startup_timeout_s: float = Field(default=90.0, gt=0)
    """How long to wait for a service's health check before giving up."""
    stop_grace_s: float = Field(default=10.0, gt=0)
    """After SIGTERM to a service's process group, wait this long before SIGKILL."""
    poll_interval_s: float = Field(default=0.25, gt=0)
    """Pause between health checks while a service starts or stops."""
    progress_interval_s: float = Field(default=5.0, gt=0)
    """While a service starts, print a progress line this often."""
    health_timeout_s: float = Field(default=2.0, gt=0)
    """Timeout of one health-check request (loopback: an answer takes milliseconds)."""
    log_tail_lines: int = Field(default=40, ge=1)
    """Lines of a service's log printed when it fails to start."""
    s3rver_module: str = ".tools/node_modules/s3rver"
    """The npm s3rver package (installed by `make setup`); a relative path is tried from the current
    directory, then from the project root."""
    node_bin: str = "node"
    """Node.js executable that runs s3rver."""


# --------------------------------------------------------------------------------------------------
# Tasks and models
# --------------------------------------------------------------------------------------------------


class TaskSetConfig(Strict):
    """Where the training and evaluation task instances come from and how they are split."""

    train: str = "demo:train"
    """Training task set: a file/dir path, an s3:// URI, an HF dataset id `owner/name[@revision][:split]`, or
    `demo:train|eval|all`. Rows in any published schema (swebench 5.x, SWE-bench, SWE-Gym, SWE-smith)."""
    eval: str = "demo:eval"
    """Evaluation task set (same forms as `train`)."""
    train_split: str = ""
    """Split of `train` when it has splits (a hub dataset or a copy of one); '' = its only split, else `test`."""
    eval_split: str = ""
    """Split of `eval` (as `train_split`), chosen independently: SWE-Gym has only `train`, SWE-bench `test`."""
    train_ids: list[str] = []
    """If non-empty, keep only these training instance ids."""
    eval_ids: list[str] = []
    """If non-empty, keep only these evaluation instance ids."""
    eval_fraction: float = Field(default=0.0, ge=0.0, lt=1.0)
    """If > 0 and train == eval, split that one set deterministically with this fraction held out."""
    split_seed: int = Field(default=0, ge=0)
    """Seed of the deterministic train/eval split."""
    max_train: int = Field(default=0, ge=0)
    """Cap on training tasks after filtering (0 = all). Paper RL subset: 100."""
    max_eval: int = Field(default=0, ge=0)
    """Cap on evaluation tasks (0 = all), chosen like `max_train` (seeded by `split_seed`)."""
    decontaminate: bool = True
    """Drop training tasks whose repo also appears in the evaluation set."""
    repos_dir: str = ".protege/repos"
    """Local directory of git repositories named like the task's `repo` (used by the local sandbox)."""


class TinyModelConfig(Strict):
    """Architecture of the tiny Qwen2/Qwen3 model built locally (no weights can be downloaded here)."""

    vocab_size: int = Field(default=4096, ge=512)
    """Size of the BPE vocabulary trained on the bundled repositories."""
    hidden_size: int = Field(default=128, ge=16)
    """Model width."""
    intermediate_size: int = Field(default=256, ge=16)
    """MLP width."""
    num_hidden_layers: int = Field(default=4, ge=1)
    """Transformer layers."""
    num_attention_heads: int = Field(default=4, ge=1)
    """Attention heads."""
    num_key_value_heads: int = Field(default=2, ge=1)
    """Key/value heads (grouped-query attention)."""
    max_position_embeddings: int = Field(default=8192, ge=128)
    """Longest sequence the tiny model accepts."""
    seed: int = Field(default=0, ge=0)
    """Seed of the random initialisation."""
    copy_warmup_steps: int = Field(default=0, ge=0)
    """Steps of the copy warm start at build time (protege.tiny_warmup; 0: none): copying from the context, the
    skill a pretrained base has and a randomly initialised one lacks. 5000 (about 34 min on 2 cores, once: the
    build is cached by digest) is the measured recipe and the learn profile's; under about 4,000 its first phase
    ends before it leaves chance."""
    family: Literal["qwen2.5", "qwen3"] = "qwen2.5"
    """Chat template and architecture of the tiny build: Qwen2.5's (Qwen2) or Qwen3's with <think> (Qwen3).
    Only the build reads it; every other path reads the family off the tokenizer's own chat template."""


class ModelConfig(Strict):
    """The protégé policy model."""

    base: str = "Qwen/Qwen2.5-Coder-7B-Instruct"
    """Base model: an HF hub id, a local directory or an s3:// URI; `tiny` builds the local tiny model."""
    tiny: TinyModelConfig = TinyModelConfig()
    """Architecture used when base == 'tiny'."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "bfloat16"
    """Weights dtype for training and generation."""
    attn_implementation: str = "sdpa"
    """Attention kernel (`sdpa`, `flash_attention_2`, `eager`)."""
    cache_dir: str = ".protege/models"
    """Local directory that holds resolved models: built tiny models, s3:// downloads, hub snapshots."""


# --------------------------------------------------------------------------------------------------
# The agent and the expert (METHOD §1, §2, §6)
# --------------------------------------------------------------------------------------------------


class EnvironmentConfig(Strict):
    """Per-task environments (protege.environments): where specs come from and where venvs are cached."""

    spec_file: str = ""
    """YAML mapping `owner/name` (or `owner/name@version`) to an environment spec; empty = none."""
    cache_dir: str = ".protege/envs"
    """Local backend: one virtualenv per environment digest, built once, here."""
    build_timeout_s: float = Field(default=900.0, gt=0)
    """Limit of each step of an environment build (making the venv, installing its packages)."""


class SandboxConfig(Strict):
    """Where agent commands and grading run."""

    backend: Literal["local", "docker", "kubernetes"] = "local"
    """`local` = bubblewrap on this host; `docker` = swebench instance image; `kubernetes` = one pod per episode."""
    allow_unsandboxed: bool = False
    """Local only: run commands without bubblewrap. Never a silent fallback; must be opted into."""
    command_timeout_s: float = Field(default=120.0, gt=0)
    """Per-command wall-clock limit; the whole process group is killed when it passes."""
    output_limit_chars: int = Field(default=100_000, ge=1000)
    """Output captured per command before truncation (the observation cap is agent.observation_max_chars)."""
    memory_limit_mb: int = Field(default=4096, ge=64)
    """Memory limit of the whole sandbox (local: a cgroup shared by all its processes where this host lets
    the process make one, and an address-space ulimit per process in any case)."""
    max_processes: int = Field(default=512, ge=16)
    """Process (and thread) limit: local, a pids cgroup per sandbox where available plus RLIMIT_NPROC per
    command; docker, the container's pids limit (sandbox and grading); kubernetes, a `ulimit -u` per
    command (pod-wide pids are the kubelet's podPidsLimit)."""
    disk_limit_mb: int = Field(default=2048, ge=16)
    """Size limit of the work tree with /tmp and HOME: local, a tmpfs of this size when the process is root
    (else a size check after every command: over it is a sandbox_error) and RLIMIT_FSIZE per file;
    kubernetes, the sizeLimit of the work tree's emptyDir."""
    read_limit_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    """Largest file the host reads back from a sandbox (editor view/edit, grading logs); a larger one is refused."""
    patch_limit_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    """Largest diff `submit` accepts; a larger one ends the episode as `patch_too_large`."""
    seccomp: bool = True
    """Local: load a seccomp deny-list (mount, ptrace, keyctl, bpf, unshare, setns, kexec, modules, ...)
    into bubblewrap (needs libseccomp)."""
    uid_base: int = Field(default=200_000, ge=1000)
    """Local, when this process is root: commands run as a host uid drawn from [uid_base,
    uid_base + uid_count), one per sandbox, never root (a non-root process runs them as itself)."""
    uid_count: int = Field(default=65_536, ge=1)
    """Size of that uid range."""
    pod_writable_paths: list[str] = ["/tmp"]
    """Kubernetes: paths besides `workdir` that stay writable under the read-only root filesystem; each is
    an emptyDir filled from the image by an init container (add a conda env here if eval reinstalls into it)."""
    cpu_limit: float = Field(default=1.0, gt=0)
    """CPU cores per sandbox (docker/kubernetes) or CPU-seconds factor locally."""
    workdir: str = "/testbed"
    """Path of the repository inside the sandbox (SWE-bench images use /testbed)."""
    image_template: str = "{image}"
    """Image name template; `{image}` is the task's image column."""
    namespace: str = "protege-sandboxes"
    """Kubernetes namespace for sandbox pods."""
    pod_label: str = "protege.ai/sandbox"
    """Label put on sandbox pods; the deny-egress NetworkPolicy selects it."""
    pod_deadline_s: int = Field(default=7200, ge=60)
    """activeDeadlineSeconds of a sandbox pod."""
    max_concurrent_starts: int = Field(default=8, ge=1)
    """Cap on sandbox (pod/container) creations in flight; more wait with backoff."""
    bwrap_path: str = "bwrap"
    """Local: the bubblewrap binary (a name on PATH or a path); missing means SandboxError unless unsandboxed."""
    start_timeout_s: float = Field(default=600.0, gt=0)
    """How long a container/pod may take to become ready (image pull included) before SandboxError."""
    start_retries: int = Field(default=5, ge=0)
    """Retries of a pod/container creation refused with 409/429/5xx, with exponential backoff."""
    start_backoff_s: float = Field(default=1.0, ge=0)
    """First backoff delay of those retries, doubled per attempt."""
    start_poll_s: float = Field(default=1.0, gt=0)
    """Kubernetes: interval between pod status polls while waiting for Running."""
    exec_grace_s: float = Field(default=30.0, gt=0)
    """Docker/kubernetes: how long past a command's timeout the client waits for the exec stream to end."""
    setup_timeout_s: float = Field(default=600.0, gt=0)
    """Timeout of the sandbox's own setup steps (clone at base_commit, history cleanup, `git gc`)."""
    checkout_cache_dir: str = ""
    """Local: where clean checkouts at base_commit are built once and placed into sandboxes from
    (protege.agent.sandbox.checkouts); empty = `$TMPDIR/protege-checkouts-<uid>`. Never mounted into a sandbox."""
    checkout_cache_entries: int = Field(default=256, ge=1)
    """Local: cached checkouts kept; past it the least recently used one that no sandbox holds is removed."""
    prepare_ahead: int = Field(default=1, ge=0)
    """Sandboxes the RL, eval and synth episode loops open ahead of need, for the episodes next in line,
    while the running ones generate (protege.agent.sandbox.warm_pool; 0 = open each when its episode starts)."""
    shell_init: str = (
        "if [ -f /opt/miniconda3/etc/profile.d/conda.sh ]; then "
        ". /opt/miniconda3/etc/profile.d/conda.sh && conda activate testbed; fi"
    )
    """Docker/kubernetes: shell line run before every command (SWE-bench images keep the env in conda `testbed`)."""
    container_user: str = Field(default="10001:10001", pattern=r"^\d+:\d+$")
    """Docker/kubernetes: uid:gid that commands and grading run as (kubernetes: runAsUser, runAsGroup and
    fsGroup; runAsNonRoot unless `0:0`); the image's workdir must be writable by it (the demo images' is).
    SWE-bench's public images keep /testbed root-owned: use `0:0` there (capabilities stay dropped)."""
    container_tmpfs_mb: int = Field(default=512, ge=16)
    """Docker: size of the writable tmpfs at /tmp (the root filesystem is read-only; workdir is a volume)."""
    environments: EnvironmentConfig = EnvironmentConfig()
    """Per-task environments: Python version and packages the task's tests need (see protege.environments)."""


class ExpertPrices(Strict):
    """Dollar price per million tokens."""

    input_per_mtok: float = Field(default=3.0, ge=0)
    """Dollars per million input tokens."""
    output_per_mtok: float = Field(default=15.0, ge=0)
    """Dollars per million output tokens."""


class ExpertConfig(Strict):
    """The strong model behind ask_expert (METHOD §2)."""

    backend: Literal["anthropic", "openai", "oracle"] = "anthropic"
    """`anthropic` (Messages API), `openai` (an OpenAI-compatible server, e.g. vLLM), `oracle` (offline, gold-patch derived)."""
    model: str = "claude-sonnet-4-5"
    """Model id sent to the backend."""
    base_url: str = ""
    """Override of the API base URL (empty = the SDK default or ANTHROPIC_BASE_URL / OPENAI_BASE_URL)."""
    max_output_tokens: int = Field(default=2048, ge=1)
    """Maximum tokens of one expert reply (paper observed median 500, max 1,657)."""
    context_messages: int = Field(default=5, ge=0)
    """How many of the protégé's most recent messages the expert sees (paper: 5)."""
    include_problem_statement: bool = True
    """Whether the expert sees the task's problem statement."""
    gold_patch: bool = False
    """Show the gold patch to the expert (data synthesis only; never at RL or evaluation time)."""
    allow_oracle: bool = False
    """Permit the offline oracle backend (local profile and synthesis only)."""
    oracle_quotes_line: bool = False
    """Oracle backend: also quote a one-line change as it is and as it should be (a single line, within METHOD §3's
    verbatim rule); off: the change in words and its changed piece only."""
    oracle_writes_call: bool = False
    """Oracle backend: also write a one-line change as the `str_replace_editor` call that makes it, in the JSON
    the protégé's own calls use (what a strong expert asked for the edit gives; a single line, within METHOD §3's
    verbatim rule). On in the learn profile."""
    timeout_s: float = Field(default=120.0, gt=0)
    """Per-request timeout."""
    max_retries: int = Field(default=3, ge=0)
    """Retries on overload/transient errors."""
    retry_backoff_s: float = Field(default=0.5, ge=0)
    """openai backend: first retry delay, doubled per attempt (the anthropic SDK uses its own backoff)."""
    retry_after_max_s: float = Field(default=30.0, ge=0)
    """Longest wait a `retry-after` header may impose before a retry (a server asking for an hour gets
    this); the anthropic SDK would otherwise obey it without bound."""
    api_key_env: str = ""
    """Environment variable holding the API key (empty = ANTHROPIC_API_KEY / OPENAI_API_KEY by backend)."""
    prices: ExpertPrices = ExpertPrices()
    """Price table used for metering."""
    run_budget_usd: float = Field(default=500.0, ge=0)
    """Dollar budget for all expert calls of one run; calls beyond it are refused with a clear status."""
    cache_mode: Literal["record", "replay", "off"] = "record"
    """Response cache: `record` answers from cache or calls and stores; `replay` never calls; `off` always calls."""
    cache_dir: str = ".protege/expert-cache"
    """Directory of the content-addressed response cache."""

    @model_validator(mode="after")
    def _oracle_needs_opt_in(self) -> ExpertConfig:
        if self.backend == "oracle" and not self.allow_oracle:
            raise ValueError(
                "backend 'oracle' is offline stand-in guidance; set expert.allow_oracle=true to use it"
            )
        return self


class PolicyConfig(Strict):
    """How the protégé's actions are generated."""

    backend: Literal["transformers", "openai", "anthropic", "scripted", "oracle"] = "transformers"
    """`transformers` in-process, `openai` (vLLM's OpenAI-compatible server), `anthropic`, `scripted` (replay),
    `oracle` (the offline oracle teacher acting alone: the local stand-in of the expert-alone baseline)."""
    base_url: str = ""
    """Server URL for the openai backend."""
    model: str = ""
    """Model id for openai/anthropic backends (empty = model.base)."""
    temperature: float = Field(default=0.0, ge=0)
    """Sampling temperature at evaluation (RL uses rl.temperature)."""
    max_new_tokens: int = Field(default=1024, ge=1)
    """Maximum tokens generated per turn."""
    context_window: int = Field(default=32768, ge=256)
    """Prompt + generation budget; exceeding it ends the episode as context_overflow."""
    prices: ExpertPrices = ExpertPrices()
    """Dollar price table of the anthropic backend's turns (local and vLLM turns cost nothing)."""
    timeout_s: float = Field(default=300.0, gt=0)
    """Per-request timeout of the openai and anthropic backends."""
    max_retries: int = Field(default=3, ge=0)
    """Retries of the openai and anthropic backends on overload/transient errors."""


class ForcedAskConfig(Strict):
    """The paper's two ablations of *when* to ask (issue 19): the scaffold itself calls `ask_expert` before
    chosen steps, through the same tool path, quota and cost cap as the policy's own calls; each such call
    is recorded with `forced: true`."""

    mode: Literal["off", "interval", "random"] = "off"
    """`off`; `interval`: before every step whose number is a multiple of every_k_steps; `random`: before
    each step with probability `rate`, drawn from a generator seeded by (seed, instance, attempt)."""
    every_k_steps: int = Field(default=5, ge=1)
    """mode=interval: k."""
    rate: float = Field(default=0.1, ge=0, le=1)
    """mode=random: the probability of a forced call before a step."""
    seed: int = Field(default=0, ge=0)
    """mode=random: seed of the draws (the same seed, instance and attempt give the same steps)."""
    question: str = Field(
        default="I have been asked to check in with you now. What should I do next to resolve the issue?",
        min_length=1,
    )
    """The question a forced call sends."""


class AgentConfig(Strict):
    """The scaffold the protégé acts in (METHOD §1)."""

    step_limit: int = Field(default=75, ge=1)
    """Maximum actions per episode (paper: 75)."""
    expert_quota: int = Field(default=6, ge=0)
    """Maximum ask_expert calls per episode (paper: 6); the next call returns an error observation."""
    cost_limit_usd: float = Field(default=2.0, ge=0)
    """Per-episode dollar cap on expert (and API policy) spend (paper: $2 at evaluation)."""
    wall_time_s: float = Field(default=3600.0, gt=0)
    """Per-episode wall-clock limit."""
    max_format_errors: int = Field(default=3, ge=1)
    """Consecutive unparsable policy turns before the episode ends as format_errors."""
    history_view: Literal["full", "collapsed"] = "full"
    """What the policy is shown of its history, the same at inference, in RL rollouts and in SFT examples
    (protege.agent.render): `full` (every observation as inserted) or `collapsed` (METHOD §1: older tool
    observations as a placeholder; SFT then trains one example per turn, and RL refuses it)."""
    keep_last_observations: int = Field(default=5, ge=0)
    """With history_view=collapsed: tool observations kept in full; older ones collapse to a placeholder
    (expert guidance never collapses)."""
    observation_max_chars: int = Field(default=16_000, ge=100)
    """Observations are truncated at insertion to this many characters, with a marker."""
    ask_expert: bool = True
    """Give eval episodes an expert (eval and `protege compare`; synth and RL always have one); off (the
    no-expert ablation) keeps the tool in the prompt, as the model was trained with it, but every call
    answers that no expert is available and is not metered."""
    forced_ask: ForcedAskConfig = ForcedAskConfig()
    """Scaffold-forced expert calls (the fixed-interval and random-ask ablations)."""
    sandbox: SandboxConfig = SandboxConfig()
    """Sandbox settings."""
    policy: PolicyConfig = PolicyConfig()
    """Policy backend settings."""


class LoopConfig(Strict):
    """Loop penalty R_loop (METHOD §5.1, §6)."""

    first_run_threshold: int = Field(default=15, ge=1)
    """k1: the first run is penalised beyond this length."""
    later_run_threshold: int = Field(default=8, ge=1)
    """k2: later runs are penalised beyond this length."""
    penalty_per_step: float = Field(default=0.5, ge=0)
    """λ: penalty per step beyond the threshold."""
    floor: float = Field(default=-10.0, le=0)
    """Lowest value R_loop takes."""
    metric_lengths: list[Annotated[int, Field(ge=1)]] = [10, 20, 40]
    """Loop-rate metric: share of trajectories whose longest run exceeds each L."""


class RewardConfig(Strict):
    """One curriculum stage's reward configuration (METHOD §5.1 table)."""

    loop: LoopConfig = LoopConfig()
    """Loop penalty constants."""
    w_sim: float = Field(default=0.5, ge=0)
    """Weight of R_sim."""
    sim_threshold: float = Field(default=0.5, ge=0, le=1)
    """R_sim is 0 at or above this patch similarity, else -1."""
    w_expert: float = Field(default=0.1, ge=0)
    """Weight of R_expert."""
    tau_warrant: float = Field(default=0.5, ge=0, le=1)
    """φ threshold on the warrant score u."""
    p_low: float = Field(default=-1.0, le=0)
    """φ value below τ_warrant."""
    lambda_b2b: float = Field(default=-0.25, le=0)
    """Penalty per back-to-back expert call."""
    b2b_floor: float = Field(default=-1.0, le=0)
    """Lowest R_b2b."""
    quota_penalty_enabled: bool = False
    """Add R_quota (the tool already enforces the quota)."""
    quota_penalty: float = Field(default=-1.0, le=0)
    """R_quota when the quota is exceeded (if enabled)."""
    w_follow: float = Field(default=0.5, ge=0)
    """Weight of R_follow."""
    tau_follow: float = Field(default=0.5, ge=0, le=1)
    """ψ threshold on the follow-through score f."""
    p_follow_low: float = Field(default=-1.0, le=0)
    """ψ value below τ_follow."""
    gate_loop: bool = True
    """Apply g_loop."""
    gate_follow: bool = False
    """Apply g_follow (off ≡ 1 in stage I)."""
    no_call_penalty: float = Field(default=0.0, le=0)
    """Added to R_total when the trajectory made no expert call (stage II: -10)."""
    judge: Literal["expert", "heuristic"] = "expert"
    """Hidden judge: the expert model with rubric prompts, or the offline heuristic."""
    judge_neutral_score: float = Field(default=0.5, ge=0, le=1)
    """Score used when the judge's answer is malformed twice."""
    gate_loop_zero_at: float = Field(default=-3.0, le=0)
    """g_loop is 0 when R_loop is at or below this."""
    gate_loop_half_at: float = Field(default=-1.0, le=0)
    """... else g_loop is `gate_partial` when R_loop is at or below this, else 1."""
    gate_follow_zero_at: float = Field(default=-1.5, le=0)
    """g_follow is 0 when R_follow is at or below this."""
    gate_follow_half_at: float = Field(default=-0.5, le=0)
    """... else g_follow is `gate_partial` when R_follow is at or below this, else 1."""
    gate_partial: float = Field(default=0.5, ge=0, le=1)
    """Gate value between the two thresholds (paper's form: 0.5)."""
    judge_max_output_tokens: int = Field(default=256, ge=16)
    """Expert judge: maximum tokens of one JSON answer."""
    judge_action_chars: int = Field(default=500, ge=50)
    """Expert judge: each action of a follow-through segment is shown truncated to this many characters."""
    judge_window: int = Field(default=5, ge=1)
    """Heuristic judge: K, the non-expert actions before a call inspected for stalling."""
    judge_stall_signals: int = Field(default=2, ge=1)
    """Heuristic judge: u = min(1, (failed actions + repeated base commands in the window) / this)."""
    judge_follow_hits: int = Field(default=2, ge=1)
    """Heuristic judge: f = min(1, targets acted on / min(targets named, this))."""
    judge_min_target_chars: int = Field(default=3, ge=1)
    """Heuristic judge: shorter backticked spans in the guidance are not targets (too unspecific)."""

    @model_validator(mode="after")
    def _gate_thresholds_are_ordered(self) -> RewardConfig:
        for name in ("loop", "follow"):
            zero, half = getattr(self, f"gate_{name}_zero_at"), getattr(self, f"gate_{name}_half_at")
            if zero > half:
                raise ValueError(f"gate_{name}_zero_at ({zero}) must be <= gate_{name}_half_at ({half})")
        return self


# METHOD §5.1 table, stage II column: what differs from the stage I defaults of RewardConfig.
STAGE_TWO_DEFAULTS: dict[str, Any] = {
    "w_follow": 2.0,
    "w_expert": 0.3,
    "tau_follow": 0.5,
    "p_follow_low": -2.0,
    "gate_follow": True,
    "no_call_penalty": -10.0,
}


def _stage_two_reward() -> RewardConfig:
    return RewardConfig(**STAGE_TWO_DEFAULTS)


# --------------------------------------------------------------------------------------------------
# Phases
# --------------------------------------------------------------------------------------------------


TeacherPlan = Literal["explore", "ask_first"]
"""How the oracle teacher goes about a task (protege.agent.teacher)."""


class SynthConfig(Strict):
    """Phase synth: expert-augmented trajectory synthesis (METHOD §3)."""

    teacher: Literal["anthropic", "openai", "oracle"] = "anthropic"
    """The strong model acting as the agent; `oracle` is the offline scripted teacher."""
    teacher_model: str = "claude-sonnet-4-5"
    """Model id of the acting teacher."""
    teacher_reasoning: bool = True
    """The oracle teacher writes a sentence of reasoning before each tool call. Off (the learn profile): its
    turns are the tool calls alone, for a student too small to model free prose (its greedy decoding of the
    teacher's varied sentences and quoted guidance falls into repetition and never reaches the tool call)."""
    teacher_plan: TeacherPlan = "explore"
    """The oracle teacher's course: `explore` locates the code, runs the tests, asks, edits, re-tests and
    submits (about ten turns); `ask_first` asks the expert at once, makes the change its reply names and submits
    (three turns, for a student whose context is its cost; the learn profile's)."""
    attempts: int = Field(default=1, ge=1)
    """Attempts per training task."""
    concurrency: int = Field(default=8, ge=1)
    """Episodes in flight."""
    task_timeout_s: float = Field(default=3600.0, gt=0)
    """Per-episode timeout."""
    task_budget_usd: float = Field(default=5.0, ge=0)
    """Dollar cap per task (teacher + expert)."""
    run_budget_usd: float = Field(default=2000.0, ge=0)
    """Dollar cap for the whole synthesis run."""
    leak_min_lines: int = Field(default=3, ge=1)
    """Reject a trajectory whose expert reply contains this many consecutive added lines of the gold diff."""


class SFTConfig(Strict):
    """Phase sft (METHOD §4)."""

    learning_rate: float = Field(default=1e-5, gt=0)
    """AdamW peak learning rate."""
    lr_scheduler: str = "cosine"
    """Learning-rate schedule."""
    warmup_ratio: float = Field(default=0.03, ge=0, lt=1)
    """Warmup share of all steps."""
    epochs: float = Field(default=2.0, gt=0)
    """Passes over the dataset."""
    max_steps: int = Field(default=-1, ge=-1)
    """If > 0, stop after this many optimizer steps (overrides epochs)."""
    max_length: int = Field(default=32768, ge=64)
    """Longest training sequence in tokens (paper: 32,768)."""
    rename_copies: int = Field(default=0, ge=0)
    """Renamed copies of each trajectory trained on beside it (protege.sft_augment: the repository's names
    replaced consistently, so a small student must copy them from its context rather than recall them)."""
    truncation: Literal["drop", "error"] = "drop"
    """A trajectory longer than max_length is dropped and reported (`drop`) or fails the phase (`error`)."""
    global_batch_size: int = Field(default=32, ge=1)
    """Sequences per optimizer step across all devices (paper: 32)."""
    per_device_batch_size: int = Field(default=1, ge=1)
    """Sequences per device per micro-step; gradient accumulation makes up the rest."""
    bf16: bool = True
    """bf16 mixed precision (GPU)."""
    gradient_checkpointing: bool = True
    """Activation checkpointing (GPU)."""
    lora: bool = False
    """Train a LoRA adapter instead of all weights (paper: full fine-tuning did better)."""
    lora_rank: int = Field(default=64, ge=1)
    """LoRA rank."""
    lora_alpha: int = Field(default=128, ge=1)
    """LoRA scaling numerator (the update is scaled by lora_alpha / lora_rank)."""
    lora_dropout: float = Field(default=0.05, ge=0, lt=1)
    """Dropout on the LoRA branch."""
    deepspeed: Literal["", "zero2", "zero3"] = "zero3"
    """DeepSpeed config shipped in the package; empty disables DeepSpeed."""
    save_steps: int = Field(default=50, ge=1)
    """Checkpoint every N optimizer steps."""
    save_total_limit: int = Field(default=2, ge=0)
    """Local checkpoints kept on disk (0 = all); every checkpoint stays in the artifact store."""
    logging_steps: int = Field(default=1, ge=1)
    """Log loss, learning rate, grad norm and tokens/s every N optimizer steps."""
    seed: int = Field(default=0, ge=0)
    """Training seed."""
    num_nodes: int = Field(default=1, ge=1)
    """Multi-node runs (`protege sft --emit-trainjob`): nodes of the Kubeflow Trainer TrainJob."""
    gpus_per_node: int = Field(default=8, ge=1)
    """Multi-node runs: GPUs per node of the TrainJob (one training process each)."""
    trainjob_runtime: str = "torch-distributed"
    """Multi-node runs: the Kubeflow Trainer ClusterTrainingRuntime the TrainJob references."""
    trainjob_image: str = ""
    """Multi-node runs: the trainer image; empty = `pipeline.trainer_image`, the image of the pipeline's GPU
    steps (pin a digest on clusters)."""
    trainjob_namespace: str = "protege"
    """Multi-node runs: namespace of the TrainJob."""


class RLConfig(Strict):
    """Phases rl1 and rl2: agentic GRPO (METHOD §5)."""

    group_size: int = Field(default=6, ge=2)
    """G: rollouts per task (paper: 6)."""
    epsilon_low: float = Field(default=0.20, gt=0, le=1)
    """Lower clip ε (paper: 0.20)."""
    epsilon_high: float = Field(default=0.28, gt=0, le=1)
    """Upper clip ε (paper: 0.28)."""
    beta: float = Field(default=0.001, ge=0)
    """KL coefficient to the SFT reference."""
    total_steps: int = Field(default=160, ge=2)
    """Steps over both stages (paper: 160)."""
    stage_one_steps: int = Field(default=80, ge=1)
    """Steps of stage I; stage II runs the rest (paper: 80/80)."""
    tasks_per_step: int = Field(default=8, ge=1)
    """Tasks per GRPO step."""
    learning_rate: float = Field(default=1e-6, gt=0)
    """Learning rate."""
    temperature: float = Field(default=1.0, gt=0)
    """Rollout sampling temperature."""
    rollout_timeout_s: float = Field(default=1800.0, gt=0)
    """A rollout running longer fails with zero advantage."""
    max_flat_visits: int = Field(default=2, ge=1)
    """Drop a task after this many visits where all G rewards were identical."""
    use_vllm: bool = True
    """Generate with vLLM (GPU); transformers generation on CPU."""
    vllm_mode: Literal["colocate", "server"] = "colocate"
    """vLLM colocated with training or a separate server."""
    vllm_server_base_url: str = ""
    """vllm_mode=server: URL of the `trl vllm-serve` server."""
    vllm_gpu_memory_utilization: float = Field(default=0.3, gt=0, le=1)
    """vllm_mode=colocate: share of GPU memory vLLM may take beside training."""
    loss_type: Literal["dapo", "grpo", "bnpo", "dr_grpo"] = "dapo"
    """trl's GRPO loss normalisation (dapo: token-level, the clip-higher ε_high setting it comes with)."""
    lr_scheduler: str = "constant"
    """Learning-rate schedule (constant keeps stage II's rate equal to stage I's across the switch)."""
    max_grad_norm: float = Field(default=1.0, gt=0)
    """Gradient clipping."""
    bf16: bool = True
    """bf16 mixed precision (GPU)."""
    gradient_checkpointing: bool = True
    """Activation checkpointing (GPU)."""
    deepspeed: Literal["", "zero2", "zero3"] = "zero3"
    """DeepSpeed config shipped in the package (multi-GPU); empty disables DeepSpeed."""
    rollout_workers: int = Field(default=8, ge=1)
    """Rollouts (episodes) in flight at once; generation is shared, sandboxes run in parallel."""
    generation_batch_window_s: float = Field(default=0.05, ge=0)
    """vLLM: turn requests arriving within this window of each other are generated as one batch."""
    sandbox_start_interval_s: float = Field(default=0.2, ge=0)
    """Sandbox starts are spaced at least this far apart (rate limit)."""
    sandbox_start_retries: int = Field(default=3, ge=0)
    """A failed sandbox start is retried this many times ..."""
    sandbox_start_backoff_s: float = Field(default=2.0, ge=0)
    """... after waiting this long, doubled at every retry."""
    save_steps: int = Field(default=20, ge=1)
    """Checkpoint every N steps (and always at the end of a stage)."""
    save_total_limit: int = Field(default=2, ge=0)
    """Local checkpoints kept on disk (0 = all); every checkpoint stays in the artifact store."""
    seed: int = Field(default=0, ge=0)
    """Seed."""
    stage1: RewardConfig = RewardConfig()
    """Stage I reward (loop)."""
    stage2: RewardConfig = Field(default_factory=_stage_two_reward)
    """Stage II reward (loop + follow-through)."""

    @model_validator(mode="before")
    @classmethod
    def _stage_two_overrides_merge_onto_stage_two_defaults(cls, data: Any) -> Any:
        # A YAML `rl.stage2: {judge: heuristic}` must keep the stage II values, not fall back to stage I's.
        if isinstance(data, dict) and isinstance(data.get("stage2"), dict):
            data = {**data, "stage2": {**STAGE_TWO_DEFAULTS, **data["stage2"]}}
        return data

    @model_validator(mode="after")
    def _stages_fit(self) -> RLConfig:
        if self.stage_one_steps >= self.total_steps:
            raise ValueError(
                f"stage_one_steps ({self.stage_one_steps}) must be below total_steps ({self.total_steps})"
            )
        if self.epsilon_high < self.epsilon_low:
            raise ValueError("epsilon_high must be >= epsilon_low")
        if self.use_vllm and self.vllm_mode == "server" and not self.vllm_server_base_url:
            raise ValueError("vllm_mode 'server' needs vllm_server_base_url (the `trl vllm-serve` URL)")
        return self


class EvalConfig(Strict):
    """Phase eval (METHOD §7)."""

    workers: int = Field(default=8, ge=1)
    """Episodes and gradings in parallel."""
    attempts: int = Field(default=1, ge=1)
    """Attempts per task (k for pass@k)."""
    instance_timeout_s: float = Field(default=3600.0, gt=0)
    """A hung instance is recorded with this reason and the batch goes on."""
    confidence: float = Field(default=0.95, gt=0, lt=1)
    """Confidence level of the Wilson interval on Pass@1."""
    model_name: str = ""
    """model_name_or_path written to predictions.jsonl (empty = the model URI)."""
    grade_timeout_s: float = Field(default=1800.0, gt=0)
    """Wall-clock limit of one eval-script run at grading (swebench harness default: 1800 s)."""
    grade_logs_dir: str = ".protege/grading"
    """Where grading writes each instance's patch.diff, eval.sh, test_output.txt and report.json."""
    grade_max_pods: int = Field(default=16, ge=1)
    """Kubernetes grading: pods alive at once (one per graded instance)."""
    grade_pod_start_timeout_s: float = Field(default=600.0, gt=0)
    """Kubernetes grading: a pod not Running after this long (image pull, scheduling) is a sandbox_error."""
    serve: Literal["in_process", "vllm"] = "in_process"
    """How the model under evaluation answers (protege.evaluate.serving): `in_process` runs the configured policy
    backend as is (local: transformers on CPU); `vllm` (cluster profile: the eval step runs on the GPU
    pool) starts `vllm serve` of the evaluated model on loopback for the run and points the openai backend
    at it, tool calls parsed from the text the way training parses them."""
    vllm_executable: str = "vllm"
    """eval.serve=vllm: the `vllm` command (a path or a name on PATH)."""
    serve_port: int = Field(default=0, ge=0, le=65535)
    """eval.serve=vllm: loopback port of the server (0 = a free port)."""
    serve_args: list[str] = []
    """eval.serve=vllm: extra `vllm serve` arguments, e.g. ["--tensor-parallel-size", "8"]."""
    serve_start_timeout_s: float = Field(default=1800.0, gt=0)
    """eval.serve=vllm: how long the server may take to answer /v1/models (weights load, CUDA graphs)."""
    serve_stop_timeout_s: float = Field(default=60.0, gt=0)
    """eval.serve=vllm: grace after SIGTERM before the server's process group is killed."""
    max_infra_failure_share: float = Field(default=0.1, ge=0, le=1)
    """Infrastructure failures are not scores: when more than this share of the episodes failed on
    `policy_error` (the policy server did not answer), `sandbox_error` or `expert_error` (an expert call
    failed), eval fails with the counts and the first reason instead of reporting a Pass@1 (its results
    and report are still written and uploaded; the MLflow run ends FAILED). 1.0 never fails."""


class RegisterConfig(Strict):
    """Phase register: the champion gate."""

    pass_at_1_floor: float | None = Field(default=None, ge=0, le=1)
    """The baseline a new version must reach to become `champion` (e.g. the base model's measured
    Pass@1). None (default): the baseline is the current champion's Pass@1 on the same eval set. Either
    way a version that resolved no eval instance (Pass@1 0) is never promoted."""
    require_not_below_champion: bool = True
    """With a configured floor, also require Pass@1 not below the current champion's on the same eval set."""
    beat_baseline: str = ""
    """Name of a comparison variant (issue 19, `protege compare`) whose latest Pass@1 on the same eval set
    the new version must exceed to become champion; '' = no such requirement. A named baseline that was
    never measured on that eval set refuses promotion."""


class CompareConfig(Strict):
    """`protege compare` (issue 19): variants of the acting agent on one task set, one table."""

    reference: str = ""
    """Variant the paired differences are taken against ('' = the first variant)."""
    expert_alone: str = "expert-alone"
    """Variant whose cost per task is the numerator of every row's cost ratio (the expert acting alone)."""
    exclusions: str = ""
    """Exclusion list (YAML or JSON: instance_id -> reason, or a list of {instance_id, reason}) of
    instances whose tests reject correct fixes; every figure is reported with and without them."""
    bootstrap_samples: int = Field(default=2000, ge=100)
    """Resamples of the paired bootstrap interval on the Pass@1 difference."""
    bootstrap_seed: int = Field(default=0, ge=0)
    """Seed of the bootstrap resampling."""
    price_oracle_tokens: bool = True
    """Price the offline oracle's metered tokens (expert calls at expert.prices, oracle policy turns at
    agent.policy.prices) so a local comparison has costs and a cost ratio; recorded API costs are used as
    they are."""
    forced_every_k: int = Field(default=5, ge=1)
    """The standard variant set's fixed-interval ablation: a forced expert call every k steps."""
    random_rate: float = Field(default=0.2, gt=0, le=1)
    """The standard variant set's random-ask ablation: the probability of a forced call before a step."""


class PipelineConfig(Strict):
    """The Kubeflow pipeline: images, per-step resources, secrets, retries and timeouts (issue 8).

    GPU pool choice (accelerator type/count, node selector, tolerations) is a pipeline parameter, not
    config, so one compiled pipeline serves every pool.
    """

    name: str = "protege"
    """Name of the compiled pipeline (and of its KFP experiment when none is given)."""
    agent_image: str = image_ref("agent")
    """Image of the CPU steps (anthropic, swebench, docker/kubernetes clients, protege); pin a digest on clusters."""
    trainer_image: str = image_ref("trainer")
    """Image of sft/rl1/rl2 (CUDA, torch, trl, deepspeed, vllm, protege); pin a digest on clusters."""
    cpu_step_cpu: str = "2"
    """CPU request of a CPU step (verify, synth, register)."""
    cpu_step_memory: str = "8Gi"
    """Memory request of a CPU step."""
    gpu_step_cpu: str = "16"
    """CPU request of a GPU step (sft, rl1, rl2, eval)."""
    gpu_step_memory: str = "200Gi"
    """Memory request of a GPU step."""
    anthropic_secret: str = "protege-anthropic"
    """Kubernetes Secret with key `api_key` (-> ANTHROPIC_API_KEY)."""
    s3_secret: str = "protege-s3"
    """Kubernetes Secret with keys `access_key`, `secret_key` (-> AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)."""
    mlflow_secret: str = "protege-mlflow"
    """Kubernetes Secret with keys `username`, `password` (-> MLFLOW_TRACKING_USERNAME/PASSWORD)."""
    retries: int = Field(default=2, ge=0)
    """Retries of the steps that talk to sandboxes and the expert (verify, synth, rl1, rl2, eval)."""
    retry_backoff: str = "120s"
    """First backoff between those retries (doubled per retry)."""
    timeouts_s: dict[str, Annotated[int, Field(gt=0)]] = {
        "verify": 4 * 3600,
        "synth": 48 * 3600,
        "sft": 24 * 3600,
        "rl1": 72 * 3600,
        "rl2": 72 * 3600,
        "eval": 24 * 3600,
        "baseline": 24 * 3600,
        "compare": 3600,
        "register": 3600,
        "close": 600,
    }
    """Wall-clock limit per step in seconds; every step must be named."""
    schedule_max_concurrency: int = Field(default=1, ge=1)
    """Recurring runs (`protege schedule`): runs of the schedule allowed at once."""
    namespace: str = "protege"
    """Namespace `protege submit`/`schedule` run in by default: where manifests/ put the steps' RBAC and
    Secrets (`--namespace` overrides it)."""
    service_account: str = "protege-pipeline"
    """Service account the steps' pods run as by default (manifests/base/rbac.yaml binds it to the sandbox
    namespace; `--service-account` overrides it)."""
    scope_to_kfp_run: bool = True
    """sft, rl1, rl2, eval and register work under `<run_name>-<KFP run id>`, so a scheduled run trains afresh
    instead of resuming an earlier run's checkpoints (a retried KFP run keeps its id, so it resumes). verify
    and synth keep `<run_name>`: they are cached by their inputs. Off in the local profile, where `protege run`
    names each run and `--run-name` resumes one."""


# `register` is the phase's name everywhere (STYLE lesson 13); shadowing ABC.register on the model class is
# harmless since nothing calls it there.
warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)


class ProtegeConfig(Strict):
    """The whole pipeline."""

    profile: str = "cluster"
    """Name of the profile this config came from."""
    run_name: str = "protege"
    """Prefix of run names and artifact prefixes."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where training and in-process generation run."""
    store: StoreConfig = Field(default_factory=StoreConfig)
    """Artifact store."""
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    """MLflow tracking."""
    services: ServicesConfig = ServicesConfig()
    """Local services."""
    tasks: TaskSetConfig = TaskSetConfig()
    """Task sets."""
    model: ModelConfig = ModelConfig()
    """The protégé model."""
    agent: AgentConfig = AgentConfig()
    """Agent scaffold."""
    expert: ExpertConfig = ExpertConfig()
    """Expert."""
    synth: SynthConfig = SynthConfig()
    """Phase synth."""
    sft: SFTConfig = SFTConfig()
    """Phase sft."""
    rl: RLConfig = RLConfig()
    """Phases rl1/rl2."""
    eval: EvalConfig = EvalConfig()
    """Phase eval."""
    register: RegisterConfig = RegisterConfig()
    """Phase register."""
    compare: CompareConfig = CompareConfig()
    """Variant comparison (`protege compare`, the pipeline's baselines branch)."""
    pipeline: PipelineConfig = PipelineConfig()
    """The Kubeflow pipeline (images, resources, secrets, retries, timeouts)."""

    def digest(self) -> str:
        """sha256 of the config without secrets; stable across processes."""
        return hashlib.sha256(json.dumps(public_dict(self), sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def profile_path(profile: str) -> Path:
    known = sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))
    if profile not in known:  # a name, never a path (`../x` would reach outside the profiles)
        raise ConfigError(f"unknown profile '{profile}' (known: {', '.join(known)})")
    return PROFILES_DIR / f"{profile}.yaml"


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {yaml_error_text(err)}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start})"
        ) from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def yaml_error_text(err: yaml.YAMLError) -> str:
    """A YAML error on one line: `line L, column C: problem`."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else problem


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_override(text: str) -> dict[str, Any]:
    """`rl.group_size=4` -> {"rl": {"group_size": 4}}; the value is read as a YAML scalar/list."""
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected dotted.key=value")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override '{text}': empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override '{text}': bad value: {yaml_error_text(err)}") from None
    for part in reversed(parts):
        value = {part: value}
    return value


# YAML 1.1 reads these words as booleans, so `cache_mode: off` arrives as False.
_YAML_BOOLEAN_WORDS = {False: ("off", "no", "false", "n"), True: ("on", "yes", "true", "y")}


def _yaml_boolean_hint(item: dict[str, Any]) -> str:
    value = item.get("input")
    if not isinstance(value, bool) or item["type"] not in ("literal_error", "string_type", "enum"):
        return ""
    expected = str(item.get("ctx", {}).get("expected", ""))
    word = next((w for w in _YAML_BOOLEAN_WORDS[value] if f"'{w}'" in expected), "")
    quote = f'quote it ("{word}")' if word else "quote the word"
    return f"; YAML reads off/no/yes/on as booleans: {quote}"


def _shown_value(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def format_validation_error(err: ValidationError, origin: Any = None, what: str = "config") -> str:
    """One line per error: `config: field a.b: message (got VALUE)`, then ` in SOURCE` when `origin(loc)`
    names where the value came from, and a hint when YAML turned a word into a boolean."""
    lines = []
    for item in err.errors():
        loc = tuple(str(p) for p in item["loc"])
        field = ".".join(loc) or "(top level)"
        reason = "unknown field" if item["type"] == "extra_forbidden" else item["msg"]
        line = f"{what}: field {field}: {reason.removeprefix('Value error, ')}"
        if "input" in item and not isinstance(item["input"], dict) and item["type"] != "missing":
            line += f" (got {_shown_value(item['input'])}{_yaml_boolean_hint(item)})"
        where = origin(loc) if origin else ""
        lines.append(line + (f" in {where}" if where else ""))
    return "\n".join(lines)


def _has_path(data: Any, loc: tuple[str, ...]) -> bool:
    for key in loc:
        if isinstance(data, list) and key.isdigit() and int(key) < len(data):
            data = data[int(key)]
        elif isinstance(data, dict) and key in data:
            data = data[key]
        else:
            return False
    return True


def load_config(
    profile: str = "local", config_file: str | Path | None = None, overrides: list[str] | None = None
) -> ProtegeConfig:
    """Profile YAML, then an optional user YAML on top, then dotted overrides. A bad value raises
    ConfigError naming the field, the value and the layer it came from (override, file or profile)."""
    layers = [(str(profile_path(profile)), _read_yaml(profile_path(profile)))]
    if config_file:
        layers.append((str(config_file), _read_yaml(Path(config_file))))
    layers += [(f"override '{text}'", parse_override(text)) for text in overrides or []]
    data: dict[str, Any] = {}
    for _, layer in layers:
        data = _deep_merge(data, layer)
    data.setdefault("profile", profile)

    def origin(loc: tuple[str, ...]) -> str:
        # The last layer that sets the field (or, for a whole-section check, anything inside it).
        for name, layer in reversed(layers):
            if _has_path(layer, loc):
                return name
        return " + ".join(name for name, _ in layers)

    try:
        return ProtegeConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, origin)) from None


def public_dict(cfg: BaseModel) -> dict[str, Any]:
    """The config as plain data with secrets masked (safe to print, log and hash)."""
    return json.loads(cfg.model_dump_json())


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"rl": {"beta": 0.001}} -> {"rl.beta": 0.001} (for MLflow params)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat
