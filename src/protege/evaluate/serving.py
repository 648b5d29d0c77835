"""Serving the model under evaluation: a vLLM OpenAI-compatible server the eval step starts and stops.

On a cluster the eval step runs on the GPU pool (protege.pipeline.placement) with `eval.serve: vllm` (cluster
profile): `served_policy` resolves the model it evaluates (the rl2 checkpoint's `s3://` URI) to a local
directory, starts `vllm serve DIR --host 127.0.0.1 --port P --served-model-name protege-eval`, waits
until `/v1/models` answers, points the openai policy backend at it, and stops the server (SIGTERM to its
process group, SIGKILL after `eval.serve_stop_timeout_s`) when the block ends, however it ends.

Tool calls are parsed the way training parses them: no server-side tool parser is enabled, so the
server returns the model's text and `OpenAIChatPolicy` reads its Qwen2.5 `<tool_call>` blocks with
`protege.agent.policies.parse_completion`, the function RL rollouts use (protege.rl.rollout).

Locally (`eval.serve: in_process`, local profile) nothing is started: the configured policy backend runs
as it is (the transformers backend loads the model in-process on CPU).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from protege.config import ProtegeConfig

SERVED_NAME = "protege-eval"
"""Model name the server serves and the policy requests (the model's URI may not be a valid name)."""
LOG_TAIL_LINES = 20  # lines of the server's log quoted when it fails to start
POLL_S = 0.5


class ServeError(RuntimeError):
    """The server could not be started or did not become ready; the message says why (and its log tail)."""


def free_port() -> int:
    """A loopback port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def vllm_command(
    executable: str, model_dir: Path, port: int, max_model_len: int, extra: list[str]
) -> list[str]:
    """`vllm serve` of `model_dir` on loopback `port`, under SERVED_NAME, with no server tool parser."""
    return [
        executable,
        "serve",
        str(model_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--served-model-name",
        SERVED_NAME,
        "--max-model-len",
        str(max_model_len),
        *extra,
    ]


def _log_tail(log_path: Path) -> str:
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(f"  {line}" for line in lines[-LOG_TAIL_LINES:])


def _ready(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/models", timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def wait_ready(process: subprocess.Popen, base_url: str, timeout_s: float, log_path: Path) -> None:
    """Return once `base_url/models` answers 200; ServeError when the process exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        code = process.poll()
        if code is not None:
            raise ServeError(
                f"vllm serve exited with code {code} before serving (log {log_path}):\n{_log_tail(log_path)}"
            )
        if _ready(base_url):
            return
        if time.monotonic() > deadline:
            raise ServeError(
                f"vllm serve not ready at {base_url} after {timeout_s:g} s "
                f"(eval.serve_start_timeout_s; log {log_path}):\n{_log_tail(log_path)}"
            )
        time.sleep(POLL_S)


def stop(process: subprocess.Popen, timeout_s: float) -> None:
    """SIGTERM the server's process group (vLLM starts worker processes), SIGKILL it after `timeout_s`."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextlib.contextmanager
def vllm_server(cfg: ProtegeConfig, model_dir: Path, log_path: Path) -> Iterator[str]:
    """A running `vllm serve` of `model_dir`; yields its base URL (`http://127.0.0.1:P/v1`), stops it after."""
    serve = cfg.eval
    port = serve.serve_port or free_port()
    argv = vllm_command(
        serve.vllm_executable, model_dir, port, cfg.agent.policy.context_window, list(serve.serve_args)
    )
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        try:
            process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        except OSError as err:
            raise ServeError(
                f"eval.serve=vllm: cannot run '{serve.vllm_executable}' ({err.strerror}); "
                "is vLLM installed (the trainer image has it)?"
            ) from None
        try:
            base_url = f"http://127.0.0.1:{port}/v1"
            wait_ready(process, base_url, serve.serve_start_timeout_s, log_path)
            yield base_url
        finally:
            stop(process, serve.serve_stop_timeout_s)


@contextlib.contextmanager
def served_policy(cfg: ProtegeConfig, model: str, store: Any, work_dir: Path) -> Iterator[ProtegeConfig]:
    """The config to evaluate `model` with: unchanged for `eval.serve: in_process`; for `vllm`, the
    openai policy backend pointed at a vLLM server of `model` (resolved like every model: local dir,
    `s3://` through `store`, hub id) that runs for the duration of the block."""
    if cfg.eval.serve != "vllm":
        yield cfg
        return
    from protege.model import resolve_model

    model_dir = resolve_model(model, Path(cfg.model.cache_dir), store, tiny=cfg.model.tiny)
    with vllm_server(cfg, model_dir, work_dir / "vllm-serve.log") as base_url:
        policy = cfg.agent.policy.model_copy(
            update={"backend": "openai", "base_url": base_url, "model": SERVED_NAME}
        )
        yield cfg.model_copy(update={"agent": cfg.agent.model_copy(update={"policy": policy})})
